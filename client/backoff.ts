/**
 * Reconnect timing: exponential backoff with full jitter above a floor, and
 * the clock the client schedules with (injectable, so tests control time).
 */

/** The bounds of the reconnect delay, in milliseconds. */
export interface BackoffOptions {
  /** The shortest delay, and the base of the exponential growth. Default 500. */
  minDelay?: number;
  /** The longest delay. Default 30,000. */
  maxDelay?: number;
}

/** The defaults of {@link BackoffOptions}. */
export const DEFAULT_MIN_DELAY = 500;
/** The defaults of {@link BackoffOptions}. */
export const DEFAULT_MAX_DELAY = 30_000;

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry after
 * a connection was lost): uniform between `minDelay` and
 * `min(maxDelay, minDelay * 2^(attempt+1))`. Full jitter spreads a fleet of
 * clients over the whole window when a server restarts, instead of having
 * them all come back at the same instant; the floor keeps a client from
 * hammering a server that closes it right after opening. `random` returns a
 * number in [0, 1), as Math.random does.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const min = Math.max(0, options.minDelay ?? DEFAULT_MIN_DELAY);
  const max = Math.max(min, options.maxDelay ?? DEFAULT_MAX_DELAY);
  // 2^(attempt+1) overflows to Infinity for large attempts; min() keeps the result finite.
  const ceiling = Math.min(max, min * 2 ** (Math.max(0, attempt) + 1));
  return Math.round(min + random() * (ceiling - min));
}

/** The clock and timers the client uses. */
export interface Scheduler {
  /** The current time in milliseconds. */
  now(): number;
  /** Calls `callback` once after `ms` milliseconds; returns a handle for clearTimeout. */
  setTimeout(callback: () => void, ms: number): unknown;
  /** Cancels a pending callback; a handle already run or cancelled is ignored. */
  clearTimeout(handle: unknown): void;
}

/** The real clock: Date.now and the global timers. */
export const realScheduler: Scheduler = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as Parameters<typeof clearTimeout>[0]),
};
