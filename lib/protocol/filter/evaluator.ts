/**
 * The evaluator of the filter language: a parsed tree compiled once to a
 * tree of closures, then run synchronously for every event a session may
 * receive, on the fast path of the fan-out. It also enforces `maxMatchCost`,
 * the only limit that bounds evaluation rather than the source.
 */

import { DEFAULT_FILTER_LIMITS, type FilterLimits } from './limits.js';
import { parseWithCache } from './parser.js';
import type { FilterComparison, FilterNode, FilterPath, FilterScalar } from './tree.js';
import { compilePattern, type CompiledPattern } from '../pattern.js';

/** A filter ready to run: the source it came from, and a synchronous test. */
export interface CompiledFilter {
  /** The source text, as given. */
  readonly source: string;
  /**
   * True when the entity passes the filter. Never throws: anything that
   * goes wrong while reading the entity (a throwing getter, a revoked proxy)
   * counts as no match. An entity that is not an object has every attribute
   * absent.
   */
  match(entity: unknown): boolean;
}

type Predicate = (entity: unknown) => boolean;

/**
 * Reads an attribute: own properties only (so `constructor` or `toString`
 * are absent on `{}`, and a JSON `__proto__` key reads as data), through
 * plain objects only (arrays, and anything else, end the path as absent).
 */
function read(entity: unknown, path: FilterPath): unknown {
  let current = entity;
  for (const segment of path) {
    if (typeof current !== 'object' || current === null || Array.isArray(current)) {
      return undefined;
    }
    if (!Object.hasOwn(current, segment)) return undefined;
    current = (current as Record<string, unknown>)[segment];
  }
  return current;
}

function isAbsent(value: unknown): value is null | undefined {
  return value === null || value === undefined;
}

/**
 * Equality without coercion. A bigint (MessagePack int64) is a number too:
 * JavaScript compares bigint with number exactly, so 3n equals 3.
 */
function equals(actual: unknown, expected: FilterScalar): boolean {
  if (typeof actual === 'bigint') return sameNumber(actual, expected);
  return actual === expected;
}

function sameNumber(actual: bigint, expected: FilterScalar): boolean {
  return Number.isInteger(expected) && actual === BigInt(expected);
}

function ordered(actual: unknown, expected: FilterScalar): boolean {
  if (typeof expected === 'number') return typeof actual === 'number' || typeof actual === 'bigint';
  if (typeof expected === 'string') return typeof actual === 'string';
  return false;
}

/** A membership test over a fixed list, with sets for the common cases. */
function memberOf(values: readonly FilterScalar[]): (actual: unknown) => boolean {
  const strings = new Set<string>();
  const numbers = new Set<number>();
  let hasTrue = false;
  let hasFalse = false;
  for (const value of values) {
    if (typeof value === 'string') strings.add(value);
    else if (typeof value === 'number') numbers.add(value);
    else if (value) hasTrue = true;
    else hasFalse = true;
  }
  return (actual) => {
    switch (typeof actual) {
      case 'string':
        return strings.has(actual);
      case 'number':
        return numbers.has(actual);
      case 'boolean':
        return actual ? hasTrue : hasFalse;
      case 'bigint':
        for (const n of numbers) if (sameNumber(actual, n)) return true;
        return false;
      default:
        return false;
    }
  };
}

function compileComparison(
  node: FilterComparison,
  compiled: Map<string, CompiledPattern>,
  maxMatchChars: number,
): Predicate {
  const path = node.path;
  switch (node.operator) {
    case 'exists':
      return (e) => !isAbsent(read(e, path));
    case 'not exists':
      return (e) => isAbsent(read(e, path));
    case '==': {
      const v = node.value;
      return (e) => equals(read(e, path), v);
    }
    case '!=': {
      const v = node.value;
      return (e) => !equals(read(e, path), v);
    }
    case '<':
    case '<=':
    case '>':
    case '>=': {
      const v = node.value;
      const test = ORDER[node.operator];
      return (e) => {
        const a = read(e, path);
        return ordered(a, v) && test(a as number | bigint | string, v as number | string);
      };
    }
    case 'in':
    case 'not in': {
      const member = memberOf(node.value);
      const negate = node.operator === 'not in';
      return (e) => member(read(e, path)) !== negate;
    }
    case 'contains':
    case 'not contains': {
      const member = memberOf(node.value);
      const strings = node.value.filter((v): v is string => typeof v === 'string');
      const negate = node.operator === 'not contains';
      return (e) => {
        const a = read(e, path);
        let found = false;
        if (Array.isArray(a)) found = a.some(member);
        else if (typeof a === 'string') {
          // Past the filter's budget the comparison is undecided, so false either way.
          if (a.length > maxMatchChars && strings.length > 0) return false;
          found = strings.some((s) => a.includes(s));
        }
        return found !== negate;
      };
    }
    case 'matches': {
      const patterns = node.value.map((pattern) => {
        let entry = compiled.get(pattern);
        if (entry === undefined) {
          // Only for a tree built by hand: parseFilter has checked every pattern it returns.
          entry = compilePattern(pattern);
          compiled.set(pattern, entry);
        }
        return entry;
      });
      // A string too long for the filter's budget is not searched (see maxMatchCost).
      return (e) => {
        const a = read(e, path);
        return (
          typeof a === 'string' && a.length <= maxMatchChars && patterns.some((r) => r.test(a))
        );
      };
    }
  }
}

const ORDER: Record<
  '<' | '<=' | '>' | '>=',
  (a: number | bigint | string, b: number | string) => boolean
> = {
  '<': (a, b) => a < b,
  '<=': (a, b) => a <= b,
  '>': (a, b) => a > b,
  '>=': (a, b) => a >= b,
};

function compileNode(
  node: FilterNode,
  patterns: Map<string, CompiledPattern>,
  maxMatchChars: number,
): Predicate {
  if (node.type === 'comparison') return compileComparison(node, patterns, maxMatchChars);
  const operands = node.operands.map((operand) => compileNode(operand, patterns, maxMatchChars));
  if (node.type === 'and') {
    return (e) => {
      for (const operand of operands) if (!operand(e)) return false;
      return true;
    };
  }
  return (e) => {
    for (const operand of operands) if (operand(e)) return true;
    return false;
  };
}

/**
 * The cost of the filter's string searches per character (see maxMatchCost): the RE2
 * instructions of every `matches` occurrence, one per plain-text pattern, one per string value
 * of a `contains`.
 */
function searchCostOf(node: FilterNode, patterns: Map<string, CompiledPattern>): number {
  if (node.type !== 'comparison') {
    let sum = 0;
    for (const operand of node.operands) sum += searchCostOf(operand, patterns);
    return sum;
  }
  let sum = 0;
  if (node.operator === 'matches') {
    for (const pattern of node.value) sum += Math.max(1, patterns.get(pattern)?.size ?? 1);
  } else if (node.operator === 'contains' || node.operator === 'not contains') {
    for (const value of node.value) if (typeof value === 'string') sum += 1;
  }
  return sum;
}

/**
 * Parses and compiles a filter once, for many calls to `match`. Every
 * `matches` pattern is compiled here, once (a pattern used twice is
 * compiled once). Throws a {@link FilterSyntaxError} as
 * {@link parseFilter} does; `limits` defaults to
 * {@link DEFAULT_FILTER_LIMITS}.
 */
export function compileFilter(source: string, limits?: Partial<FilterLimits>): CompiledFilter {
  const patterns = new Map<string, CompiledPattern>();
  const tree = parseWithCache(source, limits, patterns);
  const cost = searchCostOf(tree, patterns);
  const budget = limits?.maxMatchCost ?? DEFAULT_FILTER_LIMITS.maxMatchCost;
  const maxMatchChars = cost === 0 ? Infinity : Math.floor(budget / cost);
  const predicate = compileNode(tree, patterns, maxMatchChars);
  return Object.freeze({
    source,
    match(entity: unknown): boolean {
      try {
        return predicate(entity);
      } catch {
        return false;
      }
    },
  });
}
