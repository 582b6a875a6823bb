/**
 * The filter language of PROTOCOL.md section 7: a parser, a printer and a
 * compiler to a synchronous matcher. Pure: no I/O, and no import from the
 * rest of the project, so the protocol layer stays below the core.
 *
 * Three stages, each usable alone:
 * - {@link parseFilter} turns source text into a {@link FilterNode} tree, or
 *   throws a {@link FilterSyntaxError} that names the column and what was
 *   expected there;
 * - {@link printFilter} turns a tree back into canonical text;
 * - {@link compileFilter} parses once, compiles every `matches` pattern
 *   once, and returns a {@link CompiledFilter} whose `match` never throws.
 *
 * The patterns themselves are `pattern.ts`'s job: RE2 syntax, matched in
 * time linear in the string.
 */

import { PatternError, compilePattern } from './pattern.js';
import type { CompiledPattern } from './pattern.js';

// ---------------------------------------------------------------------------
// Errors and limits

/**
 * A filter that does not parse, or that is refused (too long, too deep, too
 * many comparisons, a list too long, a number out of range, a pattern RE2
 * refuses or patterns too large in all, a `date()`/`now()` value). It makes the whole
 * push config invalid (PROTOCOL.md section 4); the core turns it into a
 * `400 Bad Request` error event or a close with 1003.
 */
export class FilterSyntaxError extends Error {
  /** A stable, machine-readable name of the failure, as the PushError family has. */
  readonly code = 'PUSH_FILTER_SYNTAX';
  /** 1-based column in the source (UTF-16 code units from the start, newlines included). */
  readonly column: number;
  /** What the parser expected at `column`, in words (`a value`, `',' or ']'`). */
  readonly expected: string;

  /** Builds the error; `message` is complete and already names the column. */
  constructor(message: string, column: number, expected: string) {
    super(message);
    this.name = 'FilterSyntaxError';
    this.column = column;
    this.expected = expected;
  }
}

/**
 * Bounds on what a client may send, so that parsing, compiling and matching
 * one filter stay cheap whatever the input. Every field is a positive
 * integer (or `Infinity` to lift the bound).
 */
export interface FilterLimits {
  /** Longest source text, in UTF-16 code units. Default 4096. */
  maxLength: number;
  /** Deepest nesting of parentheses. Default 32 (it also bounds recursion). */
  maxDepth: number;
  /** Most comparisons in one filter. Default 256. */
  maxComparisons: number;
  /** Most values in one `[...]` list. Default 256. */
  maxListLength: number;
  /** Longest `matches` pattern, in UTF-16 code units. Default 256. */
  maxPatternLength: number;
  /**
   * Largest total size of the filter's compiled `matches` patterns, in RE2
   * program instructions, every occurrence counted (a plain-text pattern,
   * run by string search, counts 0). Default 1024. Why: one match costs up
   * to (instructions × characters of the string), and a counted repeat
   * multiplies instructions (`\pL{999}\d` is 10 characters and 1002
   * instructions); without counted repeats a pattern compiles to about as
   * many instructions as it has characters, so the default refuses no
   * filter that fits `maxLength` without them.
   */
  maxPatternProgram: number;
  /**
   * What one evaluation of the filter may spend searching strings, in RE2
   * instructions × characters. The filter's cost P is the sum of its
   * `matches` patterns' instructions plus one per plain-text pattern and per
   * string value of a `contains` (a string search costs about one instruction
   * per character). A `matches` or `contains` comparison reads a string
   * attribute only if it is at most `maxMatchCost / P` characters long; on a
   * longer one the comparison is false (`not contains` too). So no event can
   * cost a session more than this, whatever the filter and the entity.
   * Default 131,072 (2^17): strings up to ~11,000 characters for
   * `^task-\d+$` (11 instructions), 131,072 for one plain-text pattern,
   * 130 for the largest program.
   */
  maxMatchCost: number;
}

/** The limits used for every field a caller leaves out. */
export const DEFAULT_FILTER_LIMITS: Readonly<FilterLimits> = Object.freeze({
  maxLength: 4096,
  maxDepth: 32,
  maxComparisons: 256,
  maxListLength: 256,
  maxPatternLength: 256,
  maxPatternProgram: 1024,
  maxMatchCost: 128 * 1024,
});

/**
 * The limits with a default for every field left out. Throws a RangeError
 * for a limit that is not a positive integer or Infinity.
 */
export function resolveLimits(limits: Partial<FilterLimits> | undefined): FilterLimits {
  const resolved: FilterLimits = { ...DEFAULT_FILTER_LIMITS };
  if (limits === undefined) return resolved;
  for (const name of Object.keys(DEFAULT_FILTER_LIMITS) as (keyof FilterLimits)[]) {
    const value = limits[name];
    if (value === undefined) continue;
    // A bad limit is the server's bug, not the client's: a RangeError, not a FilterSyntaxError.
    if (!(value === Infinity || (Number.isInteger(value) && value >= 1))) {
      throw new RangeError(`filter limit ${name} must be a positive integer, got ${String(value)}`);
    }
    resolved[name] = value;
  }
  return resolved;
}

// ---------------------------------------------------------------------------
// The tree

/** A literal value: a string (quoted or a bare word), a finite number, or a boolean. */
export type FilterScalar = string | number | boolean;

/** Operators that compare with one value. */
export type FilterScalarOperator = '==' | '!=' | '<' | '<=' | '>' | '>=';

/** Operators that take a list (a single value is read as a one-element list). */
export type FilterListOperator = 'in' | 'not in' | 'contains' | 'not contains' | 'matches';

/** Operators that take no value. */
export type FilterPresenceOperator = 'exists' | 'not exists';

/** Every operator, in the canonical (lower-case, single-space) spelling. */
export type FilterOperator = FilterScalarOperator | FilterListOperator | FilterPresenceOperator;

/**
 * The attribute a comparison reads: the segments of a dotted path
 * (`a.b` is `['a', 'b']`), or a one-element path for a quoted key, taken
 * whole (`"a.b"` is `['a.b']`).
 */
export type FilterPath = readonly string[];

/** `key == value` and the other single-value comparisons. */
export interface FilterScalarComparison {
  readonly type: 'comparison';
  readonly path: FilterPath;
  readonly operator: FilterScalarOperator;
  readonly value: FilterScalar;
}

/** `key in [...]`, `contains`, and their negations; the value is always a list here. */
export interface FilterListComparison {
  readonly type: 'comparison';
  readonly path: FilterPath;
  readonly operator: Exclude<FilterListOperator, 'matches'>;
  readonly value: readonly FilterScalar[];
}

/** `key matches [...]`: one or more regular expressions in RE2 syntax (see pattern.ts). */
export interface FilterMatchComparison {
  readonly type: 'comparison';
  readonly path: FilterPath;
  readonly operator: 'matches';
  readonly value: readonly string[];
}

/** `key exists` / `key not exists`: no value (the property is absent, not undefined). */
export interface FilterPresenceComparison {
  readonly type: 'comparison';
  readonly path: FilterPath;
  readonly operator: FilterPresenceOperator;
}

/** One `key operator value` test. */
export type FilterComparison =
  FilterScalarComparison | FilterListComparison | FilterMatchComparison | FilterPresenceComparison;

/**
 * Operands joined by one connective. `a and b and c` is one group of three;
 * `a or b and c` (left to right, no precedence) is `and(or(a, b), c)`; a
 * parenthesized group stays a separate operand (`(a and b) and c` is
 * `and(and(a, b), c)`), so that the tree mirrors the source.
 */
export interface FilterGroup {
  readonly type: 'and' | 'or';
  readonly operands: readonly [FilterNode, FilterNode, ...FilterNode[]];
}

/** A parsed filter: a comparison or an and/or group. */
export type FilterNode = FilterComparison | FilterGroup;

// ---------------------------------------------------------------------------
// The lexer

type TokenKind =
  | 'word' // a bare word: a key, a keyword or a string value
  | 'number' // a numeric literal; its raw text may also serve as a key
  | 'string' // a quoted string, escapes resolved
  | 'symbol' // ( ) [ ] , == != < <= > >=
  | 'unknown' // any other character: reported by the parser, which knows what it wanted
  | 'end';

interface Token {
  readonly kind: TokenKind;
  /** The source text of the token (quotes and backslashes included for strings). */
  readonly raw: string;
  /** The string value of a quoted string; the raw text otherwise. */
  readonly text: string;
  /** 0-based offset in the source. */
  readonly start: number;
}

// Letters and digits of any script (a key like `prénom` is an attribute
// name too), plus `_ - @ $ #`, plus `.` which separates path segments.
const WORD = /[\p{L}\p{M}\p{N}_@$#.-]+/uy;
const WORD_CHAR = /[\p{L}\p{M}\p{N}_@$#.-]/u;
const NAME = /^[\p{L}\p{M}\p{N}_@$#-]+$/u;
// A number must not run into word characters: `2024-01-01` and `3px` are
// bare words (strings), not a number followed by garbage.
const NUMBER = /-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?/y;
const SPACE = /\s+/y;
const SYMBOLS = ['==', '!=', '<=', '>=', '<', '>', '(', ')', '[', ']', ','] as const;

class Lexer {
  private pos = 0;
  private peeked: Token | undefined;

  constructor(private readonly source: string) {}

  peek(): Token {
    this.peeked ??= this.scan();
    return this.peeked;
  }

  next(): Token {
    const token = this.peek();
    this.peeked = undefined;
    return token;
  }

  /** True when the next non-space character is `ch` (used for `date(`). */
  nextCharIs(ch: string): boolean {
    // Called with the word already peeked, so `pos` is just after it.
    SPACE.lastIndex = this.pos;
    const at = SPACE.test(this.source) ? SPACE.lastIndex : this.pos;
    return this.source[at] === ch;
  }

  private scan(): Token {
    const src = this.source;
    SPACE.lastIndex = this.pos;
    if (SPACE.test(src)) this.pos = SPACE.lastIndex;
    const start = this.pos;
    if (start >= src.length) return { kind: 'end', raw: '', text: '', start };
    const ch = src[start] as string;

    if (ch === '"' || ch === "'") return this.scanString(ch, start);

    NUMBER.lastIndex = start;
    if (NUMBER.test(src)) {
      const end = NUMBER.lastIndex;
      const after = src.codePointAt(end);
      if (after === undefined || !WORD_CHAR.test(String.fromCodePoint(after))) {
        this.pos = end;
        const raw = src.slice(start, end);
        return { kind: 'number', raw, text: raw, start };
      }
    }

    WORD.lastIndex = start;
    if (WORD.test(src)) {
      this.pos = WORD.lastIndex;
      const raw = src.slice(start, this.pos);
      return { kind: 'word', raw, text: raw, start };
    }

    for (const symbol of SYMBOLS) {
      if (src.startsWith(symbol, start)) {
        this.pos = start + symbol.length;
        return { kind: 'symbol', raw: symbol, text: symbol, start };
      }
    }

    // One code point, so that an emoji is reported whole.
    const unknown = String.fromCodePoint(src.codePointAt(start) as number);
    this.pos = start + unknown.length;
    return { kind: 'unknown', raw: unknown, text: unknown, start };
  }

  private scanString(quote: string, start: number): Token {
    const src = this.source;
    let value = '';
    let i = start + 1;
    while (i < src.length) {
      const ch = src[i] as string;
      if (ch === quote) {
        this.pos = i + 1;
        return { kind: 'string', raw: src.slice(start, i + 1), text: value, start };
      }
      if (ch === '\\' && i + 1 < src.length) {
        const escaped = src[i + 1] as string;
        if (escaped === '"' || escaped === "'" || escaped === '\\') {
          value += escaped;
          i += 2;
          continue;
        }
        // Any other backslash is kept as written, so that regular expressions
        // read naturally: "\d+" is the pattern \d+ (so is "\\d+").
      }
      value += ch;
      i += 1;
    }
    const column = src.length + 1;
    throw new FilterSyntaxError(
      `expected '${quote}' at column ${column} to close the string that starts at column ${start + 1}`,
      column,
      quote,
    );
  }
}

// ---------------------------------------------------------------------------
// The parser

const EXPECT_KEY = "an attribute name or '('";
const EXPECT_OPERATOR = 'an operator';
const EXPECT_VALUE = 'a value';
const EXPECT_VALUES = 'a value or a list';
const EXPECT_AFTER_NOT = "'in', 'contains' or 'exists'";
const EXPECT_LIST_NEXT = "',' or ']'";
const EXPECT_CONNECTIVE_TOP = "'and', 'or' or the end";
const EXPECT_CONNECTIVE_GROUP = "'and', 'or' or ')'";

const SCALAR_OPERATORS: ReadonlySet<string> = new Set(['==', '!=', '<', '<=', '>', '>=']);
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

/** How a token is shown in a message: as written, shortened. */
function shortRaw(token: Token, max = 40): string {
  return token.raw.length > max ? `${token.raw.slice(0, max - 1)}…` : token.raw;
}

/** How a token is shown in a message: short, and quoted. */
function describeToken(token: Token): string {
  return `'${shortRaw(token, 24)}'`;
}

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

function parseWithCache(
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

// ---------------------------------------------------------------------------
// The printer

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

// ---------------------------------------------------------------------------
// The compiler

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
