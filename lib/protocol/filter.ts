/**
 * The filter language of PROTOCOL.md section 7, as one import: this module
 * only re-exports, so that the core, the options and the tests need not know
 * how the language is split. Pure: no I/O, and no import from the rest of
 * the project, so the protocol layer stays below the core.
 *
 * Three stages, each usable alone, each in its own module under filter/:
 * - {@link parseFilter} (filter/parser.ts, over filter/lexer.ts) turns
 *   source text into a {@link FilterNode} tree (filter/tree.ts), or throws a
 *   {@link FilterSyntaxError} (filter/errors.ts) that names the column and
 *   what was expected there;
 * - {@link printFilter} (filter/printer.ts) turns a tree back into canonical
 *   text;
 * - {@link compileFilter} (filter/evaluator.ts) parses once, compiles every
 *   `matches` pattern once, and returns a {@link CompiledFilter} whose
 *   `match` never throws.
 *
 * The bounds on all three are filter/limits.ts; the patterns themselves are
 * `pattern.ts`'s job: RE2 syntax, matched in time linear in the string.
 */

export { FilterSyntaxError } from './filter/errors.js';
export { DEFAULT_FILTER_LIMITS, resolveLimits, type FilterLimits } from './filter/limits.js';
export type {
  FilterComparison,
  FilterGroup,
  FilterListComparison,
  FilterListOperator,
  FilterMatchComparison,
  FilterNode,
  FilterOperator,
  FilterPath,
  FilterPresenceComparison,
  FilterPresenceOperator,
  FilterScalar,
  FilterScalarComparison,
  FilterScalarOperator,
} from './filter/tree.js';
export { parseFilter } from './filter/parser.js';
export { printFilter } from './filter/printer.js';
export { compileFilter, type CompiledFilter } from './filter/evaluator.js';
