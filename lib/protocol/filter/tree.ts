/**
 * The tree of a parsed filter: the contract between the parser (which
 * builds it), the printer (which writes it back) and the evaluator (which
 * compiles it). Types only, so importing it costs nothing at run time.
 */

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
