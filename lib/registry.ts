/**
 * The session registry: opening a session through the `session` plugin
 * chain, registering it once its transport is up, the push configs it
 * sends, error events, direct pushes, keepalive, and unregistering it when
 * it closes. The fan-out reads the set of sessions this module keeps.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import type { SessionContext } from './chain.js';
import {
  ForbiddenError,
  InvalidEventError,
  InvalidPushConfigError,
  PushError,
  ServiceUnavailableError,
  TooManyRequestsError,
  UnsupportedMediaTypeError,
} from './errors.js';
import { errorEventFrame, EventFrames } from './event-frames.js';
import type { FanOut } from './fan-out.js';
import type { Recovery } from './recovery.js';
import { describeError } from './logger.js';
import type { ResolvedOptions } from './options.js';
import {
  encodingFromParameter,
  JSON_MEDIA_TYPE,
  negotiateEncodings,
  UnsupportedEncodingError,
  type SessionEncodings,
} from './protocol/encoding.js';
import { normalizeTimestamp, WireEvent, wireEventFrom, type PushEvent } from './protocol/event.js';
import {
  decodePushConfigMessage,
  parsePushConfig,
  PushConfigError,
  SelectorPool,
  type PushConfig,
  type PushConfigLimits,
} from './protocol/push-config.js';
import { renewSessionToken, ServerSession, type SessionHost } from './session.js';
import { increment, type PushStats } from './stats.js';
import type { SessionTransport, TransportName } from './transport/contract.js';
import { sseBinder } from './transport/sse.js';
import { webSocketBinder } from './transport/websocket.js';

const NO_IDENTITIES: readonly string[] = [];
/** What an SSE session reads and writes: JSON only (docs/PROTOCOL.md section 10). */
const SSE_ENCODINGS: Readonly<SessionEncodings> = Object.freeze({
  read: JSON_MEDIA_TYPE,
  write: JSON_MEDIA_TYPE,
});

/** What the registry is built from. */
export interface SessionRegistryInit {
  options: ResolvedOptions;
  stats: PushStats;
  configLimits: PushConfigLimits;
  sessionChain: ((ctx: SessionContext, last: () => void) => Promise<void>) | undefined;
}

/** The sessions of one push server. */
export class SessionRegistry implements SessionHost {
  /** The open sessions (read by the fan-out; changed only here). */
  readonly sessions = new Set<ServerSession>();
  /** True once the server is closing: no session is opened or registered. */
  closing = false;
  readonly #sessions = this.sessions;
  readonly #options: ResolvedOptions;
  readonly #stats: PushStats;
  readonly #configLimits: PushConfigLimits;
  readonly #sessionChain: SessionRegistryInit['sessionChain'];
  /**
   * The compiled selectors of the sessions' configs, shared between equal ones (the fan-out
   * works out verdicts once per selector) and freed with the last session that holds each: a
   * reference is taken when a config is applied and given back when it is replaced or its
   * session closes. So selector memory is at most open sessions × maxPushConfigBytes.
   */
  readonly #selectors = new SelectorPool();
  /** Set by the server once the fan-out exists (the two refer to each other). */
  #fanOut!: FanOut;
  #recovery: Recovery | undefined;
  /** When the last keepalive round ran (performance.now()), to notice a stalled event loop. */
  #lastPingAt = performance.now();
  readonly #bindWebSocket = webSocketBinder<ServerSession>({
    message: (session, data, isBinary) =>
      this.#onMessage(session, data, isBinary, session.enableErrors),
    close: (session, code, reason) => this.#onClose(session, code, reason),
    error: (session, error) =>
      this.#options.logger.debug(
        { sessionId: session.id, err: describeError(error) },
        'pushwire: session socket error',
      ),
  });

  readonly #bindEventStream = sseBinder<ServerSession>({
    close: (session, code, reason) => this.#onClose(session, code, reason),
    error: (session, error) =>
      this.#options.logger.debug(
        { sessionId: session.id, err: describeError(error) },
        'pushwire: session socket error',
      ),
  });

  constructor(init: SessionRegistryInit) {
    this.#options = init.options;
    this.#stats = init.stats;
    this.#configLimits = init.configLimits;
    this.#sessionChain = init.sessionChain;
  }

  /**
   * Gives the registry the fan-out it flushes before error events and direct pushes, and,
   * with history on, the recovery that replays to sessions whose config carries `since`.
   */
  attach(fanOut: FanOut, recovery: Recovery | undefined): void {
    this.#fanOut = fanOut;
    this.#recovery = recovery;
  }

  /** Counts a refusal (for stats and logs). */
  recordRefusal(status: number, request: IncomingMessage, error: unknown): void {
    increment(this.#stats.sessionsRefused, status);
    this.#options.logger.debug(
      { status, clientIP: request.socket.remoteAddress, err: describeError(error) },
      'pushwire: session refused',
    );
  }

  /** Counts an attempt whose client left mid-handshake (so that every attempt is accounted for). */
  recordAbandoned(request: IncomingMessage): void {
    this.#stats.sessionsAbandoned++;
    this.#options.logger.debug(
      { clientIP: request.socket.remoteAddress },
      'pushwire: client left before the handshake completed',
    );
  }

  /**
   * Builds a session from an upgrade request (or, for `sse`, an event-stream
   * request) and runs the session phase. Resolves to the accepted session;
   * rejects with the PushError whose status the refusal must carry. An SSE
   * session's push config, from its `config` parameter, is checked after the
   * session plugins accepted it (InvalidPushConfigError: 400).
   */
  async openSession(
    request: IncomingMessage,
    transport: TransportName = 'websocket',
  ): Promise<ServerSession> {
    if (this.closing) throw new ServiceUnavailableError('The push server is shutting down');
    const origin = request.headers.origin;
    if (
      origin !== undefined &&
      this.#options.allowedOrigins &&
      !this.#options.allowedOrigins(origin)
    ) {
      throw new ForbiddenError(`Origin ${origin.slice(0, 200)} is not allowed`);
    }
    const query = new URL(request.url ?? '/', 'http://localhost').searchParams;
    const encodings =
      transport === 'sse' ? sseEncodings(query) : webSocketEncodings(request, query);
    const ip = (request as { ip?: unknown }).ip;
    const session = new ServerSession({
      id: randomUUID(),
      request,
      query,
      clientIP: typeof ip === 'string' ? ip : (request.socket.remoteAddress ?? ''),
      encodings,
      host: this,
      since: transport === 'sse' ? sseSince(request, query) : query.get('since'),
    });
    if (this.#sessionChain !== undefined) await this.#runSessionChain(session, request);
    // Decoded only once the chain accepted: nobody unauthenticated gets a config compiled.
    session.initialConfig = this.#requestConfig(query.get('config'));
    return session;
  }

  /** Runs the `session` plugin chain; throws the refusal's PushError. */
  async #runSessionChain(session: ServerSession, request: IncomingMessage): Promise<void> {
    if (this.#sessionChain === undefined) return;
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
    if (this.closing) throw new ServiceUnavailableError('The push server is shutting down');
  }

  /** The push config of a request's `config` parameter (JSON, either transport); throws InvalidPushConfigError. */
  #requestConfig(text: string | null): PushConfig | undefined {
    if (text === null) return undefined;
    try {
      return parsePushConfig(
        decodePushConfigMessage(Buffer.from(text, 'utf8'), JSON_MEDIA_TYPE),
        this.#configLimits,
      );
    } catch (error) {
      if (!(error instanceof PushConfigError)) throw error;
      this.#stats.invalidConfigs++;
      throw new InvalidPushConfigError(error.message, { data: error.data });
    }
  }

  /**
   * Starts an SSE session whose session phase accepted it: the stream's head
   * goes out on `res`, then {@link #start} as for a WebSocket.
   */
  startEventStream(session: ServerSession, res: ServerResponse): void {
    const socket = res.socket as Socket;
    this.#start(session, this.#bindEventStream(session, socket, res));
  }

  /** Registers a WebSocket session whose handshake completed. */
  startSession(session: ServerSession, ws: WebSocket, socket: Socket): void {
    this.#start(session, this.#bindWebSocket(session, ws, socket, session.binary));
  }

  /**
   * Starts a session whose transport is up: the config of its request (the
   * `config` parameter) applies before anything is written, and a resume
   * (`since`, Last-Event-ID) replays at once with it. A resuming WebSocket
   * without one is held until its first push config (Recovery#hold).
   */
  #start(session: ServerSession, transport: SessionTransport): void {
    if (this.closing) {
      session.initialConfig = undefined;
      transport.close(1001, 'server shutting down');
      return;
    }
    const config = session.initialConfig;
    session.initialConfig = undefined;
    if (config !== undefined) {
      session.config = this.#selectors.acquire(config);
      if (session.mergeParameters(config.parameters)) {
        renewSessionToken(session, this.#options.plugins, this.#options.logger);
      }
    }
    // An SSE client sends nothing after its request, so it never has a config to wait for.
    const waitForConfig = config === undefined && transport.name === 'websocket';
    this.#register(session, transport, waitForConfig);
    const since = session.since ?? config?.input.since;
    if (!waitForConfig && since !== undefined && this.#recovery !== undefined) {
      this.#recovery.begin(session, since);
    }
  }

  /**
   * Counts and announces a session whose transport is up. `holdForConfig`: a `since` in the URL
   * holds live events until the first push config arrives (WebSocket), see Recovery#hold.
   */
  #register(session: ServerSession, transport: SessionTransport, holdForConfig: boolean): void {
    session.transport = transport;
    session.format = transport.format;
    session.open = true;
    if (holdForConfig && session.since !== undefined && this.#recovery !== undefined) {
      this.#recovery.hold(session, session.since);
    }
    this.#sessions.add(session);
    this.#stats.sessionsAccepted++;
    // Kept per encoding and transport here (and in #onClose) so that metrics never walk the sessions.
    const byEncoding = this.#stats.sessionsByEncoding;
    byEncoding[session.encodings.write] = (byEncoding[session.encodings.write] ?? 0) + 1;
    const byTransport = this.#stats.sessionsByTransport;
    byTransport[transport.name] = (byTransport[transport.name] ?? 0) + 1;
    this.#options.logger.debug(
      {
        sessionId: session.id,
        clientIP: session.clientIP,
        encoding: session.encodings.write,
        transport: transport.name,
      },
      'pushwire: session started',
    );
    for (const plugin of this.#options.plugins) {
      if (plugin.onSessionStart) {
        this.#runHook(plugin.name, 'onSessionStart', () => plugin.onSessionStart?.(session));
      }
    }
  }

  #runHook(name: string | undefined, hook: string, fn: () => void | Promise<void>): void {
    const report = (error: unknown): void =>
      this.#options.logger.warn(
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

  /** Unregisters a session whose transport closed. */
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
    const name = session.transportName;
    this.#stats.sessionsByTransport[name] = (this.#stats.sessionsByTransport[name] ?? 1) - 1;
    this.#options.logger.debug(
      { sessionId: session.id, code, reason, dropped: session.dropped },
      'pushwire: session closed',
    );
    for (const plugin of this.#options.plugins) {
      if (plugin.onSessionStop) {
        this.#runHook(plugin.name, 'onSessionStop', () =>
          plugin.onSessionStop?.(session, { code, reason }),
        );
      }
    }
  }

  /** A message from the client: a push config (PROTOCOL.md section 4). */
  #onMessage(
    session: ServerSession,
    data: Buffer | ArrayBuffer | Buffer[],
    _isBinary: boolean,
    enableErrors: boolean,
  ): void {
    // Decoding a config and compiling its filters costs CPU: bound how often a client can ask.
    const limit = this.#options.maxConfigsPerSecond;
    if (limit > 0) {
      const now = Date.now();
      if (now - session.configWindowStart >= 1000) {
        session.configWindowStart = now;
        session.configCount = 0;
      }
      if (++session.configCount > limit) {
        this.#options.logger.debug(
          { sessionId: session.id },
          'pushwire: push config rate exceeded',
        );
        if (!enableErrors) session.close(1008, 'too many push configs');
        else if (session.configCount === limit + 1) {
          // One error event per window: answering every excess message would amplify the flood.
          const message = `More than ${limit} push configs per second; this one was ignored`;
          this.sendError(session, new TooManyRequestsError(message, { data: { limit } }));
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
      this.#options.logger.debug(
        { sessionId: session.id, err: describeError(error) },
        'pushwire: invalid push config',
      );
      if (enableErrors) {
        session.errorState = true;
        const err = new InvalidPushConfigError(error.message, { data: error.data });
        this.sendError(session, err);
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
      renewSessionToken(session, this.#options.plugins, this.#options.logger);
    }
    // Without history a `since` is ignored, as any key the server does not know: the client sees
    // no recovery frame, which tells it this server keeps no history.
    const recovery = this.#recovery;
    if (recovery !== undefined) {
      const since = session.config.input.since ?? recovery.waitingSince(session);
      if (since !== undefined) recovery.begin(session, since);
    }
  }

  /** Sends an error event (PROTOCOL.md section 6) to one session. */
  sendError(session: ServerSession, error: PushError): void {
    // Events received before this error go first.
    this.#fanOut.flush();
    const event = new WireEvent({
      identity: '',
      type: 'error',
      timestamp: new Date(),
      entityEncoding: 'application/msgpack',
      entity: error.toErrorObject(),
    });
    this.#fanOut.write(session, errorEventFrame(event, session.format), undefined);
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
    this.#fanOut.flush();
    for (const event of prepared) {
      if (event.timestamp.getTime() < session.startMs) continue;
      if (session.config !== undefined && !session.config.allows(event, NO_IDENTITIES)) continue;
      const frame = new EventFrames(event).for(session.format);
      if (frame === undefined) throw new InvalidEventError('the event entity cannot be encoded');
      this.#fanOut.write(session, frame, undefined);
    }
  }

  /** One keepalive round over every session (every `pingInterval`). */
  keepalive(): void {
    // A round that runs late means this process stalled (a blocked event loop), not the clients:
    // their pongs may be waiting unread in the socket buffers, since timers run before I/O. Nobody
    // is judged on such a round; everyone is probed again and judged on the next one.
    const now = performance.now();
    const elapsed = now - this.#lastPingAt;
    const stalled = elapsed > this.#options.pingInterval * 1.5;
    this.#lastPingAt = now;
    if (stalled) {
      this.#options.logger.warn(
        { lateMs: Math.round(elapsed - this.#options.pingInterval) },
        'pushwire: keepalive round ran late (event loop blocked); no session terminated this round',
      );
    }
    for (const session of this.#sessions) session.transport?.keepalive(!stalled);
  }
}

/** A WebSocket session's encodings, from its handshake; 415 for one pushwire does not speak. */
function webSocketEncodings(request: IncomingMessage, query: URLSearchParams): SessionEncodings {
  try {
    return negotiateEncodings(
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
}

/** An SSE session's encodings: JSON; asking for MessagePack (or anything else) is a 415. */
function sseEncodings(query: URLSearchParams): SessionEncodings {
  const asked = query.get('encoding');
  if (asked !== null) {
    let encoding;
    try {
      encoding = encodingFromParameter(asked);
    } catch (error) {
      if (error instanceof UnsupportedEncodingError) {
        throw new UnsupportedMediaTypeError(error.message);
      }
      throw error;
    }
    if (encoding !== JSON_MEDIA_TYPE) {
      throw new UnsupportedMediaTypeError(
        'MessagePack is not offered over Server-Sent Events: use a WebSocket, or encoding=json',
      );
    }
  }
  return SSE_ENCODINGS;
}

/**
 * Where an SSE session resumes from: the Last-Event-ID header (what an EventSource sends when
 * it reconnects, newer than its URL's), then `lastEventId`, then `since` (section 10).
 */
function sseSince(request: IncomingMessage, query: URLSearchParams): string | null {
  const header = request.headers['last-event-id'];
  if (typeof header === 'string' && header !== '') return header;
  return query.get('lastEventId') || query.get('since');
}
