/**
 * The pattern engine of the filter language's `matches` operator: it
 * compiles one pattern and tests strings against it in time linear in the
 * string, whatever the pattern. Pure: no I/O, and no import from the rest of
 * the project (re2js is an npm package), so the protocol layer stays below
 * the core.
 *
 * Why not JavaScript's RegExp: V8's engine backtracks, so a pattern a
 * client sends (`(a+)+$`, or just `.*.*.*…x`) can make one match take
 * seconds or forever on an ordinary entity, and the patterns come from
 * untrusted clients. No syntactic guard catches every super-linear shape.
 * RE2 (here its pure-JavaScript port, re2js) runs automata instead of
 * backtracking: a match costs at most (size of the compiled program) ×
 * (length of the string), and its syntax is Go's `regexp`, the one
 * bahamut's own clients write.
 */
import { RE2JS } from 're2js';

/**
 * A pattern that RE2 refuses (a syntax error, a backreference, a lookaround,
 * a repeat count over 1000). `reason` is RE2's description, in words; the
 * filter parser turns it into a FilterSyntaxError that names the column.
 */
export class PatternError extends Error {
  /** Why the pattern is refused, as RE2 words it (`invalid escape sequence: \`\\1\``). */
  readonly reason: string;

  /** Builds the error; `message` and `reason` are the same text. */
  constructor(reason: string) {
    super(reason);
    this.name = 'PatternError';
    this.reason = reason;
  }
}

/** A compiled `matches` pattern: a search, so it may match anywhere in the string. */
export interface CompiledPattern {
  /** The pattern text, as given. */
  readonly source: string;
  /**
   * What one test may cost per character of the string, in RE2 program
   * instructions (re2js `programSize()`); 0 when the pattern is plain text
   * run by string search. A filter sums it to bound its own cost.
   */
  readonly size: number;
  /**
   * True when the pattern finds a match in `text`. Never throws; time and
   * memory linear in `text.length` (times `size` at worst).
   */
  test(text: string): boolean;
}

// RE2's metacharacters, plus `{` and `}` (RE2 reads a lone `{` as a
// literal, but leaving every brace to RE2 keeps this test obviously right).
const METACHARACTERS = /[\\.+*?()|[\]{}^$]/;

/**
 * The fast path: a pattern with no metacharacter except a leading `^` and a
 * trailing `$` means exactly "contains / starts with / ends with / equals
 * this text", and the engines of String.prototype run that without an
 * automaton. Without the `m` flag RE2's `^` and `$` anchor the whole text
 * (never a line), so the translation is exact. Undefined when the pattern
 * needs RE2.
 */
function literalTest(source: string): ((text: string) => boolean) | undefined {
  const anchoredStart = source.startsWith('^');
  // A `$` escaped as `\$` contains a backslash and never reaches here.
  const anchoredEnd = source.length > (anchoredStart ? 1 : 0) && source.endsWith('$');
  const literal = source.slice(anchoredStart ? 1 : 0, anchoredEnd ? -1 : undefined);
  if (METACHARACTERS.test(literal)) return undefined;
  if (anchoredStart && anchoredEnd) return (text) => text === literal;
  if (anchoredStart) return (text) => text.startsWith(literal);
  if (anchoredEnd) return (text) => text.endsWith(literal);
  return (text) => text.includes(literal);
}

/**
 * Compiles one `matches` pattern in RE2 syntax (Go's `regexp`), with no
 * flag: case-sensitive unless the pattern says `(?i)`, `^`/`$` anchor the
 * whole text unless it says `(?m)`, `.` does not match a newline unless it
 * says `(?s)`. Strings are read as code points (an emoji is one `.`).
 * Throws a {@link PatternError} for a pattern RE2 refuses; the cost of the
 * compilation grows with the program (at most 1000 instructions per
 * counted repeat, RE2's own limit), so callers bound the pattern's length.
 */
/**
 * True when {@link compilePattern} runs `source` as plain string search (no
 * RE2 program, a few bytes of memory): what a memory estimate may ask before
 * compiling anything.
 */
export function isPlainTextPattern(source: string): boolean {
  return literalTest(source) !== undefined;
}

/**
 * The memory RE2's lazy DFA of one pattern may grow to, by re2js's own
 * accounting (states and transition tables). re2js's default is 8 MiB per
 * pattern, which events could grow patterns of untrusted clients to; past
 * this budget the DFA starts over or the NFA runs (slower, still linear,
 * and bounded by the filter's maxMatchCost).
 */
export const DFA_BUDGET_BYTES = 64 * 1024;

/** Sets the DFA budget through re2js's internals, where they have the shape of 2.10. */
function boundDfa(re2: RE2JS): void {
  const internal = (re2 as unknown as { re2Input?: { dfa?: unknown } }).re2Input;
  const dfa = internal?.dfa as { stateBudget?: unknown; memBudget?: unknown } | undefined;
  if (
    dfa !== undefined &&
    typeof dfa.stateBudget === 'number' &&
    typeof dfa.memBudget === 'number'
  ) {
    dfa.stateBudget = DFA_BUDGET_BYTES;
    dfa.memBudget = DFA_BUDGET_BYTES;
  }
}

export function compilePattern(source: string): CompiledPattern {
  const literal = literalTest(source);
  if (literal !== undefined) return Object.freeze({ source, size: 0, test: literal });
  let re2: RE2JS;
  try {
    re2 = RE2JS.compile(source);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new PatternError(message.replace(/^error parsing regexp: /, ''));
  }
  boundDfa(re2);
  const size = re2.programSize();
  return Object.freeze({
    source,
    size,
    // test() asks for no capture group, so re2js runs its DFA (or, past the
    // DFA's memory budget, its NFA): linear either way, and it never throws
    // on a string.
    test: (text: string) => re2.test(text),
  });
}
