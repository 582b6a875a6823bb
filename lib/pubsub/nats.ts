import {
  connect as natsConnect,
  type Msg,
  type NatsConnection,
  type NodeConnectionOptions,
  type Status,
  type Subscription,
} from '@nats-io/transport-node';
import { NotConnectedError, PubSubError } from '../errors.js';
import {
  resolveHistoryOptions,
  type HistoryOptions,
  type PubSubClient,
  type PubSubHandler,
  type PubSubStatus,
  type TopicHistory,
  type Unsubscribe,
  type PublishAttempt,
} from './contract.js';
import { JetStreamHistory } from './jetstream.js';

/** Options of {@link NatsPubSub} shared by both ways of giving it a connection. */
export interface NatsPubSubCommonOptions {
  /**
   * Called with what must not escape into the driver: a subscription handler
   * that threw, an error the server reported (a permission violation), a
   * connection closed by someone else. The default ignores it (the server's
   * handlers never throw; connection changes are reported by `onStatus`).
   * A throw from `onError` itself is swallowed.
   */
  onError?: (error: unknown) => void;
  /**
   * Keeps each topic's history in a JetStream stream (nats-server with
   * `-js`, and `@nats-io/jetstream` installed): `history` is then set, and
   * `publish()` goes through JetStream (see {@link NatsPubSub}). Off when
   * absent. Throws a RangeError for a bound that is not a positive integer.
   */
  history?: HistoryOptions;
}

/**
 * Options of a {@link NatsPubSub} that opens (and owns) its connection: the
 * options of `connect()` of `@nats-io/transport-node` (`servers`, `user`,
 * `pass`, `token`, `tls`, `reconnectTimeWait`, …), with these defaults and
 * meanings:
 *
 * - `maxReconnectAttempts` defaults to `-1`: reconnect without limit;
 * - `waitOnFirstConnect` (default false): when false, `connect()` rejects as
 *   soon as the broker cannot be reached; when true it keeps trying, every
 *   `reconnectTimeWait` ms, until it connects or `disconnect()` is called;
 * - `noEcho` must stay false: a server receives the events it publishes
 *   through the broker, like every other server.
 */
export type NatsPubSubConnectOptions = NodeConnectionOptions &
  NatsPubSubCommonOptions & { connection?: undefined };

/**
 * Options of a {@link NatsPubSub} that uses a connection the application
 * already has: `disconnect()` removes this client's subscriptions but leaves
 * the connection open. Its reconnect policy is the application's.
 */
export type NatsPubSubSharedOptions = NatsPubSubCommonOptions & { connection: NatsConnection };

/** Options of {@link NatsPubSub}: connection options, or `{ connection }`. */
export type NatsPubSubOptions = NatsPubSubConnectOptions | NatsPubSubSharedOptions;

/** The code of a PubSubError raised because the broker cannot be reached. */
const UNREACHABLE = 'PUSH_PUBSUB_UNREACHABLE';

/** nats.js waits this long between reconnect attempts unless told otherwise. */
const DEFAULT_RECONNECT_TIME_WAIT = 2000;

interface ActiveSubscription {
  active: boolean;
  sub: Subscription;
}

/**
 * The NATS backend: subjects map 1:1 to NATS subjects (`events.>` is a
 * native NATS wildcard), payloads are sent as they are. Servers of this
 * project and bahamut servers on the same subject see each other's
 * publications.
 *
 * Connection state, as reported by `status` and `onStatus`: `connecting`
 * during `connect()`, then `connected`; when the broker goes away
 * `disconnected`, then `reconnecting` while it dials again (it retries
 * without limit by default), `connected` once back — subscriptions are
 * restored by the driver; `closed` after `disconnect()`, or when the
 * connection was closed by someone else (then `onError` is told why).
 *
 * **Publishing during an outage rejects**: while the status is not
 * `connected`, `publish()` rejects at once with a {@link PubSubError} of code
 * `PUSH_PUBSUB_UNREACHABLE`, and nothing is kept to send later. (The nats.js
 * v3 client discards what was published while disconnected when it dials
 * again, so buffering in the driver would be silent loss; a rejection lets
 * the server retry or count the failure.) A publication accepted just before
 * the connection dropped, before the client noticed, can still be lost:
 * delivery is at most once.
 *
 * **With `history`** (lib/pubsub/jetstream.ts): each topic is kept in the
 * JetStream stream `PUSHWIRE_<topic>` over `<topic>` and `<topic>.>`
 * (created or updated on first use: `max_msgs` = `maxEvents`, `max_age` =
 * `maxAge`, file storage), `history` is set, and `publish()` is a JetStream
 * publish that resolves once the stream stored the event: an acknowledged
 * event survives a broker crash. Positions are `<epoch>:<stream sequence>`,
 * the epoch taken from the stream's creation time. Core NATS publishers on
 * those subjects (bahamut servers) are stored too, and core subscribers
 * (bahamut servers) still receive what this client publishes. `subscribe()`
 * stays a core NATS subscription.
 */
export class NatsPubSub implements PubSubClient {
  readonly #connectOptions: NodeConnectionOptions;
  readonly #waitOnFirstConnect: boolean;
  readonly #shared: NatsConnection | undefined;
  readonly #onError: (error: unknown) => void;
  readonly #listeners = new Set<(status: PubSubStatus) => void>();
  readonly #history: JetStreamHistory | undefined;
  #status: PubSubStatus = 'disconnected';
  #connection: NatsConnection | undefined;
  #statusIterable: AsyncIterable<Status> | undefined;
  #subs = new Set<ActiveSubscription>();
  #connecting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  /** Bumped by `disconnect()`: work started under an older generation gives up. */
  #generation = 0;
  /** Cuts the pause between first-connect attempts short when `disconnect()` is called. */
  #wake: (() => void) | undefined;

  /**
   * Creates the client; nothing happens on the network until `connect()`.
   * Defaults: `maxReconnectAttempts: -1`, `waitOnFirstConnect: false`.
   */
  constructor(options: NatsPubSubOptions = {}) {
    this.#onError = options.onError ?? (() => undefined);
    this.#history = options.history
      ? new JetStreamHistory(resolveHistoryOptions(options.history), {
          connection: (operation) => this.#ready(operation),
          report: (error) => this.#report(error),
        })
      : undefined;
    if (options.connection) {
      this.#shared = options.connection;
      this.#connectOptions = {};
      this.#waitOnFirstConnect = false;
    } else {
      const {
        onError: _onError,
        connection: _connection,
        history: _history,
        waitOnFirstConnect,
        ...rest
      } = options;
      this.#shared = undefined;
      this.#waitOnFirstConnect = waitOnFirstConnect ?? false;
      // Our own first-connect loop replaces nats.js's `waitOnFirstConnect`, so that
      // `disconnect()` can stop it: nats.js gives no handle before its connect() resolves.
      this.#connectOptions = { maxReconnectAttempts: -1, ...rest, waitOnFirstConnect: false };
    }
  }

  /** The JetStream history of every topic, when the `history` option is set; otherwise undefined. */
  get history(): TopicHistory | undefined {
    return this.#history;
  }

  /** The current connection state. */
  get status(): PubSubStatus {
    return this.#status;
  }

  /**
   * Connects (or adopts the shared connection); idempotent while it is in
   * progress or done. Rejects with a PubSubError of code
   * `PUSH_PUBSUB_UNREACHABLE` when the broker cannot be reached or refuses
   * the connection (the driver's error is its `cause`), unless
   * `waitOnFirstConnect` is set; after a rejection, `connect()` may be
   * called again. Rejects with NotConnectedError when `disconnect()` is
   * called before it finished.
   */
  connect(): Promise<void> {
    if (!this.#connecting) {
      const attempt = this.#connect(this.#generation);
      this.#connecting = attempt;
      attempt.catch(() => {
        if (this.#connecting === attempt) this.#connecting = undefined;
      });
    }
    return this.#connecting;
  }

  /**
   * Closes the subscriptions and, if this client opened it, the connection;
   * idempotent, never rejects, safe while connecting or reconnecting.
   * A shared connection stays open.
   */
  disconnect(): Promise<void> {
    this.#closing ??= this.#disconnect().finally(() => {
      this.#closing = undefined;
    });
    return this.#closing;
  }

  /**
   * Publishes `payload` to `subject`. Resolves once the bytes are in the
   * client's outbound buffer (written within the same turn of the event
   * loop); the payload is not copied, so its bytes must not change
   * afterwards. Rejects with NotConnectedError before `connect()` or after
   * `disconnect()`, with a PubSubError `PUSH_PUBSUB_UNREACHABLE` while the
   * broker is unreachable (nothing is buffered, see the class comment), and
   * with a PubSubError `PUSH_PUBSUB` when the client refuses it (an invalid
   * subject, a payload over the server's `max_payload`).
   *
   * With history on, it resolves once JetStream stored the payload (its
   * acknowledgement): see {@link JetStreamHistory.publish} for its rejections.
   */
  async publish(subject: string, payload: Uint8Array, options?: PublishAttempt): Promise<void> {
    if (this.#history) return this.#history.publish(subject, payload, options?.id);
    const connection = this.#ready('publish');
    try {
      connection.publish(subject, payload);
    } catch (error) {
      throw this.#wrap(error, `publish to ${subject}`);
    }
  }

  /**
   * Subscribes `handler` to `subject` (NATS wildcards `*` and a final `>`
   * allowed). Resolves once the server has registered the subscription, so
   * a payload published after that reaches the handler. A handler that
   * throws is reported to `onError` and the next payload is delivered.
   * Rejects like `publish()` when not connected or unreachable. The
   * returned function unsubscribes; it is idempotent, and once called the
   * handler gets nothing more.
   */
  async subscribe(subject: string, handler: PubSubHandler): Promise<Unsubscribe> {
    const connection = this.#ready('subscribe');
    const generation = this.#generation;
    let record: ActiveSubscription | undefined;
    const callback = (error: Error | null, msg: Msg): void => {
      if (!record?.active) return;
      if (error) {
        const message = `NatsPubSub: subscription to ${subject} failed: ${error.message}`;
        this.#report(new PubSubError(message, 'PUSH_PUBSUB', { cause: error }));
        return;
      }
      try {
        handler(msg.data, msg.subject);
      } catch (thrown) {
        this.#report(thrown);
      }
    };
    try {
      record = { active: true, sub: connection.subscribe(subject, { callback }) };
    } catch (error) {
      throw this.#wrap(error, `subscribe to ${subject}`);
    }
    this.#subs.add(record);
    try {
      // A round trip: once the server answers the PING sent after SUB, it has the subscription.
      await connection.flush();
    } catch (error) {
      this.#drop(record);
      throw new PubSubError(
        `NatsPubSub: subscribe to ${subject}: the broker became unreachable`,
        UNREACHABLE,
        { cause: error },
      );
    }
    if (!record.active || generation !== this.#generation) {
      this.#drop(record);
      throw new NotConnectedError('NatsPubSub: disconnect() was called during subscribe()');
    }
    const active = record;
    return async () => this.#drop(active);
  }

  /** Adds a connection-state listener; returns its remover. A listener that throws is reported to `onError`. */
  onStatus(listener: (status: PubSubStatus) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  async #connect(generation: number): Promise<void> {
    this.#setStatus('connecting');
    let connection: NatsConnection;
    try {
      connection = this.#shared ?? (await this.#dial(generation));
      if (connection.isClosed()) {
        throw new PubSubError('NatsPubSub: the shared NATS connection is closed', UNREACHABLE);
      }
    } catch (error) {
      if (generation === this.#generation) this.#setStatus('disconnected');
      throw error;
    }
    if (generation !== this.#generation) {
      if (!this.#shared) await connection.close().catch(() => undefined);
      throw new NotConnectedError('NatsPubSub: disconnect() was called during connect()');
    }
    this.#connection = connection;
    this.#watch(connection, generation);
    // A shared connection may be between servers right now; `info` is cleared while it dials.
    this.#setStatus(connection.info === undefined ? 'reconnecting' : 'connected');
  }

  async #dial(generation: number): Promise<NatsConnection> {
    for (;;) {
      try {
        return await natsConnect(this.#connectOptions);
      } catch (error) {
        if (generation !== this.#generation) {
          throw new NotConnectedError('NatsPubSub: disconnect() was called during connect()');
        }
        const message = error instanceof Error ? error.message : String(error);
        const unreachable = new PubSubError(
          `NatsPubSub: cannot connect to ${this.#describeServers()}: ${message}`,
          UNREACHABLE,
          { cause: error },
        );
        if (!this.#waitOnFirstConnect) throw unreachable;
        await this.#pause(this.#connectOptions.reconnectTimeWait ?? DEFAULT_RECONNECT_TIME_WAIT);
        if (generation !== this.#generation) {
          throw new NotConnectedError('NatsPubSub: disconnect() was called during connect()');
        }
      }
    }
  }

  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = done;
    });
  }

  /** Follows the connection's status and its end; both stop mattering once the generation moves on. */
  #watch(connection: NatsConnection, generation: number): void {
    const iterable = connection.status();
    this.#statusIterable = iterable;
    const follow = async (): Promise<void> => {
      for await (const status of iterable) {
        if (generation !== this.#generation) break;
        this.#onDriverStatus(status);
      }
    };
    follow().catch((error: unknown) => this.#report(error));
    connection
      .closed()
      .then((why) => {
        if (generation !== this.#generation) return;
        // Closed by someone else: the application closed a shared connection, or nats.js gave up.
        this.#report(
          new PubSubError(
            `NatsPubSub: the NATS connection was closed${why instanceof Error ? `: ${why.message}` : ''}`,
            UNREACHABLE,
            { cause: why },
          ),
        );
        this.#setStatus('closed');
      })
      .catch((error: unknown) => this.#report(error));
  }

  #onDriverStatus(status: Status): void {
    switch (status.type) {
      case 'disconnect':
        this.#setStatus('disconnected');
        break;
      case 'reconnecting':
        this.#setStatus('reconnecting');
        break;
      case 'reconnect':
        this.#setStatus('connected');
        break;
      case 'error':
        this.#report(status.error);
        break;
      default:
        // ping, update, ldm, staleConnection…: a disconnect, if any, is reported on its own.
        break;
    }
  }

  /** The open connection for `publish`/`subscribe`, or the rejection to give. */
  #ready(operation: string): NatsConnection {
    const connection = this.#connection;
    if (!connection) {
      throw new NotConnectedError(
        `NatsPubSub: ${operation} before connect() resolved (or after disconnect())`,
      );
    }
    if (this.#status === 'closed') {
      throw new NotConnectedError(`NatsPubSub: ${operation}: the NATS connection was closed`);
    }
    if (this.#status !== 'connected') {
      throw new PubSubError(
        `NatsPubSub: ${operation}: the broker is unreachable (${this.#status}); nothing was sent`,
        UNREACHABLE,
      );
    }
    return connection;
  }

  #wrap(error: unknown, what: string): PubSubError {
    const message = error instanceof Error ? error.message : String(error);
    if (error instanceof Error && error.name === 'ClosedConnectionError') {
      return new NotConnectedError(`NatsPubSub: ${what}: the connection is closed`, {
        cause: error,
      });
    }
    return new PubSubError(`NatsPubSub: ${what}: ${message}`, 'PUSH_PUBSUB', { cause: error });
  }

  #drop(record: ActiveSubscription): void {
    if (!record.active) return;
    record.active = false;
    this.#subs.delete(record);
    try {
      record.sub.unsubscribe();
    } catch {
      // The connection is closed: the server has forgotten the subscription already.
    }
  }

  async #disconnect(): Promise<void> {
    this.#generation++;
    this.#wake?.();
    this.#wake = undefined;
    this.#connecting = undefined;
    const connection = this.#connection;
    this.#connection = undefined;
    // Stopping the status iterator detaches it from a shared connection (it would wait for
    // the next status otherwise); `stop` is on nats.js's iterator, not on its declared type.
    const iterable = this.#statusIterable as { stop?: () => void } | undefined;
    this.#statusIterable = undefined;
    iterable?.stop?.();
    for (const record of [...this.#subs]) this.#drop(record);
    this.#history?.close();
    if (connection && !this.#shared) {
      await connection.close().catch((error: unknown) => this.#report(error));
    }
    if (this.#status !== 'closed') this.#setStatus('closed');
  }

  #describeServers(): string {
    const { servers, port } = this.#connectOptions;
    if (servers !== undefined) return Array.isArray(servers) ? servers.join(', ') : servers;
    return `127.0.0.1:${port ?? 4222}`;
  }

  #setStatus(status: PubSubStatus): void {
    if (status === this.#status) return;
    this.#status = status;
    for (const listener of [...this.#listeners]) {
      try {
        listener(status);
      } catch (error) {
        this.#report(error);
      }
    }
  }

  #report(error: unknown): void {
    try {
      this.#onError(error);
    } catch {
      // onError must not break the driver's loop; there is nobody left to tell.
    }
  }
}
