/**
 * The parser of the filter language (PROTOCOL.md section 7): tokens to a
 * {@link FilterNode} tree, left to right with no precedence, enforcing every
 * {@link FilterLimits} bound but `maxMatchCost` (a bound on evaluation, so
 * the evaluator's). It also compiles each `matches` pattern, because a
 * pattern RE2 refuses is a syntax error at that pattern's column.
 */

import { FilterSyntaxError } from './errors.js';
import { Lexer, type Token } from './lexer.js';
import { resolveLimits, type FilterLimits } from './limits.js';
import type {
  FilterComparison,
  FilterGroup,
  FilterListOperator,
  FilterNode,
  FilterOperator,
  FilterPath,
  FilterScalar,
  FilterScalarOperator,
} from './tree.js';
import { PatternError, compilePattern, type CompiledPattern } from '../pattern.js';

const EXPECT_KEY = "an attribute name or '('";
const EXPECT_OPERATOR = 'an operator';
const EXPECT_VALUE = 'a value';
const EXPECT_VALUES = 'a value or a list';
const EXPECT_AFTER_NOT = "'in', 'contains' or 'exists'";
const EXPECT_LIST_NEXT = "',' or ']'";
const EXPECT_CONNECTIVE_TOP = "'and', 'or' or the end";
const EXPECT_CONNECTIVE_GROUP = "'and', 'or' or ')'";

const SCALAR_OPERATORS: ReadonlySet<string> = new Set(['==', '!=', '<', '<=', '>', '>=']);

/** How a token is shown in a message: as written, shortened. */
function shortRaw(token: Token, max = 40): string {
  return token.raw.length > max ? `${token.raw.slice(0, max - 1)}…` : token.raw;
}

/** How a token is shown in a message: short, and quoted. */
function describeToken(token: Token): string {
  return `'${shortRaw(token, 24)}'`;
}

/** A recursive-descent parser for one source text; `parse` is called once. */
class Parser {
  private readonly lexer: Lexer;
  private depth = 0;
  private comparisons = 0;
  /** RE2 instructions of the patterns so far, for `maxPatternProgram`. */
  private program = 0;
  /** The last token consumed, for "after '...'" in messages. */
  private previous: Token | undefined;

  constructor(
    source: string,
    private readonly limits: FilterLimits,
    private readonly patterns: Map<string, CompiledPattern>,
  ) {
    this.lexer = new Lexer(source);
  }

  parse(): FilterNode {
    const node = this.parseExpression();
    const token = this.lexer.peek();
    if (token.kind !== 'end') this.fail(token, EXPECT_CONNECTIVE_TOP);
    return node;
  }

  private take(): Token {
    const token = this.lexer.next();
    this.previous = token;
    return token;
  }

  private fail(at: Token, expected: string, detail = ''): never {
    const column = at.start + 1;
    const after = this.previous === undefined ? '' : ` after ${describeToken(this.previous)}`;
    throw new FilterSyntaxError(
      `expected ${expected}${after} at column ${column}${detail}`,
      column,
      expected,
    );
  }

  private refuse(at: Token, message: string, expected: string): never {
    const column = at.start + 1;
    throw new FilterSyntaxError(`${message} at column ${column}`, column, expected);
  }

  // expression := term (connective term)*, left to right, no precedence
  private parseExpression(): FilterNode {
    let operands: FilterNode[] = [this.parseTerm()];
    let connective: 'and' | 'or' | undefined;
    for (;;) {
      const token = this.lexer.peek();
      if (token.kind !== 'word') break;
      const word = token.text.toLowerCase();
      if (word !== 'and' && word !== 'or') break;
      this.take();
      const next = this.parseTerm();
      if (connective === undefined || connective === word) {
        operands.push(next);
      } else {
        // The connective changed: everything so far becomes the left operand.
        operands = [group(connective, operands), next];
      }
      connective = word;
    }
    return connective === undefined ? (operands[0] as FilterNode) : group(connective, operands);
  }

  // term := '(' expression ')' | comparison
  private parseTerm(): FilterNode {
    const token = this.lexer.peek();
    if (token.kind === 'symbol' && token.text === '(') {
      if (this.depth >= this.limits.maxDepth) {
        this.refuse(
          token,
          `the filter nests parentheses deeper than ${this.limits.maxDepth} levels`,
          `at most ${this.limits.maxDepth} levels of parentheses`,
        );
      }
      this.take();
      this.depth += 1;
      const node = this.parseExpression();
      const close = this.lexer.peek();
      if (close.kind !== 'symbol' || close.text !== ')') this.fail(close, EXPECT_CONNECTIVE_GROUP);
      this.take();
      this.depth -= 1;
      return node;
    }
    return this.parseComparison();
  }

  private parseComparison(): FilterComparison {
    const keyToken = this.lexer.peek();
    const path = this.parseKey();
    if (this.comparisons >= this.limits.maxComparisons) {
      this.refuse(
        keyToken,
        `the filter has more than ${this.limits.maxComparisons} comparisons`,
        `at most ${this.limits.maxComparisons} comparisons`,
      );
    }
    this.comparisons += 1;
    const operator = this.parseOperator();

    if (operator === 'exists' || operator === 'not exists') {
      return { type: 'comparison', path, operator };
    }
    if (SCALAR_OPERATORS.has(operator)) {
      const valueToken = this.lexer.peek();
      if (valueToken.kind === 'symbol' && valueToken.text === '[') {
        this.fail(
          valueToken,
          'a single value',
          `, not a list (lists go with in, contains, matches)`,
        );
      }
      const value = this.parseScalar(EXPECT_VALUE);
      return { type: 'comparison', path, operator: operator as FilterScalarOperator, value };
    }
    const values = this.parseValues();
    if (operator === 'matches') {
      return { type: 'comparison', path, operator, value: this.checkPatterns(values) };
    }
    return {
      type: 'comparison',
      path,
      operator: operator as Exclude<FilterListOperator, 'matches'>,
      value: values.map((v) => v.value),
    };
  }

  private parseKey(): FilterPath {
    const token = this.lexer.peek();
    if (token.kind === 'string') {
      this.take();
      return [token.text];
    }
    // A number-looking key (`404`, `1.5`) is a name too, since keys allow
    // digits; only `+` (as in `1e+3`) is a number character that no name has.
    if (token.kind === 'word' || (token.kind === 'number' && !token.raw.includes('+'))) {
      const segments = token.raw.split('.');
      if (segments.some((s) => s === '')) {
        const offset = emptySegmentOffset(token.raw);
        const column = token.start + offset + 1;
        throw new FilterSyntaxError(
          `expected an attribute name around '.' at column ${column} (a dotted path has no empty segment)`,
          column,
          'an attribute name',
        );
      }
      this.take();
      return segments;
    }
    if (this.previous === undefined && token.kind === 'end') {
      throw new FilterSyntaxError(
        'the filter is empty: expected a comparison at column 1',
        1,
        'a comparison',
      );
    }
    return this.fail(token, EXPECT_KEY);
  }

  private parseOperator(): FilterOperator {
    const token = this.lexer.peek();
    if (token.kind === 'symbol' && SCALAR_OPERATORS.has(token.text)) {
      this.take();
      return token.text as FilterScalarOperator;
    }
    if (token.kind === 'word') {
      const word = token.text.toLowerCase();
      if (word === 'in' || word === 'contains' || word === 'matches' || word === 'exists') {
        this.take();
        return word;
      }
      if (word === 'not') {
        this.take();
        const second = this.lexer.peek();
        const next = second.kind === 'word' ? second.text.toLowerCase() : '';
        if (next === 'in' || next === 'contains' || next === 'exists') {
          this.take();
          return `not ${next}`;
        }
        return this.fail(second, EXPECT_AFTER_NOT);
      }
    }
    return this.fail(token, EXPECT_OPERATOR);
  }

  /** A list, or a single value read as a one-element list. */
  private parseValues(): { value: FilterScalar; token: Token }[] {
    const open = this.lexer.peek();
    if (!(open.kind === 'symbol' && open.text === '[')) {
      const token = open;
      return [{ value: this.parseScalar(EXPECT_VALUES), token }];
    }
    this.take();
    const values: { value: FilterScalar; token: Token }[] = [];
    const first = this.lexer.peek();
    if (first.kind === 'symbol' && first.text === ']') {
      this.take();
      return values;
    }
    for (;;) {
      const token = this.lexer.peek();
      if (values.length >= this.limits.maxListLength) {
        this.refuse(
          token,
          `the list has more than ${this.limits.maxListLength} values`,
          `at most ${this.limits.maxListLength} values in a list`,
        );
      }
      values.push({ value: this.parseScalar(EXPECT_VALUE), token });
      const separator = this.lexer.peek();
      if (separator.kind === 'symbol' && separator.text === ',') {
        this.take();
        continue;
      }
      if (separator.kind === 'symbol' && separator.text === ']') {
        this.take();
        return values;
      }
      this.fail(separator, EXPECT_LIST_NEXT);
    }
  }

  private parseScalar(expected: string): FilterScalar {
    const token = this.lexer.peek();
    switch (token.kind) {
      case 'string':
        this.take();
        return token.text;
      case 'number': {
        const value = Number(token.raw);
        if (!Number.isFinite(value)) {
          this.refuse(
            token,
            `the number ${describeToken(token)} is out of range`,
            'a finite number',
          );
        }
        this.take();
        // -0 prints as 0; normalizing keeps print/parse an exact round trip.
        return value === 0 ? 0 : value;
      }
      case 'word': {
        const lower = token.text.toLowerCase();
        if ((lower === 'date' || lower === 'now') && this.lexer.nextCharIs('(')) {
          this.refuse(
            token,
            `${lower}() values are not supported (compare RFC 3339 strings instead)`,
            expected,
          );
        }
        // A connective is never a value: `a == and` is a missing value, not the string "and".
        if (lower === 'and' || lower === 'or') return this.fail(token, expected);
        this.take();
        if (lower === 'true') return true;
        if (lower === 'false') return false;
        return token.text;
      }
      default:
        return this.fail(token, expected);
    }
  }

  private checkPatterns(values: { value: FilterScalar; token: Token }[]): string[] {
    const patterns: string[] = [];
    for (const { value, token } of values) {
      if (typeof value !== 'string') {
        this.refuse(
          token,
          `expected a string pattern, not ${describeToken(token)},`,
          'a string pattern',
        );
      }
      if (value.length > this.limits.maxPatternLength) {
        this.refuse(
          token,
          `the pattern is longer than ${this.limits.maxPatternLength} characters`,
          `a pattern of at most ${this.limits.maxPatternLength} characters`,
        );
      }
      let compiled = this.patterns.get(value);
      if (compiled === undefined) {
        try {
          compiled = compilePattern(value);
        } catch (error) {
          if (!(error instanceof PatternError)) throw error;
          this.refuse(
            token,
            `the pattern ${shortRaw(token)} does not compile (${error.reason})`,
            'a valid regular expression',
          );
        }
        this.patterns.set(value, compiled);
      }
      // Every occurrence counts: each one runs on its own attribute.
      this.program += compiled.size;
      if (this.program > this.limits.maxPatternProgram) {
        this.refuse(
          token,
          `the patterns of the filter compile to more than ${this.limits.maxPatternProgram} instructions`,
          `patterns of at most ${this.limits.maxPatternProgram} instructions in all`,
        );
      }
      patterns.push(value);
    }
    return patterns;
  }
}

function group(type: 'and' | 'or', operands: FilterNode[]): FilterGroup {
  return { type, operands: operands as unknown as FilterGroup['operands'] };
}

function emptySegmentOffset(raw: string): number {
  if (raw.startsWith('.')) return 0;
  const double = raw.indexOf('..');
  if (double >= 0) return double + 1;
  return raw.length - 1;
}

/**
 * Parses `source` with the limits resolved, compiling each distinct `matches`
 * pattern into `patterns` (shared with the evaluator, so that compileFilter
 * compiles a pattern once, not once to check it and again to run it).
 * Throws as {@link parseFilter} does.
 */
export function parseWithCache(
  source: string,
  limits: Partial<FilterLimits> | undefined,
  patterns: Map<string, CompiledPattern>,
): FilterNode {
  const resolved = resolveLimits(limits);
  if (typeof source !== 'string') {
    throw new FilterSyntaxError('expected a filter string at column 1', 1, 'a filter string');
  }
  if (source.length > resolved.maxLength) {
    const column = resolved.maxLength + 1;
    throw new FilterSyntaxError(
      `the filter is longer than ${resolved.maxLength} characters at column ${column}`,
      column,
      `at most ${resolved.maxLength} characters`,
    );
  }
  return new Parser(source, resolved, patterns).parse();
}

/**
 * Parses a filter expression into its tree. Throws a
 * {@link FilterSyntaxError} (with the column and what was expected there)
 * when the text does not parse or is refused by `limits` (defaults:
 * {@link DEFAULT_FILTER_LIMITS}); throws a RangeError when a given limit is
 * not a positive integer. Patterns are compiled and checked here too, so a
 * filter that parses will compile.
 */
export function parseFilter(source: string, limits?: Partial<FilterLimits>): FilterNode {
  return parseWithCache(source, limits, new Map());
}
