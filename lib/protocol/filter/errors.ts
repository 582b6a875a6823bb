/**
 * The one error the filter language throws at a client's text: every stage
 * (lexer, parser, pattern checks) reports through it, so the core turns any
 * refusal into the same `400` error event whatever stage caught it.
 */

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
