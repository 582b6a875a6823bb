/**
 * Waiting without sleeping: tests wait on the event that proves an outcome
 * (a deferred promise), or poll a condition with a deadline. A fixed sleep
 * is either too short on a slow machine or wasted time on a fast one.
 */

/** Options of {@link waitFor}. */
export interface WaitForOptions {
  /** How long to wait before failing, in milliseconds. */
  timeout: number;
  /** How often to evaluate the condition, in milliseconds; default 10. */
  interval?: number;
  /** The message of the error thrown when the timeout passes: say what did not happen. */
  message: string;
}

/**
 * Resolves as soon as `condition` returns true, evaluating it immediately
 * and then every `interval` ms; rejects with `message` once `timeout` ms
 * have passed. A condition that throws (or rejects) fails the wait at once
 * with that error: a broken check is a bug, not a reason to keep waiting.
 */
export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  options: WaitForOptions,
): Promise<void> {
  const { timeout, interval = 10, message } = options;
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await condition()) return;
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`waitFor: ${message} (after ${timeout} ms)`);
    await new Promise<void>((resolve) => setTimeout(resolve, Math.min(interval, left)));
  }
}

/** A promise together with the functions that settle it. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T | PromiseLike<T>) => void;
  reject: (reason?: unknown) => void;
  /** True once `resolve` or `reject` has been called. */
  readonly settled: boolean;
}

/**
 * A promise settled from outside, to turn a callback ("the handler got the
 * payload") into something a test can await. Settling twice is a no-op,
 * like a plain promise's.
 */
export function deferred<T = void>(): Deferred<T> {
  let settled = false;
  let resolveFn!: (value: T | PromiseLike<T>) => void;
  let rejectFn!: (reason?: unknown) => void;
  const promise = new Promise<T>((resolve, reject) => {
    resolveFn = resolve;
    rejectFn = reject;
  });
  return {
    promise,
    resolve: (value) => {
      settled = true;
      resolveFn(value);
    },
    reject: (reason) => {
      settled = true;
      rejectFn(reason);
    },
    get settled() {
      return settled;
    },
  };
}

/**
 * Settles like `promise`, or rejects with `message` when it has not settled
 * after `ms` milliseconds. The timer is cleared either way, so it never
 * keeps the process alive; `promise` itself is not cancelled.
 */
export async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`withTimeout: ${message} (after ${ms} ms)`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
