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
export interface PubSubClient {
  /** Connects to the broker; idempotent. Rejects with a PubSubError when unreachable. */
  connect(): Promise<void>;
  /** Closes every subscription and the connection; idempotent, never rejects. */
  disconnect(): Promise<void>;
  /** Publishes opaque bytes to a subject. Rejects with NotConnectedError before `connect()`. */
  publish(subject: string, payload: Uint8Array): Promise<void>;
  /** Subscribes a synchronous handler; resolves to an idempotent unsubscribe function. */
  subscribe(subject: string, handler: PubSubHandler): Promise<Unsubscribe>;
  /** Reports connection-state changes; returns a function that removes the listener. */
  onStatus?(listener: (status: PubSubStatus) => void): () => void;
  /** The current connection state. */
  readonly status: PubSubStatus;
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
