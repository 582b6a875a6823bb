/**
 * The bounds on a filter a client may send, and their defaults. Apart from
 * the parser because the server's options validate them at start-up
 * (lib/options.ts) and the evaluator reads `maxMatchCost` at compile time,
 * neither of which needs the grammar.
 */

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
