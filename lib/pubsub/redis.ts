import { createClient, ErrorReply, type RedisClientOptions } from 'redis';
import { NotConnectedError, PubSubError } from '../errors.js';
import {
  resolveHistoryOptions,
  subjectMatches,
  type HistoryOptions,
  type PubSubClient,
  type PubSubHandler,
  type PubSubStatus,
  type Unsubscribe,
} from './contract.js';
import { RedisHistory } from './redis-history.js';

export { historyEpochKey, historyStreamKey, RedisHistory } from './redis-history.js';

/** node-redis's reconnect strategy: a delay in ms, or `false`/an Error to give up. */
type ReconnectStrategy = (retries: number, cause: Error) => number | false | Error;

/** A pub/sub listener of node-redis in buffer mode: the message and the channel it came from. */
type BufferListener = (message: Buffer, channel: Buffer) => unknown;

/**
 * What {@link RedisPubSub} uses of a node-redis (v5 or later) client; the
 * result of `createClient()` of the `redis` or `@redis/client` package,
 * whatever its modules, RESP version or type mapping.
 */
export interface RedisClientLike {
  readonly isOpen: boolean;
  readonly isReady: boolean;
  readonly options?: { readonly url?: string; readonly socket?: object };
  connect(): Promise<unknown>;
  duplicate(overrides?: {
    socket?: object;
    disableOfflineQueue?: boolean;
    name?: string;
  }): RedisClientLike;
  publish(channel: string, message: Buffer): Promise<unknown>;
  subscribe(channel: string, listener: BufferListener, bufferMode: true): Promise<void>;
  unsubscribe(channel: string, listener: BufferListener, bufferMode: true): Promise<void>;
  pSubscribe(pattern: string, listener: BufferListener, bufferMode: true): Promise<void>;
  pUnsubscribe(pattern: string, listener: BufferListener, bufferMode: true): Promise<void>;
  close(): Promise<void>;
  destroy(): void;
  on(event: 'error', listener: (error: Error) => void): unknown;
  on(event: 'ready' | 'reconnecting' | 'end' | 'terminated', listener: () => void): unknown;
  off(event: 'error', listener: (error: Error) => void): unknown;
  off(event: 'ready' | 'reconnecting' | 'end' | 'terminated', listener: () => void): unknown;
}

/** Options of {@link RedisPubSub} shared by both ways of giving it a client. */
export interface RedisPubSubCommonOptions {
  /**
   * Called with what must not escape into the driver: a subscription handler
   * that threw, the first error of each outage (the next ones are retries of
   * the same failure), a client closed by someone else. The default ignores
   * it (the server's handlers never throw; connection changes are reported
   * by `onStatus`). A throw from `onError` itself is swallowed.
   */
  onError?: (error: unknown) => void;
  /**
   * When false (the default) `connect()` rejects as soon as a first attempt
   * fails; when true it keeps trying with the reconnect backoff until it
   * connects or `disconnect()` is called.
   */
  waitOnFirstConnect?: boolean;
  /** The first delay before reconnecting, in ms, doubled after each failed attempt; default 50. */
  reconnectDelay?: number;
  /** The longest delay between reconnect attempts, in ms; default 2000. */
  maxReconnectDelay?: number;
  /** How long `disconnect()` lets pending commands finish before cutting the connection, in ms; default 2000. */
  closeTimeout?: number;
  /**
   * Keeps a history per topic root in a Redis stream and sets
   * `pubsub.history` (a {@link RedisHistory}; keys and positions in
   * lib/pubsub/redis-history.ts); off when absent. `publish()` then
   * appends with XADD (and still PUBLISHes, so `subscribe()` keeps
   * working) and resolves once both replied. The constructor throws a
   * RangeError for a bound that is not a positive integer.
   */
  history?: HistoryOptions;
}

/**
 * Options of a {@link RedisPubSub} that opens (and owns) its connections:
 * the options of node-redis's `createClient()` (`url`, `socket`, `username`,
 * `password`, `database`, …). Unless `socket.reconnectStrategy` is given, it
 * reconnects without limit, with a backoff from `reconnectDelay` to
 * `maxReconnectDelay` plus up to 10% jitter; a given strategy applies only
 * once a connection has been ready (the first attempt follows
 * `waitOnFirstConnect`). `disableOfflineQueue` is forced on (see the class
 * comment).
 */
export type RedisPubSubConnectOptions = RedisClientOptions &
  RedisPubSubCommonOptions & { client?: undefined };

/**
 * Options of a {@link RedisPubSub} that uses a client the application already
 * has, for publishing; it subscribes on a dedicated connection made with
 * `client.duplicate()`. `connect()` connects the client if it is not open;
 * `disconnect()` closes only the duplicate. The application keeps handling
 * its client's `'error'` events, and its reconnect strategy applies.
 */
export type RedisPubSubSharedOptions = RedisPubSubCommonOptions & { client: RedisClientLike };

/** Options of {@link RedisPubSub}: client options (`{ url, … }`), or `{ client }`. */
export type RedisPubSubOptions = RedisPubSubConnectOptions | RedisPubSubSharedOptions;

const UNREACHABLE = 'PUSH_PUBSUB_UNREACHABLE';

interface ActiveSubscription {
  active: boolean;
  /** Detaches the node-redis listener; the handler is already silenced when it runs. */
  detach(): Promise<void>;
}

/** The connections of one `connect()`, and what their reconnect strategies need to know. */
interface Connections {
  generation: number;
  publisher: RedisClientLike;
  subscriber: RedisClientLike;
  ownsPublisher: boolean;
  /** Removes the status listeners from a shared client (an owned one keeps them: see #open). */
  detach(): void;
  /** A new connection like the subscriber (same reconnect rules), offline queue off: for a history follower. */
  dedicated(): RedisClientLike;
}

/**
 * The Redis backend, over node-redis: a publishing connection and a
 * dedicated subscribing one (a Redis connection in subscriber mode cannot
 * publish). Subjects are Redis channels of the same name; a subject with
 * NATS wildcards (`events.>`, `events.*.create`) becomes a PSUBSCRIBE glob
 * (`events.*`; glob metacharacters of the literal tokens escaped), and since
 * a Redis `*` also matches dots, each message is checked against the NATS
 * meaning of the subject before it reaches the handler. Payloads travel in
 * node-redis's buffer mode, so bytes arrive unchanged.
 *
 * Connection state, as reported by `status` and `onStatus`: `connecting`
 * during `connect()`, `connected` when both connections are ready;
 * `disconnected` when one is lost, `reconnecting` while dialing again (the
 * driver restores the subscriptions before it reports ready), `connected`
 * once both are back; `closed` after `disconnect()`, or when a connection
 * was closed for good by someone else (then `onError` is told why).
 *
 * **Publishing during an outage rejects**: while the publishing connection
 * is not ready, `publish()` rejects at once with a {@link PubSubError} of
 * code `PUSH_PUBSUB_UNREACHABLE` and nothing is queued. (node-redis would
 * otherwise queue commands without bound while offline and resolve them
 * only after reconnecting, so a long outage would grow memory and hold the
 * server's publish for as long.) A PUBLISH in flight when the connection
 * drops rejects the same way. Delivery is at most once.
 */
export class RedisPubSub implements PubSubClient {
  readonly #options: RedisPubSubOptions;
  readonly #onError: (error: unknown) => void;
  readonly #listeners = new Set<(status: PubSubStatus) => void>();
  #status: PubSubStatus = 'disconnected';
  #connections: Connections | undefined;
  /** True from the resolution of `connect()` to `disconnect()`. */
  #connected = false;
  #subs = new Set<ActiveSubscription>();
  #connecting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  /** Bumped by `disconnect()`: events and work of an older generation are ignored. */
  #generation = 0;
  readonly #history: RedisHistory | undefined;

  /**
   * Creates the client; nothing happens on the network until `connect()`.
   * Defaults: `waitOnFirstConnect: false`, `reconnectDelay: 50`,
   * `maxReconnectDelay: 2000`, `closeTimeout: 2000`.
   */
  constructor(options: RedisPubSubOptions = {}) {
    this.#options = options;
    this.#onError = options.onError ?? (() => undefined);
    this.#history = options.history
      ? new RedisHistory(resolveHistoryOptions(options.history), {
          publisher: (operation) => this.#ready(operation, 'publisher').publisher,
          dedicated: () => this.#ready('follow', 'publisher').dedicated(),
          wrap: (error, what) => this.#wrap(error, what),
          report: (error) => this.#report(error),
        })
      : undefined;
  }

  /** The topic history over Redis Streams, when the `history` option is set; undefined otherwise. */
  get history(): RedisHistory | undefined {
    return this.#history;
  }

  /** The current connection state. */
  get status(): PubSubStatus {
    return this.#status;
  }

  /**
   * Connects both connections; idempotent while in progress or done.
   * Rejects with a PubSubError of code `PUSH_PUBSUB_UNREACHABLE` when Redis
   * cannot be reached (the driver's error is its `cause`), unless
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
   * Closes the subscribing connection and, if this client opened it, the
   * publishing one (letting pending commands finish for up to
   * `closeTimeout` ms); idempotent, never rejects, safe while connecting or
   * reconnecting. A shared client stays open.
   */
  disconnect(): Promise<void> {
    this.#closing ??= this.#disconnect().finally(() => {
      this.#closing = undefined;
    });
    return this.#closing;
  }

  /**
   * Publishes `payload` to the channel `subject` and resolves when Redis has
   * acknowledged it; the payload is not copied, so its bytes must not change
   * before that. Rejects with NotConnectedError before `connect()` or after
   * `disconnect()`, with a PubSubError `PUSH_PUBSUB_UNREACHABLE` while Redis
   * is unreachable (nothing is queued, see the class comment) and with a
   * PubSubError `PUSH_PUBSUB` when Redis answers with an error (an ACL
   * refusal, for instance).
   */
  async publish(subject: string, payload: Uint8Array): Promise<void> {
    const { publisher } = this.#ready('publish', 'publisher');
    const bytes = Buffer.isBuffer(payload)
      ? payload
      : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    try {
      if (this.#history) {
        // Sent together (node-redis pipelines them); the history's XADD is the one that matters.
        const published = publisher.publish(subject, bytes);
        published.catch(() => undefined); // observed below, after the XADD
        await this.#history.append(subject, bytes);
        await published;
      } else {
        await publisher.publish(subject, bytes);
      }
    } catch (error) {
      throw this.#wrap(error, `publish to ${subject}`);
    }
  }

  /**
   * Subscribes `handler` to `subject`: SUBSCRIBE for a plain subject,
   * PSUBSCRIBE for one with NATS wildcards. Resolves once Redis has
   * confirmed it, so a payload published after that reaches the handler. A
   * handler that throws is reported to `onError` and the next payload is
   * delivered. Rejects like `publish()` when not connected or unreachable.
   * The returned function unsubscribes; it is idempotent, and once called
   * the handler gets nothing more.
   */
  async subscribe(subject: string, handler: PubSubHandler): Promise<Unsubscribe> {
    const connections = this.#ready('subscribe', 'subscriber');
    const { subscriber } = connections;
    const wildcard = subject.split('.').some((token) => token === '*' || token === '>');
    const pattern = wildcard ? toGlob(subject) : subject;
    const listener: BufferListener = (message, channel) => {
      if (!record.active) return;
      const name = channel.toString();
      if (wildcard && !subjectMatches(subject, name)) return;
      try {
        handler(message, name);
      } catch (error) {
        this.#report(error);
      }
    };
    const record: ActiveSubscription = {
      active: true,
      detach: () =>
        wildcard
          ? subscriber.pUnsubscribe(pattern, listener, true)
          : subscriber.unsubscribe(subject, listener, true),
    };
    try {
      await (wildcard
        ? subscriber.pSubscribe(pattern, listener, true)
        : subscriber.subscribe(subject, listener, true));
    } catch (error) {
      this.#drop(record, connections);
      throw this.#wrap(error, `subscribe to ${subject}`);
    }
    if (this.#connections !== connections) {
      this.#drop(record, connections);
      throw new NotConnectedError('RedisPubSub: disconnect() was called during subscribe()');
    }
    this.#subs.add(record);
    return async () => this.#drop(record, connections);
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
    let connections: Connections;
    try {
      connections = this.#open(generation);
    } catch (error) {
      this.#setStatus('disconnected');
      throw this.#wrap(error, 'connect');
    }
    this.#connections = connections;
    const { publisher, subscriber, ownsPublisher } = connections;
    try {
      await Promise.all([
        ownsPublisher || !publisher.isOpen ? publisher.connect() : undefined,
        subscriber.connect(),
      ]);
    } catch (error) {
      await this.#release(connections, 0);
      if (generation !== this.#generation) {
        throw new NotConnectedError('RedisPubSub: disconnect() was called during connect()');
      }
      this.#connections = undefined;
      this.#setStatus('disconnected');
      const message = error instanceof Error ? error.message : String(error);
      throw new PubSubError(
        `RedisPubSub: cannot connect to ${this.#describeTarget()}: ${message}`,
        UNREACHABLE,
        { cause: error },
      );
    }
    if (generation !== this.#generation) {
      await this.#release(connections, 0);
      throw new NotConnectedError('RedisPubSub: disconnect() was called during connect()');
    }
    this.#connected = true;
    this.#setStatus(publisher.isReady && subscriber.isReady ? 'connected' : 'reconnecting');
  }

  /** Creates (or adopts) the two connections and listens to their events. */
  #open(generation: number): Connections {
    const options = this.#options;
    const waitOnFirstConnect = options.waitOnFirstConnect ?? false;
    const backoff: ReconnectStrategy = (retries) => {
      const base = options.reconnectDelay ?? 50;
      const delay = Math.min(base * 2 ** retries, options.maxReconnectDelay ?? 2000);
      return Math.round(delay * (1 + Math.random() * 0.1));
    };
    // Before a connection has ever been ready, a failure ends connect() unless told to wait;
    // after, the user's strategy (or our backoff) decides, so reconnection never gives up by default.
    const strategyFor = (state: { ready: boolean }, after: unknown): ReconnectStrategy => {
      return (retries, cause) => {
        if (!state.ready) return waitOnFirstConnect ? backoff(retries, cause) : false;
        if (typeof after === 'number' || after === false) return after;
        if (typeof after === 'function') return (after as ReconnectStrategy)(retries, cause);
        return backoff(retries, cause);
      };
    };
    const publisherState = { ready: false };
    const subscriberState = { ready: false };
    let publisher: RedisClientLike;
    let ownsPublisher: boolean;
    let parentSocket: { reconnectStrategy?: unknown } | undefined;
    if (options.client) {
      publisher = options.client;
      ownsPublisher = false;
      publisherState.ready = true; // its strategy is the application's, untouched
      parentSocket = publisher.options?.socket as { reconnectStrategy?: unknown } | undefined;
    } else {
      const {
        onError: _onError,
        waitOnFirstConnect: _wait,
        reconnectDelay: _delay,
        maxReconnectDelay: _maxDelay,
        closeTimeout: _closeTimeout,
        history: _history,
        client: _client,
        ...clientOptions
      } = options;
      parentSocket = clientOptions.socket;
      publisher = createClient({
        ...clientOptions,
        disableOfflineQueue: true,
        socket: {
          ...clientOptions.socket,
          reconnectStrategy: strategyFor(publisherState, parentSocket?.reconnectStrategy),
        },
      });
      ownsPublisher = true;
    }
    const subscriber = publisher.duplicate({
      socket: {
        ...parentSocket,
        reconnectStrategy: strategyFor(subscriberState, parentSocket?.reconnectStrategy),
      },
    });
    const dedicated = (): RedisClientLike => {
      const state = { ready: false };
      const client = publisher.duplicate({
        name: 'pushwire-history-follower',
        // A command queued while offline would run after the reconnect, before the follower
        // has checked the epoch; it must fail instead, and the follower retries when ready.
        disableOfflineQueue: true,
        socket: {
          ...parentSocket,
          reconnectStrategy: strategyFor(state, parentSocket?.reconnectStrategy),
        },
      });
      client.on('ready', () => {
        state.ready = true;
      });
      return client;
    };
    const detachPublisher = this.#listen(publisher, publisherState, generation);
    this.#listen(subscriber, subscriberState, generation);
    return {
      generation,
      publisher,
      subscriber,
      ownsPublisher,
      // Listeners stay on the connections we own: node-redis throws an 'error' event without
      // a listener, and a closing connection can still emit one.
      detach: ownsPublisher ? () => undefined : detachPublisher,
      dedicated,
    };
  }

  /** Turns a connection's events into status changes; returns a function removing the listeners. */
  #listen(client: RedisClientLike, state: { ready: boolean }, generation: number): () => void {
    const current = (): boolean => generation === this.#generation && this.#status !== 'connecting';
    const onReady = (): void => {
      state.ready = true;
      if (!current()) return;
      const connections = this.#connections;
      if (connections?.publisher.isReady && connections.subscriber.isReady) {
        this.#setStatus('connected');
      }
    };
    const onError = (error: Error): void => {
      if (!current()) return;
      if (this.#status === 'connected') {
        // The first error of an outage; while reconnecting, each failed attempt repeats it.
        this.#report(
          new PubSubError(`RedisPubSub: ${error.message}`, UNREACHABLE, { cause: error }),
        );
        if (!client.isReady) this.#setStatus('disconnected');
      }
    };
    const onReconnecting = (): void => {
      if (current() && this.#status !== 'closed') this.#setStatus('reconnecting');
    };
    const onGone = (): void => {
      if (!current() || this.#status === 'closed') return;
      this.#report(
        new PubSubError('RedisPubSub: a Redis connection was closed for good', UNREACHABLE),
      );
      this.#setStatus('closed');
    };
    client.on('ready', onReady);
    client.on('error', onError);
    client.on('reconnecting', onReconnecting);
    client.on('end', onGone);
    client.on('terminated', onGone);
    return () => {
      client.off('ready', onReady);
      client.off('error', onError);
      client.off('reconnecting', onReconnecting);
      client.off('end', onGone);
      client.off('terminated', onGone);
    };
  }

  /** The connections for `publish`/`subscribe` if the one needed is ready, or the rejection to give. */
  #ready(operation: string, role: 'publisher' | 'subscriber'): Connections {
    const connections = this.#connections;
    if (!connections || !this.#connected) {
      throw new NotConnectedError(
        `RedisPubSub: ${operation} before connect() resolved (or after disconnect())`,
      );
    }
    if (this.#status === 'closed') {
      throw new NotConnectedError(`RedisPubSub: ${operation}: a Redis connection was closed`);
    }
    if (!connections[role].isReady) {
      throw new PubSubError(
        `RedisPubSub: ${operation}: Redis is unreachable (${this.#status}); nothing was sent`,
        UNREACHABLE,
      );
    }
    return connections;
  }

  #wrap(error: unknown, what: string): PubSubError {
    if (error instanceof PubSubError) return error;
    const message = error instanceof Error ? error.message : String(error);
    // An error reply is Redis refusing the command; anything else is the connection failing.
    const code = error instanceof ErrorReply ? 'PUSH_PUBSUB' : UNREACHABLE;
    return new PubSubError(`RedisPubSub: ${what}: ${message}`, code, { cause: error });
  }

  #drop(record: ActiveSubscription, connections: Connections): void {
    if (!record.active) return;
    record.active = false;
    this.#subs.delete(record);
    if (!connections.subscriber.isOpen) return;
    // The listener is removed from node-redis at once (so a reconnect does not restore it);
    // the UNSUBSCRIBE reply only matters to Redis, and the handler is already silent.
    record.detach().catch(() => undefined);
  }

  async #disconnect(): Promise<void> {
    this.#generation++;
    this.#connecting = undefined;
    this.#connected = false;
    const connections = this.#connections;
    this.#connections = undefined;
    for (const record of this.#subs) record.active = false;
    this.#subs.clear();
    await this.#history?.stopAll();
    if (connections) await this.#release(connections, this.#options.closeTimeout ?? 2000);
    if (this.#status !== 'closed') this.#setStatus('closed');
  }

  /** Closes what this client owns and detaches from what it does not. */
  async #release(connections: Connections, graceMs: number): Promise<void> {
    connections.detach();
    await Promise.all([
      closeClient(connections.subscriber, graceMs),
      connections.ownsPublisher ? closeClient(connections.publisher, graceMs) : undefined,
    ]);
  }

  #describeTarget(): string {
    const options = this.#options;
    if (options.client) return options.client.options?.url ?? 'the shared client';
    if (options.url) return options.url;
    const socket = options.socket as { host?: string; port?: number; path?: string } | undefined;
    if (socket?.path) return socket.path;
    return `${socket?.host ?? 'localhost'}:${socket?.port ?? 6379}`;
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
      // onError must not break the driver's event handling; there is nobody left to tell.
    }
  }
}

/** `subject` as a Redis glob: NATS wildcard tokens become `*`, literal tokens are escaped. */
function toGlob(subject: string): string {
  return subject
    .split('.')
    .map((token) => (token === '*' || token === '>' ? '*' : token.replace(/[?*[\]\\]/g, '\\$&')))
    .join('.');
}

/**
 * Closes a node-redis client: gracefully when it is ready (pending commands
 * finish) but for at most `graceMs`, since a graceful close waits for
 * replies that a dying connection never sends; then destroys it, which
 * also stops a reconnect loop.
 */
async function closeClient(client: RedisClientLike, graceMs: number): Promise<void> {
  if (client.isReady && graceMs > 0) {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, graceMs);
    });
    await Promise.race([client.close().catch(() => undefined), timeout]);
    clearTimeout(timer);
  }
  if (client.isOpen || client.isReady) client.destroy();
}
