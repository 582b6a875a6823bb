/**
 * The contract every pub/sub backend implements: LocalPubSub (in memory),
 * the NATS backend and the Redis backend.
 *
 * A backend moves opaque bytes between servers; it never decodes them (the
 * server encodes and decodes the publication envelope of PROTOCOL.md
 * section 8). Subjects are dot-separated (`events`, `events.task.create`).
 *
 * - `connect()` connects; it is idempotent (calls while connecting or
 *   connected resolve when the connection is up) and rejects with a
 *   {@link PubSubError} (code `PUSH_PUBSUB_UNREACHABLE`) when the broker
 *   cannot be reached and the backend is not configured to wait for it; a
 *   rejected `connect()` may be called again.
 * - `publish(subject, payload)` sends `payload` to every subscriber of
 *   `subject` on every server. It rejects with {@link NotConnectedError}
 *   before `connect()` resolved or after `disconnect()`, and with a
 *   {@link PubSubError} when the broker refuses or is unreachable (code
 *   `PUSH_PUBSUB_UNREACHABLE` during an outage: backends do not buffer
 *   publications while disconnected). The caller must not change `payload`
 *   after the call. The server
 *   retries a rejected publish (option `publishRetries`). A resolved publish
 *   is handed to the broker; delivery is at most once, as with bahamut.
 * - `subscribe(subject, handler)` calls `handler(payload, subject)` for every
 *   payload published to `subject` after the subscription is active (the
 *   returned promise resolved), in the order one publisher published them.
 *   Call it after `connect()` resolved (the broker backends reject before).
 *   The payload may be a view into a driver's buffer: a handler that keeps
 *   it past the call must copy it.
 *   A subject whose last token is `>` (`events.>`) matches every subject of
 *   one or more tokens under that prefix, as in NATS. The handler is
 *   synchronous and must not throw (a backend catches and reports a throw
 *   through `onError`, and goes on). The promise resolves to an idempotent
 *   unsubscribe function; after it resolves no payload reaches the handler.
 * - `disconnect()` closes the subscriptions and the connection; idempotent.
 * - `onStatus(listener)` (optional) reports the connection state as it
 *   changes, for logs and metrics; it returns a function that removes the
 *   listener.
 *
 * A new backend is one module implementing this interface that passes the
 * shared backend test suite (`test/integration/backends.test.ts`).
 */
/** What the server tells a backend about one publish attempt. */
export interface PublishAttempt {
  /** Unique per publication, the same across its retries. */
  id?: string;
}

export interface PubSubClient {
  /** Connects to the broker; idempotent. Rejects with a PubSubError when unreachable. */
  connect(): Promise<void>;
  /** Closes every subscription and the connection; idempotent, never rejects. */
  disconnect(): Promise<void>;
  /**
   * Publishes opaque bytes to a subject. Rejects with NotConnectedError before `connect()`.
   * `options.id` is the same on every retry of one publication, so that a backend that
   * detects duplicates (JetStream's `Nats-Msg-Id`) stores a retried one once, even when the
   * attempt that failed had in fact been stored; other backends ignore it.
   */
  publish(subject: string, payload: Uint8Array, options?: PublishAttempt): Promise<void>;
  /** Subscribes a synchronous handler; resolves to an idempotent unsubscribe function. */
  subscribe(subject: string, handler: PubSubHandler): Promise<Unsubscribe>;
  /** Reports connection-state changes; returns a function that removes the listener. */
  onStatus?(listener: (status: PubSubStatus) => void): () => void;
  /** The current connection state. */
  readonly status: PubSubStatus;
  /** The topic history, when the backend's `history` option is set (see {@link TopicHistory}). */
  readonly history?: TopicHistory;
}

/** A handler of payloads received on a subscription; synchronous, must not throw. */
export type PubSubHandler = (payload: Uint8Array, subject: string) => void;

/** Removes a subscription; idempotent. */
export type Unsubscribe = () => Promise<void>;

/** The connection state of a backend. */
export type PubSubStatus = 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

/**
 * True when `subject` is matched by `pattern` in the NATS sense: tokens
 * separated by dots, `*` matches one token, a final `>` one or more tokens.
 */
export function subjectMatches(pattern: string, subject: string): boolean {
  if (pattern === subject) return true;
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    const token = p[i];
    if (token === '>') return i === p.length - 1 && s.length > i;
    if (i >= s.length) return false;
    if (token !== '*' && token !== s[i]) return false;
  }
  return p.length === s.length;
}

/**
 * How much history a backend keeps per topic, when it keeps any (the
 * `history` option of every backend; off when absent). Whichever bound is
 * reached first trims the oldest events.
 */
export interface HistoryOptions {
  /** The most events kept per topic; default 10000. */
  maxEvents?: number;
  /** How long an event is kept, in ms; default 3600000 (one hour). */
  maxAge?: number;
}

/** {@link HistoryOptions} with every default applied. */
export interface ResolvedHistoryOptions {
  maxEvents: number;
  maxAge: number;
}

/** Applies the defaults of {@link HistoryOptions}; throws a RangeError for a bound that is not a positive integer. */
export function resolveHistoryOptions(options: HistoryOptions): ResolvedHistoryOptions {
  const maxEvents = options.maxEvents ?? 10_000;
  const maxAge = options.maxAge ?? 3_600_000;
  if (!Number.isSafeInteger(maxEvents) || maxEvents < 1) {
    throw new RangeError(`history.maxEvents must be a positive integer, got ${String(maxEvents)}`);
  }
  if (!Number.isSafeInteger(maxAge) || maxAge < 1) {
    throw new RangeError(`history.maxAge must be a positive integer (ms), got ${String(maxAge)}`);
  }
  return { maxEvents, maxAge };
}

/**
 * A payload stored in a topic's history, with its position: an opaque
 * string `<epoch>:<offset>` that orders the events of one topic across
 * every server sharing the broker. The epoch changes whenever the history
 * behind the positions is lost (a LocalPubSub process restarts, a stream is
 * deleted and made again, a Redis without persistence restarts), so that an
 * old position is never mistaken for a new one.
 */
export interface HistoryEntry {
  payload: Uint8Array;
  subject: string;
  position: string;
}

/** A handler of payloads delivered live out of a topic's history; synchronous, must not throw. */
export type HistoryHandler = (payload: Uint8Array, subject: string, position: string) => void;

/** What {@link TopicHistory.read} found. */
export interface HistoryRead {
  /**
   * True when `since` is a position of the current epoch, not past the
   * newest stored event, and every event after it is still stored (not
   * trimmed). False otherwise; `entries` is then empty. A backend that
   * cannot tell whether what followed `since` was trimmed (Redis, for the
   * position just before its oldest stored event) answers false: never true
   * when an event is missing.
   */
  recovered: boolean;
  /** The stored events after `since`, oldest first, at most `max` of them. */
  entries: HistoryEntry[];
  /** True when the read stopped at `max` and more events follow the last entry: read again from it. */
  more: boolean;
  /**
   * The position of the newest event stored in the topic's history when the
   * read ran, even if it has been trimmed since (`<epoch>:0` or the like when
   * nothing was stored in this epoch): where a client that could not recover
   * starts from. A read from `head` is recovered, with no entries.
   */
  head: string;
}

/**
 * The history of a topic, kept by a backend whose `history` option is set
 * (`pubsub.history` is then defined; the server turns history on when it
 * is). The topic is a subject root: its history holds what is published on
 * `topic` and on every subject below it (`topic.task.create`), with
 * `publish()` of the same backend or, for NATS, by any publisher on core
 * NATS (bahamut's servers). Which history a publication goes to is decided
 * from its subject alone: LocalPubSub and Redis keep one history per first
 * token (`events` for `events.task.create`), so a topic with dots shares
 * that token's history and positions, and `follow`/`read` keep only its own
 * subjects (`topic` and `topic.…`).
 *
 * - `follow(topic, handler)` delivers every payload stored under `topic`
 *   from now on, with its position, in position order, with no gap and no
 *   duplicate — across broker reconnections where the backend's store
 *   survives them, as long as the follower is not so far behind that what
 *   it has not read yet was trimmed. The server uses it instead of
 *   `subscribe()` when history is on. It resolves once delivery is active (every event stored
 *   after that reaches the handler) to an idempotent unsubscribe function.
 * - `read(topic, since, max)` returns the stored events after `since`. It
 *   never rejects for a bad `since` (malformed, another epoch, trimmed,
 *   in the future): that is `recovered: false`. It rejects with a
 *   PubSubError when the broker cannot be reached, and with a RangeError
 *   when `max` is not a positive integer.
 * - `compare(a, b)` orders two positions of the current epoch (negative,
 *   zero, positive), so the server can drop, at the seam between a replay
 *   and live delivery, what it already sent. Positions that do not parse
 *   compare as NaN.
 * - With history on, `publish()` resolves once the broker stored the
 *   event (JetStream's acknowledgement, XADD's reply): an acknowledged
 *   event is in the history.
 */
export interface TopicHistory {
  /** The bounds this history keeps. */
  readonly options: ResolvedHistoryOptions;
  /** Live delivery from the history, with positions; resolves to an idempotent unsubscribe function. */
  follow(topic: string, handler: HistoryHandler): Promise<Unsubscribe>;
  /** The stored events of `topic` after `since`, at most `max`. */
  read(topic: string, since: string, max: number): Promise<HistoryRead>;
  /** Orders two positions of the current epoch; NaN when either does not parse. */
  compare(a: string, b: string): number;
}

/** A backend with history on: {@link PubSubClient} whose `history` is set. */
export interface HistoryPubSubClient extends PubSubClient {
  readonly history: TopicHistory;
}
