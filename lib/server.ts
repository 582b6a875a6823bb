/**
 * The push server: the session registry, the subscription to the topic,
 * the dispatch fan-out and publishing. Transport-agnostic: middleware.ts
 * binds it to Express and the upgrade.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import {
  compose,
  type DispatchContext,
  type DispatchPredicate,
  type DispatchStats,
  type PublishContext,
  type PublishOptions,
  type SessionContext,
} from './chain.js';
import {
  ForbiddenError,
  InvalidEventError,
  InvalidPushConfigError,
  NotConnectedError,
  PubSubError,
  PushError,
  ServiceUnavailableError,
  TooManyRequestsError,
  UnsupportedMediaTypeError,
} from './errors.js';
import { buildFrame, buildTextFrame } from './frame.js';
import { describeError } from './logger.js';
import type { ResolvedOptions } from './options.js';
import { negotiateEncodings, UnsupportedEncodingError } from './protocol/encoding.js';
import {
  encodeEntity,
  encodeMsgpackEvent,
  EventFormatError,
  findProtoKey,
  mayHoldProtoKey,
  normalizeTimestamp,
  WireEvent,
  wireEventFrom,
  type PushEvent,
} from './protocol/event.js';
import {
  decodePublication,
  encodePublication,
  publicationSubject,
  subscriptionSubject,
  type DecodedPublication,
  type PublicationHeaders,
} from './protocol/publication.js';
import {
  DEFAULT_PUSH_CONFIG_LIMITS,
  decodePushConfigMessage,
  parsePushConfig,
  PushConfigError,
  SelectorPool,
  VERDICT_MEMO_SLOTS,
  type ConfigSelector,
  type PushConfigLimits,
} from './protocol/push-config.js';
import type { PubSubClient, Unsubscribe } from './pubsub/contract.js';
import { renewSessionToken, ServerSession, type PushSession } from './session.js';

const WS_OPEN = 1;
/** Where a session's WebSocket points back to its session, for the shared listeners. */
const kSession = Symbol('pushwire.session');
type SessionSocket = WebSocket & { [kSession]: ServerSession };
const NO_IDENTITIES: readonly string[] = [];
const NO_PREDICATES: readonly DispatchPredicate[] = [];
/**
 * The most events fanned out in one walk over the sessions: bounds the
 * combined frame a session gets in one write and stays within the verdict
 * memo of push-config selectors.
 */
const MAX_BATCH = VERDICT_MEMO_SLOTS;

/** What #admit decided for a write. */
const Admission = { Admitted: 0, Closed: 1, Dropped: 2 } as const;
type Admission = (typeof Admission)[keyof typeof Admission];

function newStats(): DispatchStats {
  return { considered: 0, sent: 0, filtered: 0, dropped: 0 };
}

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

function increment(map: Record<number, number>, key: number): void {
  map[key] = (map[key] ?? 0) + 1;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Resolves with the promise, or rejects with `onTimeout()` after `ms`. */
function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  if (ms <= 0) return promise;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), ms);
    timer.unref();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

interface PreparedEvent {
  event: PushEvent & { timestamp: Date };
  eventBytes: Uint8Array;
  subject: string;
}

/** The frames of one event, built at most once per encoding. */
class EventFrames {
  #json: Buffer | undefined;
  #msgpack: Buffer | undefined;
  // Why per encoding: an entity that does not decode fails only the JSON frame (MessagePack
  // sessions get the publisher's bytes as they are); remembering it tries the decode once.
  #jsonFailed = false;
  #msgpackFailed = false;
  failed = false;
  constructor(private readonly event: WireEvent) {}

  /** The frame for a session, or undefined when the event cannot be encoded in its encoding. */
  for(binary: boolean): Buffer | undefined {
    if (binary ? this.#msgpackFailed : this.#jsonFailed) return undefined;
    try {
      if (binary) return (this.#msgpack ??= buildFrame(this.event.toMsgpack(), true));
      return (this.#json ??= buildTextFrame(this.event.toJson()));
    } catch {
      this.failed = true;
      if (binary) this.#msgpackFailed = true;
      else this.#jsonFailed = true;
      return undefined;
    }
  }
}

/** An event waiting in the batch of this turn for its fan-out. */
interface BatchedEvent {
  event: WireEvent;
  /** The event's timestamp in ms (compared with each session's start). */
  ms: number;
  frames: EventFrames;
  related: readonly string[];
  predicates: readonly DispatchPredicate[];
  stats: DispatchStats | undefined;
  /** performance.now() at receipt, for onDispatch when no plugin reports it; -1: nobody listens. */
  receivedAt: number;
  /** The dispatch chain's `next()` resolving: called with what is still pending (async predicates). */
  done: ((fanOut: Promise<void> | undefined) => void) | undefined;
  /** Deferred writes behind async verdicts. */
  pending: Promise<void>[] | undefined;
}

/** The frames of every event of a batch, end to end, built at most once per encoding. */
class BatchFrames {
  #json: Buffer | null | undefined;
  #msgpack: Buffer | null | undefined;
  constructor(private readonly batch: readonly BatchedEvent[]) {}

  /** The concatenated frames, or undefined when an event cannot be encoded in this encoding. */
  for(binary: boolean): Buffer | undefined {
    let frames = binary ? this.#msgpack : this.#json;
    if (frames === undefined) {
      const parts: Buffer[] = [];
      for (const item of this.batch) {
        const frame = item.frames.for(binary);
        if (frame === undefined) break;
        parts.push(frame);
      }
      frames = parts.length === this.batch.length ? Buffer.concat(parts) : null;
      if (binary) this.#msgpack = frames;
      else this.#json = frames;
    }
    return frames ?? undefined;
  }
}

/** One push server: its sessions, its subscription, its plugins. */
export class PushServer {
  readonly options: ResolvedOptions;
  readonly topic: string;
  readonly pubsub: PubSubClient;
  /** Resolves once subscribed to the topic. */
  readonly ready: Promise<void>;

  readonly #sessions = new Set<ServerSession>();
  /**
   * The compiled selectors of the sessions' configs, shared between equal ones (the fan-out
   * works out verdicts once per selector) and freed with the last session that holds each: a
   * reference is taken when a config is applied and given back when it is replaced or its
   * session closes. So selector memory is at most open sessions × maxPushConfigBytes.
   */
  readonly #selectors = new SelectorPool();
  readonly #configLimits: PushConfigLimits;
  readonly #stats: PushStats = {
    sessionsOpen: 0,
    sessionsByEncoding: {},
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
  };
  readonly #sessionChain: ((ctx: SessionContext, last: () => void) => Promise<void>) | undefined;
  readonly #dispatchChain:
    | ((
        ctx: DispatchContext,
        last: (ctx: DispatchContext) => Promise<void> | void,
      ) => Promise<void>)
    | undefined;
  readonly #publishChain:
    | ((ctx: PublishContext, last: (ctx: PublishContext) => Promise<void>) => Promise<void>)
    | undefined;
  /** Events whose dispatch plugins went async, and those waiting behind them. */
  #dispatchTail: Promise<void> = Promise.resolve();
  #waitingDispatches = 0;
  /** Writes waiting for async verdicts, one promise per event (see #awaitWrites). */
  readonly #deferredWrites = new Set<Promise<void>>();
  /** The events of this turn, fanned out together at the next tick. */
  #batch: BatchedEvent[] = [];
  /** Scratch for #fanOut: which events of the batch pass for the session at hand. */
  readonly #passed: boolean[] = new Array<boolean>(MAX_BATCH).fill(false);
  /** Set by #decide when a predicate answered with a promise: where, and the promise. */
  #asyncAt = -1;
  #asyncVerdict: Promise<boolean> | undefined;
  /** Scratch for #fanOut: which events of the batch pass step 3 for one push-config selector. */
  readonly #configPassed: boolean[] = new Array<boolean>(MAX_BATCH).fill(false);
  /** onDispatch listeners; replaced, never mutated, so a report loop sees a stable list. Empty: no clock read per event. */
  #dispatchListeners: readonly ((info: DispatchInfo) => void)[] = [];
  #unsubscribe: Unsubscribe | undefined;
  #closing = false;
  #closePromise: Promise<void> | undefined;
  #pingTimer: NodeJS.Timeout | undefined;
  /** When the last ping round ran (performance.now()), to notice a stalled event loop. */
  #lastPingAt = performance.now();
  #corked: ServerSession[] = [];
  #uncorkScheduled = false;

  readonly #socketListeners = ((server: PushServer) => ({
    message(this: WebSocket, data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
      const session = (this as SessionSocket)[kSession];
      server.#onMessage(session, data, isBinary, session.enableErrors);
    },
    pong(this: WebSocket): void {
      (this as SessionSocket)[kSession].alive = true;
    },
    error(this: WebSocket, error: Error): void {
      server.options.logger.debug(
        { sessionId: (this as SessionSocket)[kSession].id, err: describeError(error) },
        'pushwire: session socket error',
      );
    },
    close(this: WebSocket, code: number, reason: Buffer): void {
      server.#onClose((this as SessionSocket)[kSession], code, reason.toString());
    },
  }))(this);

  constructor(pubsub: PubSubClient, topic: string, options: ResolvedOptions) {
    if (pubsub === null || typeof pubsub !== 'object' || typeof pubsub.subscribe !== 'function') {
      throw new TypeError('pushMiddleware: pubsub must implement PubSubClient');
    }
    if (typeof topic !== 'string' || topic === '') {
      throw new TypeError('pushMiddleware: topic must be a non-empty string');
    }
    this.pubsub = pubsub;
    this.topic = topic;
    this.options = options;
    this.#configLimits = {
      ...DEFAULT_PUSH_CONFIG_LIMITS,
      maxBytes: options.maxPushConfigBytes > 0 ? options.maxPushConfigBytes : Infinity,
      filters: options.filterLimits,
    };
    const sessionMws = options.plugins.flatMap((p) => (p.session ? [p.session.bind(p)] : []));
    const dispatchMws = options.plugins.flatMap((p) => (p.dispatch ? [p.dispatch.bind(p)] : []));
    const publishMws = options.plugins.flatMap((p) => (p.publish ? [p.publish.bind(p)] : []));
    this.#sessionChain = sessionMws.length > 0 ? compose(sessionMws) : undefined;
    this.#dispatchChain = dispatchMws.length > 0 ? compose(dispatchMws) : undefined;
    this.#publishChain = publishMws.length > 0 ? compose(publishMws) : undefined;

    this.ready = this.#subscribe();
    // `ready` is the caller's to await; this catch only keeps an ignored failure from crashing the process.
    this.ready.catch((error: unknown) => {
      this.options.logger.error({ err: describeError(error) }, 'pushwire: subscription failed');
    });
    if (options.pingInterval > 0) {
      this.#pingTimer = setInterval(() => this.#pingAll(), options.pingInterval);
      this.#pingTimer.unref();
    }
  }

  async #subscribe(): Promise<void> {
    await this.pubsub.connect();
    const subject = subscriptionSubject(this.topic, this.options.subjectHierarchies);
    const unsubscribe = await this.pubsub.subscribe(subject, (payload) => this.#onPayload(payload));
    if (this.#closing) await unsubscribe();
    else this.#unsubscribe = unsubscribe;
  }

  /** A snapshot of the counters. */
  stats(): PushStats {
    return {
      ...this.#stats,
      sessionsOpen: this.#sessions.size,
      sessionsByEncoding: { ...this.#stats.sessionsByEncoding },
      sessionsRefused: { ...this.#stats.sessionsRefused },
      sessionsClosed: { ...this.#stats.sessionsClosed },
    };
  }

  /**
   * Calls `listener` after the fan-out of each event received from the
   * topic (not for an event dropped by a failing dispatch plugin). A throw
   * is logged and ignored. Returns a function that removes the listener.
   */
  onDispatch(listener: (info: DispatchInfo) => void): () => void {
    if (typeof listener !== 'function') throw new TypeError('onDispatch takes a function');
    this.#dispatchListeners = [...this.#dispatchListeners, listener];
    return () => {
      this.#dispatchListeners = this.#dispatchListeners.filter((l) => l !== listener);
    };
  }

  #reportDispatch(receivedAt: number, stats: DispatchStats): void {
    const info: DispatchInfo = {
      durationSeconds: (performance.now() - receivedAt) / 1000,
      considered: stats.considered,
      sent: stats.sent,
      filtered: stats.filtered,
      dropped: stats.dropped,
    };
    for (const listener of this.#dispatchListeners) {
      try {
        listener(info);
      } catch (error) {
        this.options.logger.warn({ err: describeError(error) }, 'pushwire: onDispatch threw');
      }
    }
  }

  /** The open sessions. */
  sessions(): PushSession[] {
    return [...this.#sessions];
  }

  /** True once close() was called. */
  get closing(): boolean {
    return this.#closing;
  }

  // -------------------------------------------------------------------------
  // Sessions

  /** Counts a refusal (for stats and logs). */
  recordRefusal(status: number, request: IncomingMessage, error: unknown): void {
    increment(this.#stats.sessionsRefused, status);
    this.options.logger.debug(
      { status, clientIP: request.socket.remoteAddress, err: describeError(error) },
      'pushwire: session refused',
    );
  }

  /** Counts an attempt whose client left mid-handshake (so that every attempt is accounted for). */
  recordAbandoned(request: IncomingMessage): void {
    this.#stats.sessionsAbandoned++;
    this.options.logger.debug(
      { clientIP: request.socket.remoteAddress },
      'pushwire: client left before the handshake completed',
    );
  }

  /**
   * Builds a session from an upgrade request and runs the session phase.
   * Resolves to the accepted session; rejects with the PushError whose
   * status the refusal must carry.
   */
  async openSession(request: IncomingMessage): Promise<ServerSession> {
    if (this.#closing) throw new ServiceUnavailableError('The push server is shutting down');
    const origin = request.headers.origin;
    if (
      origin !== undefined &&
      this.options.allowedOrigins &&
      !this.options.allowedOrigins(origin)
    ) {
      throw new ForbiddenError(`Origin ${origin.slice(0, 200)} is not allowed`);
    }
    const query = new URL(request.url ?? '/', 'http://localhost').searchParams;
    let encodings;
    try {
      encodings = negotiateEncodings(
        request.headers['content-type'],
        request.headers.accept,
        query.get('encoding') ?? undefined,
      );
    } catch (error) {
      if (error instanceof UnsupportedEncodingError) {
        throw new UnsupportedMediaTypeError(error.message);
      }
      throw error;
    }
    const ip = (request as { ip?: unknown }).ip;
    const session = new ServerSession({
      id: randomUUID(),
      request,
      query,
      clientIP: typeof ip === 'string' ? ip : (request.socket.remoteAddress ?? ''),
      encodings,
      host: this,
    });
    if (this.#sessionChain === undefined) return session;
    const ctx: SessionContext = {
      session,
      request,
      authenticated: false,
      accepted: false,
      state: {},
    };
    try {
      await this.#sessionChain(ctx, () => {
        ctx.accepted = true;
      });
    } catch (error) {
      if (error instanceof PushError) throw error;
      // The session phase's default: a plain throw from a custom plugin refuses with 403.
      throw new ForbiddenError(error instanceof Error ? error.message : String(error), {
        cause: error,
      });
    }
    if (!ctx.accepted) throw new ForbiddenError();
    if (this.#closing) throw new ServiceUnavailableError('The push server is shutting down');
    return session;
  }

  /** Registers a session whose handshake completed. */
  startSession(session: ServerSession, ws: WebSocket, socket: Socket): void {
    session.ws = ws;
    session.socket = socket;
    if (this.#closing) {
      ws.close(1001, 'server shutting down');
      return;
    }
    session.open = true;
    this.#sessions.add(session);
    this.#stats.sessionsAccepted++;
    // Kept per encoding here (and in #onClose) so that metrics never walk the sessions.
    const byEncoding = this.#stats.sessionsByEncoding;
    byEncoding[session.encodings.write] = (byEncoding[session.encodings.write] ?? 0) + 1;
    // One set of listeners per server, finding the session on the socket: four closures per
    // session were a measurable part of an idle session's memory.
    (ws as SessionSocket)[kSession] = session;
    const listeners = this.#socketListeners;
    ws.on('message', listeners.message);
    ws.on('pong', listeners.pong);
    ws.on('error', listeners.error);
    ws.on('close', listeners.close);
    this.options.logger.debug(
      { sessionId: session.id, clientIP: session.clientIP, encoding: session.encodings.write },
      'pushwire: session started',
    );
    for (const plugin of this.options.plugins) {
      if (plugin.onSessionStart) {
        this.#runHook(plugin.name, 'onSessionStart', () => plugin.onSessionStart?.(session));
      }
    }
  }

  #runHook(name: string | undefined, hook: string, fn: () => void | Promise<void>): void {
    const report = (error: unknown): void =>
      this.options.logger.warn(
        { plugin: name, hook, err: describeError(error) },
        'pushwire: hook failed',
      );
    try {
      const result = fn();
      if (result && typeof result.then === 'function') result.then(undefined, report);
    } catch (error) {
      report(error);
    }
  }

  #onClose(session: ServerSession, socketCode: number, socketReason: string): void {
    if (!this.#sessions.delete(session)) return;
    // Stats, metrics, logs and onSessionStop say why the server ended it, not how the socket went.
    const code = session.policyClose?.code ?? socketCode;
    const reason = session.policyClose?.reason ?? socketReason;
    session.abort();
    // The session's reference on its selector; session.config stays readable for onSessionStop.
    if (session.config !== undefined) this.#selectors.release(session.config);
    increment(this.#stats.sessionsClosed, code);
    this.#stats.sessionsByEncoding[session.encodings.write] =
      (this.#stats.sessionsByEncoding[session.encodings.write] ?? 1) - 1;
    this.options.logger.debug(
      { sessionId: session.id, code, reason, dropped: session.dropped },
      'pushwire: session closed',
    );
    for (const plugin of this.options.plugins) {
      if (plugin.onSessionStop) {
        this.#runHook(plugin.name, 'onSessionStop', () =>
          plugin.onSessionStop?.(session, { code, reason }),
        );
      }
    }
  }

  #onMessage(
    session: ServerSession,
    data: Buffer | ArrayBuffer | Buffer[],
    _isBinary: boolean,
    enableErrors: boolean,
  ): void {
    // Decoding a config and compiling its filters costs CPU: bound how often a client can ask.
    const limit = this.options.maxConfigsPerSecond;
    if (limit > 0) {
      const now = Date.now();
      if (now - session.configWindowStart >= 1000) {
        session.configWindowStart = now;
        session.configCount = 0;
      }
      if (++session.configCount > limit) {
        this.options.logger.debug({ sessionId: session.id }, 'pushwire: push config rate exceeded');
        if (!enableErrors) session.close(1008, 'too many push configs');
        else if (session.configCount === limit + 1) {
          // One error event per window: answering every excess message would amplify the flood.
          const message = `More than ${limit} push configs per second; this one was ignored`;
          this.#sendError(session, new TooManyRequestsError(message, { data: { limit } }));
        }
        return;
      }
    }
    const bytes = Array.isArray(data)
      ? Buffer.concat(data)
      : data instanceof ArrayBuffer
        ? new Uint8Array(data)
        : data;
    let config;
    try {
      config = parsePushConfig(
        decodePushConfigMessage(bytes, session.encodings.read),
        this.#configLimits,
      );
    } catch (error) {
      if (!(error instanceof PushConfigError)) throw error;
      this.#stats.invalidConfigs++;
      this.options.logger.debug(
        { sessionId: session.id, err: describeError(error) },
        'pushwire: invalid push config',
      );
      if (enableErrors) {
        session.errorState = true;
        const err = new InvalidPushConfigError(error.message, { data: error.data });
        this.#sendError(session, err);
      } else {
        session.close(1003, 'invalid push config');
      }
      return;
    }
    // A message delivered after the close was handled must not take a reference nobody gives back.
    if (!this.#sessions.has(session)) return;
    const previous = session.config;
    session.config = this.#selectors.acquire(config);
    if (previous !== undefined) this.#selectors.release(previous);
    session.errorState = false;
    if (session.mergeParameters(config.parameters)) {
      renewSessionToken(session, this.options.plugins, this.options.logger);
    }
  }

  #sendError(session: ServerSession, error: PushError): void {
    // Events received before this error go first.
    this.#flushBatch();
    const event = new WireEvent({
      identity: '',
      type: 'error',
      timestamp: new Date(),
      entityEncoding: 'application/msgpack',
      entity: error.toErrorObject(),
    });
    const frame = new EventFrames(event).for(session.binary);
    if (frame !== undefined) this.#write(session, frame, undefined);
  }

  /** Sends events to one session (PushSession#directPush). */
  directPush(session: ServerSession, events: PushEvent[]): void {
    const prepared = events.map((event) => {
      try {
        return wireEventFrom(event, normalizeTimestamp(event));
      } catch (error) {
        throw new InvalidEventError((error as Error).message, { cause: error });
      }
    });
    if (!session.open || session.errorState) return;
    // Events received from the topic before this call are written first.
    this.#flushBatch();
    for (const event of prepared) {
      if (event.timestamp.getTime() < session.startMs) continue;
      if (session.config !== undefined && !session.config.allows(event, NO_IDENTITIES)) continue;
      const frame = new EventFrames(event).for(session.binary);
      if (frame === undefined) throw new InvalidEventError('the event entity cannot be encoded');
      this.#write(session, frame, undefined);
    }
  }

  // -------------------------------------------------------------------------
  // Dispatch
  //
  // Events are fanned out in batches: those received in one turn of the event loop (a broker
  // hands several over in one read) wait in #batch until the next tick, then one walk over the
  // sessions checks each session against all of them and writes what passes — as one frame
  // buffer per encoding when every event passes, which is the common case. One walk per event
  // cost a pass over every session's state per event (the CPU profile of issue 7's benchmark).

  #onPayload(payload: Uint8Array): void {
    if (this.#closing) return;
    this.#stats.eventsReceived++;
    // The clock is read only for onDispatch listeners (metrics): unused, it costs nothing.
    const receivedAt = this.#dispatchListeners.length > 0 ? performance.now() : -1;
    let publication: DecodedPublication;
    try {
      // The decoded event keeps views into `payload` (entity bytes, forwarded MessagePack), and
      // a backend may reuse its buffer once this handler returns (NATS does), while the event
      // waits in the batch until the next tick: it works on a copy (one per event, not per session).
      publication = decodePublication(Uint8Array.prototype.slice.call(payload));
    } catch (error) {
      this.#stats.eventsUndecodable++;
      this.options.logger.warn(
        { err: describeError(error), bytes: payload.byteLength },
        'pushwire: dropped a publication that does not decode',
      );
      return;
    }
    const undecodable = publication.event.undecodableReason();
    if (undecodable !== undefined) {
      // Dropped for every session alike, before plugins read it: JSON sessions and a plugin
      // reading the entity cannot have it, so MessagePack sessions must not get it either.
      this.#stats.eventsUndecodable++;
      this.options.logger.warn(
        {
          identity: publication.event.identity,
          type: publication.event.type,
          reason: undecodable,
        },
        'pushwire: dropped an event whose entity does not decode',
      );
      return;
    }
    if (this.#dispatchChain === undefined) {
      // No plugin: nothing can be async; the event joins this turn's batch.
      const stats = receivedAt >= 0 ? newStats() : undefined;
      this.#enqueue(publication.event, NO_IDENTITIES, NO_PREDICATES, stats, receivedAt, undefined);
      return;
    }
    if (this.#waitingDispatches === 0) {
      // Nothing waits before this event: run its chain now. Plugins that call next() without
      // awaiting first (the usual shouldDispatch, an unsampled tracer) put it in this turn's batch.
      const pending = this.#runDispatch(publication, receivedAt);
      if (pending !== undefined) this.#waitBehind(() => pending);
      return;
    }
    // An earlier event's plugins are still working: wait for them, to keep the order.
    this.#waitBehind(() => this.#runDispatch(publication, receivedAt));
  }

  /** Appends a step to the queue of dispatches that must finish before later events run. */
  #waitBehind(step: () => Promise<void> | undefined): void {
    this.#waitingDispatches++;
    this.#dispatchTail = this.#dispatchTail.then(step).finally(() => {
      this.#waitingDispatches--;
    });
  }

  /**
   * Runs the dispatch chain of one event. Returns undefined when the chain
   * reached the fan-out synchronously (later events may go ahead: this one
   * is in the batch before them), else a promise that settles (never
   * rejects) once the chain finished, failed or timed out.
   */
  #runDispatch(publication: DecodedPublication, receivedAt: number): Promise<void> | undefined {
    const { event, ...headers } = publication;
    const ctx: DispatchContext = {
      event,
      publication: headers,
      relatedIdentities: [],
      predicates: [],
      stats: newStats(),
      state: {},
    };
    let abandoned = false;
    let reached = false;
    const chain = this.#dispatchChain;
    if (chain === undefined) return undefined;
    // Not skipped while closing: close() flushes and waits for these so that events received
    // before it are delivered (issue 9); past closeTimeout, writes to closing sockets are no-ops.
    const run = chain(ctx, (c) => {
      if (abandoned) return undefined;
      reached = true;
      return new Promise<void>((resolve) => {
        this.#enqueue(c.event, c.relatedIdentities, c.predicates, c.stats, -1, resolve);
      });
    });
    const failed = (error: unknown): void => {
      abandoned = true;
      this.#stats.dispatchErrors++;
      this.options.logger.warn(
        { identity: event.identity, type: event.type, err: describeError(error) },
        'pushwire: event not dispatched: a dispatch plugin failed',
      );
    };
    const report = (): void => {
      if (receivedAt >= 0) this.#reportDispatch(receivedAt, ctx.stats);
    };
    if (reached) {
      // Its place in the order is taken; what the plugins do after next() needs no timeout
      // to protect later events.
      run.then(report, failed);
      return undefined;
    }
    return withTimeout(
      run,
      this.options.dispatchTimeout,
      () => new Error(`dispatch plugins did not finish within ${this.options.dispatchTimeout} ms`),
    ).then(report, failed);
  }

  /** Adds an event to this turn's batch. `done` is called once its fan-out ended. */
  #enqueue(
    event: WireEvent,
    related: readonly string[],
    predicates: readonly DispatchPredicate[],
    stats: DispatchStats | undefined,
    receivedAt: number,
    done: ((fanOut: Promise<void> | undefined) => void) | undefined,
  ): void {
    const length = this.#batch.push({
      event,
      ms: event.timestamp.getTime(),
      frames: new EventFrames(event),
      related,
      predicates,
      stats,
      receivedAt,
      done,
      pending: undefined,
    });
    if (length === 1) process.nextTick(this.#flushBatch);
    // A long burst is fanned out in slices: a bounded combined frame, and verdict memos
    // (VERDICT_MEMO_SLOTS) that hold every event of a batch.
    else if (length >= MAX_BATCH) this.#flushBatch();
  }

  /** Fans out the events waiting in the batch, in order. Called at the next tick, or before a direct write. */
  readonly #flushBatch = (): void => {
    const batch = this.#batch;
    if (batch.length === 0) return;
    this.#batch = [];
    this.#fanOut(batch);
    for (const item of batch) {
      if (item.frames.failed) {
        this.#stats.eventsUndecodable++;
        this.options.logger.warn(
          { identity: item.event.identity, type: item.event.type },
          'pushwire: dropped an event whose entity does not decode',
        );
      }
      const fanOut = item.pending === undefined ? undefined : this.#awaitWrites(item.pending);
      if (item.done !== undefined) item.done(fanOut);
      else if (item.receivedAt >= 0 && item.stats !== undefined) {
        this.#reportDispatch(item.receivedAt, item.stats);
      }
    }
  };

  /**
   * The writes deferred behind async verdicts for one event, kept in
   * #deferredWrites until done: close() waits for them, since such an event
   * may be on no dispatch queue (its chain reached next() at once).
   */
  #awaitWrites(pending: Promise<void>[]): Promise<void> {
    const all = Promise.all(pending).then(() => undefined);
    const forget = (): void => {
      this.#deferredWrites.delete(all);
    };
    this.#deferredWrites.add(all);
    all.then(forget, forget);
    return all;
  }

  /** Steps 1-5 of PROTOCOL.md section 5, for every open session and every event of a batch. */
  #fanOut(batch: BatchedEvent[]): void {
    const count = batch.length;
    // Every open session is considered; the set does not change during the loop.
    const considered = this.#sessions.size;
    let plain = true;
    let counted = false;
    let oldest = Infinity;
    for (const item of batch) {
      if (item.stats !== undefined) {
        item.stats.considered += considered;
        counted = true;
      }
      if (item.predicates.length > 0) plain = false;
      if (item.ms < oldest) oldest = item.ms;
    }
    const combined = count > 1 ? new BatchFrames(batch) : undefined;
    const passed = this.#passed;
    // Step 3's verdicts depend on the config's selector and the event only, and sessions with
    // equal configs share one (#selectors): work them out once per selector for the batch.
    const configPassed = this.#configPassed;
    let configSelector: ConfigSelector | undefined;
    let configPassing = 0;
    let filtered = 0;
    for (const session of this.#sessions) {
      if (session.errorState) {
        filtered += count;
        if (counted) for (const item of batch) if (item.stats !== undefined) item.stats.filtered++;
        continue;
      }
      if (session.asyncTail !== undefined) {
        // An async verdict is pending for this session: its events queue behind it.
        filtered += this.#fanOutToSession(session, batch, 0);
        continue;
      }
      const config = session.config;
      let mask: boolean[] | undefined;
      let passing = count;
      if (config !== undefined) {
        const selector = config.selector;
        if (selector !== configSelector) {
          configSelector = selector;
          configPassing = 0;
          for (let i = 0; i < count; i++) {
            const item = batch[i] as BatchedEvent;
            const ok = selector.allows(item.event, item.related);
            configPassed[i] = ok;
            if (ok) configPassing++;
          }
        }
        mask = configPassed;
        passing = configPassing;
      }
      const startMs = session.startMs;
      let asyncAt = -1;
      if (!plain || oldest < startMs) {
        passing = this.#decide(session, batch, mask);
        mask = passed;
        asyncAt = this.#asyncAt;
      }
      const stop = asyncAt >= 0 ? asyncAt : count;
      if (passing < stop) {
        filtered += stop - passing;
        if (counted) {
          for (let i = 0; i < stop; i++) {
            const stats = (batch[i] as BatchedEvent).stats;
            if (stats !== undefined && !(mask as boolean[])[i]) stats.filtered++;
          }
        }
      }
      if (asyncAt >= 0) {
        // Events before the async verdict go now; it and those after it wait for it, in order.
        this.#writeEach(session, batch, passed, asyncAt);
        const item = batch[asyncAt] as BatchedEvent;
        const verdict = this.#asyncVerdict as Promise<boolean>;
        this.#asyncVerdict = undefined;
        const deferred = this.#deferWrite(session, verdict, item.frames, item.stats);
        (item.pending ??= []).push(deferred);
        filtered += this.#fanOutToSession(session, batch, asyncAt + 1);
        continue;
      }
      if (passing === 0) continue;
      if (passing === count) {
        const frame =
          combined === undefined
            ? (batch[0] as BatchedEvent).frames.for(session.binary)
            : combined.for(session.binary);
        if (frame !== undefined && this.#writeBatch(session, frame, batch)) continue;
        // One of the events cannot be encoded for this session, or together they do not fit
        // within its bound: one frame each.
        this.#writeEach(session, batch, undefined, count);
        continue;
      }
      this.#writeEach(session, batch, mask, count);
    }
    this.#stats.filtered += filtered;
  }

  /**
   * Steps 2 (timestamps) and 4 (predicates) for one session and a batch,
   * on top of step 3's `mask`: fills #passed and returns how many pass. On
   * an async verdict it stops there, with #asyncAt and #asyncVerdict set.
   * A function of its own, and small, so that V8 inlines the predicates
   * into this loop: in #fanOut's body they were calls per (session, event).
   */
  #decide(
    session: ServerSession,
    batch: readonly BatchedEvent[],
    mask: readonly boolean[] | undefined,
  ): number {
    const passed = this.#passed;
    const startMs = session.startMs;
    let passing = 0;
    this.#asyncAt = -1;
    for (let i = 0; i < batch.length; i++) {
      const item = batch[i] as BatchedEvent;
      let ok = item.ms >= startMs && (mask === undefined || (mask[i] as boolean));
      const predicates = item.predicates;
      if (ok && predicates.length !== 0) {
        let verdict: boolean | Promise<boolean>;
        if (predicates.length === 1) {
          try {
            verdict = (predicates[0] as DispatchPredicate)(session);
          } catch (error) {
            this.#predicateFailed(session, error);
            verdict = false;
          }
          if (verdict !== true && verdict !== false) verdict = this.#settle(session, verdict);
        } else {
          verdict = this.#checkPredicates(session, predicates);
        }
        if (verdict !== true && verdict !== false) {
          this.#asyncAt = i;
          this.#asyncVerdict = verdict;
          return passing;
        }
        ok = verdict;
      }
      passed[i] = ok;
      if (ok) passing++;
    }
    return passing;
  }

  /** A predicate's answer that is neither true nor false: a promise of one, or false. */
  #settle(session: ServerSession, result: unknown): boolean | Promise<boolean> {
    if (typeof (result as { then?: unknown } | null)?.then !== 'function') return false;
    return Promise.resolve(result as Promise<boolean>).then(
      (r) => r === true,
      (error: unknown) => {
        this.#predicateFailed(session, error);
        return false;
      },
    );
  }

  /** Writes, one frame each, the events before `end` that pass by `mask` (undefined: all). */
  #writeEach(
    session: ServerSession,
    batch: readonly BatchedEvent[],
    mask: readonly boolean[] | undefined,
    end: number,
  ): void {
    for (let i = 0; i < end; i++) {
      if (mask !== undefined && !mask[i]) continue;
      const item = batch[i] as BatchedEvent;
      // Skip only this event: a `break` here made the sessions of the other encoding get the
      // event or not depending on the order sessions happened to connect in.
      const frame = item.frames.for(session.binary);
      if (frame !== undefined) this.#write(session, frame, item.stats);
    }
  }

  /**
   * The fan-out of a batch's events from `from` on to a session that has an
   * async verdict pending: each event that passes the synchronous checks
   * waits behind it. Returns how many events it filtered synchronously.
   */
  #fanOutToSession(session: ServerSession, batch: readonly BatchedEvent[], from: number): number {
    let filtered = 0;
    for (let i = from; i < batch.length; i++) {
      const item = batch[i] as BatchedEvent;
      let verdict: boolean | Promise<boolean> =
        item.ms >= session.startMs &&
        (session.config === undefined || session.config.allows(item.event, item.related));
      if (verdict && item.predicates.length > 0) {
        verdict = this.#checkPredicates(session, item.predicates);
      }
      if (verdict === false) {
        filtered++;
        if (item.stats !== undefined) item.stats.filtered++;
        continue;
      }
      (item.pending ??= []).push(this.#deferWrite(session, verdict, item.frames, item.stats));
    }
    return filtered;
  }

  #checkPredicates(
    session: ServerSession,
    predicates: readonly DispatchPredicate[],
  ): boolean | Promise<boolean> {
    let asyncResults: Promise<boolean>[] | undefined;
    for (let i = 0; i < predicates.length; i++) {
      let result: boolean | Promise<boolean>;
      try {
        result = (predicates[i] as DispatchPredicate)(session);
      } catch (error) {
        this.#predicateFailed(session, error);
        return false;
      }
      if (result === true) continue;
      if (result === false) return false;
      const settled = this.#settle(session, result);
      if (settled === false) return false;
      (asyncResults ??= []).push(settled as Promise<boolean>);
    }
    if (asyncResults === undefined) return true;
    return Promise.all(asyncResults).then((all) => all.every(Boolean));
  }

  #predicateFailed(session: ServerSession, error: unknown): void {
    this.options.logger.warn(
      { sessionId: session.id, err: describeError(error) },
      'pushwire: shouldDispatch threw; the event is not sent to that session',
    );
  }

  #deferWrite(
    session: ServerSession,
    verdict: boolean | Promise<boolean>,
    frames: EventFrames,
    stats: DispatchStats | undefined,
  ): Promise<void> {
    const previous = session.asyncTail ?? Promise.resolve();
    const tail = previous
      .then(() => verdict)
      .then((ok) => {
        if (!ok) {
          this.#stats.filtered++;
          if (stats) stats.filtered++;
          return;
        }
        const frame = frames.for(session.binary);
        if (frame !== undefined) this.#write(session, frame, stats);
      })
      .finally(() => {
        if (session.asyncTail === tail) session.asyncTail = undefined;
      });
    session.asyncTail = tail;
    return tail;
  }

  /** Writes one event's frame to a session, coalesced per turn, within its buffer bound. */
  #write(session: ServerSession, frame: Buffer, stats: DispatchStats | undefined): void {
    const admitted = this.#admit(session, 1, true);
    if (admitted === Admission.Closed) return;
    if (admitted === Admission.Dropped) {
      if (stats) stats.dropped++;
      return;
    }
    (session.socket as Socket).write(frame);
    this.#stats.deliveries++;
    if (stats) stats.sent++;
  }

  /**
   * Writes the frames of every event of a batch (concatenated) to a session,
   * as #write does. Returns false, having written nothing, when they would
   * take its buffer past the bound: then each is written (or dropped) alone,
   * so the bound holds to one frame as it does for single events.
   */
  #writeBatch(session: ServerSession, frames: Buffer, batch: readonly BatchedEvent[]): boolean {
    const socket = session.socket;
    const bound = this.options.maxBufferedBytes;
    if (socket !== undefined && socket.writableLength + frames.length > bound) {
      if (!session.corked) return false;
      // This turn's corked bytes are not the client's backlog (see #admit).
      socket.uncork();
      socket.cork();
      if (socket.writableLength + frames.length > bound) return false;
    }
    // Not corked: this is the session's one write of the batch, corking would only cost a
    // buffered copy and an uncork. A later write this turn corks behind it, in order.
    const admitted = this.#admit(session, batch.length, false);
    if (admitted === Admission.Closed) return true;
    if (admitted === Admission.Dropped) {
      for (const item of batch) if (item.stats !== undefined) item.stats.dropped++;
      return true;
    }
    (session.socket as Socket).write(frames);
    this.#stats.deliveries += batch.length;
    for (const item of batch) if (item.stats !== undefined) item.stats.sent++;
    return true;
  }

  /**
   * Whether `events` frames may be written to a session now: not when it is
   * closed, nor past its buffer bound (counted as dropped, with the slow
   * consumer policy applied). With `cork`, corks the socket until the next
   * tick, so that the writes of this turn leave in one system call.
   */
  #admit(session: ServerSession, events: number, cork: boolean): Admission {
    const socket = session.socket;
    const ws = session.ws;
    if (socket === undefined || ws === undefined || ws.readyState !== WS_OPEN || !socket.writable) {
      return Admission.Closed;
    }
    if (session.corked && socket.writableLength > this.options.maxBufferedBytes) {
      // What is corked in this turn is not the client's backlog: hand it to the kernel before
      // measuring, or a burst larger than the bound is dropped even for a client reading at once.
      socket.uncork();
      socket.cork();
    }
    if (socket.writableLength > this.options.maxBufferedBytes) {
      session.dropped += events;
      this.#stats.dropped += events;
      if (this.options.slowConsumerPolicy === 'close') this.#closeSlowConsumer(session);
      return Admission.Dropped;
    }
    if (cork && !session.corked) {
      session.corked = true;
      socket.cork();
      this.#corked.push(session);
      if (!this.#uncorkScheduled) {
        this.#uncorkScheduled = true;
        process.nextTick(this.#uncorkAll);
      }
    }
    return Admission.Admitted;
  }

  readonly #uncorkAll = (): void => {
    this.#uncorkScheduled = false;
    const corked = this.#corked;
    this.#corked = [];
    for (const session of corked) {
      session.corked = false;
      session.socket?.uncork();
    }
  };

  #closeSlowConsumer(session: ServerSession): void {
    const ws = session.ws;
    if (ws === undefined || ws.readyState !== WS_OPEN) return;
    this.options.logger.debug({ sessionId: session.id }, 'pushwire: closing a slow consumer');
    session.policyClose = { code: 1008, reason: 'slow consumer' };
    ws.close(session.policyClose.code, session.policyClose.reason);
    // The close frame waits behind the unread data; a reader that stopped will not answer it.
    setTimeout(() => ws.terminate(), 1000).unref();
  }

  #pingAll(): void {
    // A round that runs late means this process stalled (a blocked event loop), not the clients:
    // their pongs may be waiting unread in the socket buffers, since timers run before I/O. Nobody
    // is judged on such a round; everyone is pinged again and judged on the next one.
    const now = performance.now();
    const elapsed = now - this.#lastPingAt;
    const stalled = elapsed > this.options.pingInterval * 1.5;
    this.#lastPingAt = now;
    if (stalled) {
      this.options.logger.warn(
        { lateMs: Math.round(elapsed - this.options.pingInterval) },
        'pushwire: keepalive round ran late (event loop blocked); no session terminated this round',
      );
    }
    for (const session of this.#sessions) {
      const ws = session.ws;
      if (ws === undefined) continue;
      if (!session.alive && !stalled) {
        this.options.logger.debug({ sessionId: session.id }, 'pushwire: keepalive timeout');
        ws.terminate();
        continue;
      }
      session.alive = false;
      try {
        ws.ping();
      } catch {
        ws.terminate();
      }
    }
  }

  // -------------------------------------------------------------------------
  // Publish

  /**
   * Publishes events to the topic, each through the publish phase. Rejects
   * with InvalidEventError (nothing published) or with a PubSubError once
   * the backend failed every retry.
   */
  async publish(options: PublishOptions, events: PushEvent[]): Promise<void> {
    if (this.#closing) throw new ServiceUnavailableError('The push middleware is closed');
    const prepared = events.map((event) => this.#prepare(event));
    if (this.#publishChain === undefined) {
      await Promise.all(
        prepared.map((p) =>
          this.#send(p.subject, encodePublication(this.#headers(p.subject, options), p.eventBytes)),
        ),
      );
      return;
    }
    for (const p of prepared) {
      const ctx: PublishContext = {
        event: p.event,
        publication: this.#headers(p.subject, options),
        options,
        subject: p.subject,
        state: {},
      };
      await this.#publishChain(ctx, (c) =>
        this.#send(c.subject, encodePublication(c.publication as PublicationHeaders, p.eventBytes)),
      );
    }
  }

  /**
   * The envelope's headers for a publication. Why: `publishWith({ trackingName })` is
   * documented as the publication's trackingName, but it never reached the envelope.
   */
  #headers(subject: string, options: PublishOptions): PublicationHeaders {
    const headers: PublicationHeaders = { topic: subject };
    if (typeof options.trackingName === 'string') headers.trackingName = options.trackingName;
    return headers;
  }

  #prepare(event: PushEvent): PreparedEvent {
    let timestamp: Date;
    let entityBytes: Uint8Array;
    try {
      timestamp = normalizeTimestamp(event);
      entityBytes = encodeEntity(event.entity);
      // Only an entity whose bytes say __proto__ is searched: the common one costs a byte scan.
      const path = mayHoldProtoKey(entityBytes) ? findProtoKey(event.entity) : undefined;
      if (path !== undefined) {
        throw new EventFormatError(
          `${path}: an entity may not hold a __proto__ key (MessagePack decoders refuse it)`,
        );
      }
    } catch (error) {
      const message =
        error instanceof EventFormatError ? error.message : 'the entity cannot be encoded';
      throw new InvalidEventError(message, { cause: error });
    }
    return {
      event: { ...event, timestamp },
      eventBytes: encodeMsgpackEvent(event.identity, event.type, entityBytes, timestamp),
      subject: publicationSubject(
        this.topic,
        event.identity,
        event.type,
        this.options.subjectHierarchies,
      ),
    };
  }

  async #send(subject: string, bytes: Uint8Array): Promise<void> {
    const retries = this.options.publishRetries;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.pubsub.publish(subject, bytes);
        this.#stats.published++;
        return;
      } catch (error) {
        // Before connect() there is nothing to wait for, and a refusal by the broker (a payload
        // over max_payload, a subject it does not allow) will not change: fail at once.
        const refused = error instanceof PubSubError && error.code === 'PUSH_PUBSUB';
        if (error instanceof NotConnectedError || refused || attempt >= retries) {
          this.#stats.publishFailures++;
          if (error instanceof NotConnectedError) throw error;
          throw new PubSubError(
            refused
              ? `publish refused by the backend: ${error.message}`
              : `publish failed after ${attempt + 1} attempts: ${(error as Error).message}`,
            'PUSH_PUBLISH_FAILED',
            { cause: error },
          );
        }
        this.#stats.publishRetries++;
        this.options.logger.debug(
          { attempt: attempt + 1, err: describeError(error) },
          'pushwire: publish failed, retrying',
        );
        await delay(this.options.publishRetryDelay * 2 ** attempt);
      }
    }
  }

  // -------------------------------------------------------------------------
  // Shutdown

  /**
   * Stops accepting sessions (503), unsubscribes, lets buffered frames flush
   * within `closeTimeout`, closes every session with 1001 and resolves.
   * Idempotent; never rejects.
   */
  close(): Promise<void> {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    const deadline = Date.now() + this.options.closeTimeout;
    const left = (): number => Math.max(0, deadline - Date.now());
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    try {
      await withTimeout(this.ready, left(), () => new Error('subscription still pending'));
    } catch {
      // Not subscribed: nothing to stop.
    }
    try {
      await this.#unsubscribe?.();
    } catch (error) {
      this.options.logger.warn({ err: describeError(error) }, 'pushwire: unsubscribe failed');
    }
    // Events already received finish their dispatch (bounded by the deadline).
    this.#flushBatch();
    await withTimeout(this.#dispatchTail, left(), () => new Error('dispatch pending')).catch(
      () => undefined,
    );
    this.#flushBatch();
    await withTimeout(
      Promise.all(this.#deferredWrites),
      left(),
      () => new Error('verdicts pending'),
    ).catch(() => undefined);
    this.#uncorkAll();
    const sessions = [...this.#sessions];
    // Each session is closed as soon as its own buffer drained: a client that stopped reading
    // must not use up the deadline of the others, which would then be terminated (1006)
    // instead of getting their 1001 close handshake.
    await Promise.all(
      sessions.map(async (s) => {
        await this.#drain(s, left());
        await this.#closeSession(s, left());
      }),
    );
  }

  #drain(session: ServerSession, ms: number): Promise<void> {
    const socket = session.socket;
    if (socket === undefined || socket.writableLength === 0 || !socket.writable) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        socket.off('drain', done);
        socket.off('close', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      socket.once('drain', done);
      socket.once('close', done);
    });
  }

  #closeSession(session: ServerSession, ms: number): Promise<void> {
    const ws = session.ws;
    if (ws === undefined || ws.readyState === 3) return Promise.resolve();
    return new Promise((resolve) => {
      // On timeout, terminate and still wait for 'close': it unregisters the session, so that
      // close() resolves with no session left (terminate destroys the socket; 'close' follows).
      const timer = setTimeout(() => ws.terminate(), ms);
      ws.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.close(1001, 'server shutting down');
    });
  }
}
