/**
 * The printer of the filter language: a tree back to canonical text, so that
 * a filter can be logged, compared or sent on in one spelling whatever its
 * author wrote. Apart from the parser because it needs none of it: only what
 * a bare name is (the lexer's) and the tree.
 */

import { NAME } from './lexer.js';
import type { FilterNode, FilterPath, FilterScalar } from './tree.js';

// Words the printer quotes when they are a whole key, for readability; the
// parser itself reads any word in key position as a key.
const KEYWORDS: ReadonlySet<string> = new Set([
  'and',
  'or',
  'not',
  'in',
  'contains',
  'matches',
  'exists',
  'true',
  'false',
]);

function quote(text: string): string {
  return `"${text.replace(/[\\"]/g, (ch) => `\\${ch}`)}"`;
}

function printKey(path: FilterPath): string {
  if (path.length === 0) throw new RangeError('a filter path needs at least one segment');
  if (path.length === 1) {
    const name = path[0] as string;
    return NAME.test(name) && !KEYWORDS.has(name.toLowerCase()) ? name : quote(name);
  }
  if (!path.every((segment) => NAME.test(segment))) {
    // No source text reads as a multi-segment path whose segments are not names.
    throw new RangeError(`the path ${JSON.stringify(path)} cannot be written as a filter key`);
  }
  return path.join('.');
}

function printScalar(value: FilterScalar): string {
  if (typeof value === 'string') return quote(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new RangeError(`a filter number must be finite`);
    return String(value === 0 ? 0 : value);
  }
  return value ? 'true' : 'false';
}

/**
 * Prints a tree as canonical filter text: strings in double quotes, keywords
 * in lower case, one space around operators and connectives, every nested
 * group in parentheses, list operators always with `[...]`.
 * `parseFilter(printFilter(node))` deep-equals `node` for every tree that
 * {@link parseFilter} can return. Throws a RangeError for a tree no text
 * can produce (a group of fewer than two operands, an empty path, a
 * multi-segment path whose segments are not plain names, a number that is
 * not finite).
 */
export function printFilter(node: FilterNode): string {
  if (node.type !== 'comparison') {
    if (node.operands.length < 2) throw new RangeError('a filter group needs two operands');
    return node.operands
      .map((operand) =>
        operand.type === 'comparison' ? printFilter(operand) : `(${printFilter(operand)})`,
      )
      .join(` ${node.type} `);
  }
  const key = printKey(node.path);
  switch (node.operator) {
    case 'exists':
    case 'not exists':
      return `${key} ${node.operator}`;
    case 'in':
    case 'not in':
    case 'contains':
    case 'not contains':
    case 'matches':
      return `${key} ${node.operator} [${node.value.map(printScalar).join(', ')}]`;
    default:
      return `${key} ${node.operator} ${printScalar(node.value)}`;
  }
}
