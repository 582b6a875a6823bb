/**
 * The counters of one push middleware (`stats()`), and what one event's
 * dispatch reports to `onDispatch` listeners. Every module of the server
 * counts into one {@link PushStats} object, so that a metrics scrape is a
 * copy, never a walk over the sessions.
 */
import type { DispatchStats } from './chain.js';

/** Counters of one push middleware since it started. */
export interface PushStats {
  /** Sessions open now. */
  sessionsOpen: number;
  /**
   * Sessions open now, by the media type they receive events in (kept as
   * counters at start and close so that a metrics scrape costs no walk over
   * the sessions).
   */
  sessionsByEncoding: Record<string, number>;
  /** Sessions open now, by transport (`websocket`, `sse`). */
  sessionsByTransport: Record<string, number>;
  /** Sessions accepted (handshake completed). */
  sessionsAccepted: number;
  /** Connection attempts refused, by HTTP status. */
  sessionsRefused: Record<number, number>;
  /** Connection attempts whose client went away before the handshake completed or was refused. */
  sessionsAbandoned: number;
  /** Sessions closed, by close code. */
  sessionsClosed: Record<number, number>;
  /** Publications received from the topic. */
  eventsReceived: number;
  /** Publications that did not decode (dropped). */
  eventsUndecodable: number;
  /** Events dropped because a dispatch plugin threw or timed out. */
  dispatchErrors: number;
  /** Events written to sessions. */
  deliveries: number;
  /** (event, session) pairs skipped by error state, timestamp, push config or a predicate. */
  filtered: number;
  /** Events dropped for slow consumers. */
  dropped: number;
  /** Invalid push configs received. */
  invalidConfigs: number;
  /** Events published (handed to the backend). */
  published: number;
  /** Publish attempts retried. */
  publishRetries: number;
  /** Publishes that failed every attempt. */
  publishFailures: number;
  /** Sessions that asked to resume from a position (history on), answered by a recovery frame. */
  recoveries: number;
  /** Of those, the ones answered `recovered: false` (the client must re-read state). */
  recoveriesFailed: number;
  /** Events replayed from history to resuming sessions. */
  eventsReplayed: number;
}

/**
 * What one event's dispatch did on this server, reported to
 * `onDispatch` listeners (metrics) once its fan-out has ended.
 */
export interface DispatchInfo extends DispatchStats {
  /**
   * Seconds from receiving the event from the topic to the end of its
   * fan-out (the last write; with dispatch plugins, when their chain
   * finished), including the wait behind earlier events.
   */
  durationSeconds: number;
}

/** A zeroed {@link PushStats}. */
export function newPushStats(): PushStats {
  return {
    sessionsOpen: 0,
    sessionsByEncoding: {},
    sessionsByTransport: {},
    sessionsAccepted: 0,
    sessionsRefused: {},
    sessionsAbandoned: 0,
    sessionsClosed: {},
    eventsReceived: 0,
    eventsUndecodable: 0,
    dispatchErrors: 0,
    deliveries: 0,
    filtered: 0,
    dropped: 0,
    invalidConfigs: 0,
    published: 0,
    publishRetries: 0,
    publishFailures: 0,
    recoveries: 0,
    recoveriesFailed: 0,
    eventsReplayed: 0,
  };
}

/** Zeroed counters of one event's dispatch. */
export function newDispatchStats(): DispatchStats {
  return { considered: 0, sent: 0, filtered: 0, dropped: 0 };
}

/** Adds one to `map[key]`. */
export function increment(map: Record<number, number>, key: number): void {
  map[key] = (map[key] ?? 0) + 1;
}

/**
 * The `onDispatch` listeners of a server. The list is replaced, never
 * mutated, so a report loop sees a stable list; empty, it tells the
 * subscription not to read the clock per event.
 */
export class DispatchListeners {
  #listeners: readonly ((info: DispatchInfo) => void)[] = [];
  readonly #onThrow: (error: unknown) => void;

  /** `onThrow` is told of a listener that threw (the others still run). */
  constructor(onThrow: (error: unknown) => void) {
    this.#onThrow = onThrow;
  }

  /** True when someone listens. */
  get active(): boolean {
    return this.#listeners.length > 0;
  }

  /** Adds a listener; returns its remover. */
  add(listener: (info: DispatchInfo) => void): () => void {
    if (typeof listener !== 'function') throw new TypeError('onDispatch takes a function');
    this.#listeners = [...this.#listeners, listener];
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== listener);
    };
  }

  /** Reports one event's dispatch, received at `receivedAt` (performance.now()). */
  readonly report = (receivedAt: number, stats: DispatchStats): void => {
    const info: DispatchInfo = {
      durationSeconds: (performance.now() - receivedAt) / 1000,
      considered: stats.considered,
      sent: stats.sent,
      filtered: stats.filtered,
      dropped: stats.dropped,
    };
    for (const listener of this.#listeners) {
      try {
        listener(info);
      } catch (error) {
        this.#onThrow(error);
      }
    }
  };
}
