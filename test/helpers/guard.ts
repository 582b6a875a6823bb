/**
 * Fails a test file when something async escaped: every unhandled rejection
 * (and, on request, every uncaught exception) is recorded while the file
 * runs, and an `after` hook asserts that there was none.
 */
import assert from 'node:assert/strict';
import { after } from 'node:test';

/** Options of {@link failOnUnhandledRejections}. */
export interface GuardOptions {
  /** Also record uncaught exceptions. Default false. */
  uncaughtExceptions?: boolean;
}

/**
 * Registers the process listeners and the `after` hook that removes them and
 * asserts nothing was recorded. Call it once, at the top level of a test file.
 * Returns the live list of what was recorded (for a test that checks it
 * earlier than the hook does).
 */
export function failOnUnhandledRejections(opts: GuardOptions = {}): readonly string[] {
  const escaped: string[] = [];
  const record =
    (kind: string) =>
    (reason: unknown): void => {
      escaped.push(`${kind}: ${String((reason as Error)?.stack ?? reason)}`);
    };
  const onRejection = record('unhandledRejection');
  const onException = record('uncaughtException');
  process.on('unhandledRejection', onRejection);
  if (opts.uncaughtExceptions) process.on('uncaughtException', onException);
  after(() => {
    process.off('unhandledRejection', onRejection);
    if (opts.uncaughtExceptions) process.off('uncaughtException', onException);
    assert.deepEqual(
      escaped,
      [],
      opts.uncaughtExceptions
        ? 'unhandled rejections or uncaught exceptions'
        : 'unhandled rejections',
    );
  });
  return escaped;
}
