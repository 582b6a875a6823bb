/**
 * One push session: what plugins see of it (bahamut's `Session`), its
 * push config, its outbound buffer and its keepalive state.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import type { Plugin } from './chain.js';
import { PushError } from './errors.js';
import { describeError, type Logger } from './logger.js';
import { MSGPACK_MEDIA_TYPE, type SessionEncodings } from './protocol/encoding.js';
import type { PushEvent } from './protocol/event.js';
import type { PushConfig } from './protocol/push-config.js';
import { FrameFormat, type SessionTransport, type TransportName } from './transport/contract.js';

/** A session as plugins and the application see it. */
export interface PushSession {
  /** A unique id (a random UUID). */
  readonly id: string;
  /**
   * bahamut's `Token()`, which is `Parameter("token")`: the `token` query parameter, or the
   * one a later push config set in its `parameters` (a renewal, as Go clients send it), or
   * '' when there is none. Plugins with an `onTokenRenewal` hook are told of each change.
   */
  readonly token: string;
  /**
   * The first value of a parameter, or '' when it has none (bahamut's `Parameter`, so that a
   * Go check `== ""` ports as `=== ''`; test presence with `parameters(name).length`). The
   * query's parameters, each replaced by the values the latest push config that named it
   * gave: config parameters are merged for the life of the session, not only while that
   * config is the current one.
   */
  parameter(name: string): string;
  /** Every value of a parameter, merged as {@link PushSession.parameter} says; [] when absent. */
  parameters(name: string): readonly string[];
  /** A request header (case-insensitive), as sent in the upgrade request. */
  header(name: string): string | undefined;
  /** A cookie of the upgrade request. */
  cookie(name: string): string | undefined;
  /** The claims as bahamut writes them: `key=value` strings. */
  readonly claims: readonly string[];
  /** The claims as a map (the last value of a repeated key wins); frozen, and nothing is inherited. */
  readonly claimsMap: Readonly<Record<string, string>>;
  /** Replaces the claims (an auth plugin does this); each should be `key=value`. */
  setClaims(claims: readonly string[]): void;
  /** The last valid push config, if the client sent one. */
  readonly pushConfig: PushConfig | undefined;
  /** Application data attached by plugins. */
  readonly metadata: unknown;
  /** Attaches application data. */
  setMetadata(metadata: unknown): void;
  /** The client's address: the socket's, or the forwarded one when Express trusts the proxy. */
  readonly clientIP: string;
  /** The TLS peer certificate, when the client presented one. */
  readonly peerCertificate: PeerCertificate | undefined;
  /** When the session was created; older events are not sent to it. */
  readonly startTime: Date;
  /** Aborted when the session ends. */
  readonly signal: AbortSignal;
  /** The encodings it reads and writes. */
  readonly encodings: SessionEncodings;
  /** True while the session's connection is open. */
  readonly isOpen: boolean;
  /** The transport the session runs over: a WebSocket, or Server-Sent Events (PROTOCOL.md section 10). */
  readonly transportName: TransportName;
  /** Events dropped because the client read too slowly. */
  readonly droppedEvents: number;
  /**
   * Sends events to this session only, through steps 2 and 3 of dispatch
   * (timestamp and push config) and its encoding, without the topic. Throws
   * InvalidEventError for a malformed event; does nothing once closed.
   */
  directPush(...events: PushEvent[]): void;
  /** Closes the session (default 1000; a plugin closing by policy uses 1008). */
  close(code?: number, reason?: string): void;
}

/**
 * What the fan-out sees of a session's replay in progress: where it hands
 * the batches it would have written (the fan-out's BatchedEvent items).
 */
export interface ResumeHold {
  hold(batch: readonly object[]): void;
}

/** Parses a Cookie header into a map; malformed pairs are skipped. */
export function parseCookies(header: string | undefined): Map<string, string> {
  const cookies = new Map<string, string>();
  if (header === undefined) return cookies;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    const name = part.slice(0, eq).trim();
    let value = part.slice(eq + 1).trim();
    if (value.startsWith('"') && value.endsWith('"') && value.length >= 2)
      value = value.slice(1, -1);
    try {
      value = decodeURIComponent(value);
    } catch {
      // Keep the raw value: a cookie that is not URI-encoded is still a cookie.
    }
    if (!cookies.has(name)) cookies.set(name, value);
  }
  return cookies;
}

/** The prototype of every claims map: empty, and its own prototype is null. */
const CLAIMS_PROTOTYPE: object = Object.freeze(Object.create(null) as object);

/** Splits `key=value` claims into a map. */
export function claimsToMap(claims: readonly string[]): Record<string, string> {
  // Inheriting from an empty null-prototype object, not null itself: no key resolves to
  // Object.prototype's members either way, but V8 makes an Object.create(null) object a
  // dictionary, and a shouldDispatch reading `claimsMap.org` for every (event, session) then
  // pays a hash lookup; this one keeps fast properties, shaped alike for alike claims.
  const map = Object.create(CLAIMS_PROTOTYPE) as Record<string, string>;
  for (const claim of claims) {
    const eq = claim.indexOf('=');
    if (eq === -1) map[claim] = '';
    else map[claim.slice(0, eq)] = claim.slice(eq + 1);
  }
  return map;
}

/**
 * The claims of a session no plugin set claims on, shared by all of them (frozen, as the
 * claims `setClaims` keeps): an empty array and an empty map of its own were kept for the whole
 * life of every idle session. The map comes from claimsToMap so that it has the same prototype
 * as every other claims map.
 */
const NO_CLAIMS: readonly string[] = Object.freeze([]);
const NO_CLAIMS_MAP: Readonly<Record<string, string>> = Object.freeze(claimsToMap([]));

/**
 * A flat copy of a string. Why: `crypto.randomUUID()` builds its result by concatenation, and V8
 * keeps such a string as a tree of 14 rope nodes (~450 bytes) until something flattens it; an
 * idle session's id never is, so each id cost more than the rest of its own fields together.
 */
function flatCopy(value: string): string {
  return Buffer.from(value, 'utf8').toString('utf8');
}

/** What a session needs from its server. */
export interface SessionHost {
  /** Sends events to one session (directPush). */
  directPush(session: ServerSession, events: PushEvent[]): void;
}

/** What a session is built from, before the handshake. */
export interface SessionInit {
  id: string;
  request: IncomingMessage;
  query: URLSearchParams;
  clientIP: string;
  encodings: SessionEncodings;
  host: SessionHost;
  /** Where the session resumes from (docs/PROTOCOL.md sections 9 and 10), or null. */
  since: string | null;
}

/** The server's side of a session. Not exported from the package: plugins see {@link PushSession}. */
export class ServerSession implements PushSession {
  readonly id: string;
  readonly clientIP: string;
  /** When the session was created, in milliseconds: what the hot path compares with. */
  readonly startMs = Date.now();
  readonly encodings: SessionEncodings;
  /** True when events are written as binary MessagePack frames. */
  readonly binary: boolean;
  /**
   * What the session keeps of its upgrade request: the headers and the socket. The request
   * itself (and what Express hung on it) is not kept, so an idle session costs a few KiB.
   * The headers are kept as their JSON text, parsed when a plugin asks for one: an object with
   * a string per header cost an idle session about twice the bytes of the headers themselves
   * (issue 15's heap snapshots), and headers are read in the session phase, rarely after.
   */
  readonly #headers: string;
  readonly #requestSocket: Partial<TLSSocket>;
  /** True when the client sent `enableErrors` (section 4). */
  readonly enableErrors: boolean;
  /** The query string, parsed when a plugin asks: idle sessions do not keep a parsed copy. */
  readonly #search: string;
  readonly #host: SessionHost;
  /** Created when a plugin reads `signal`, for the same reason. */
  #abort: AbortController | undefined;
  #ended = false;
  /** The Date of `startTime`, made when first read: most sessions are never asked (~100 bytes each). */
  #startTime: Date | undefined;
  #claims: readonly string[] = NO_CLAIMS;
  #claimsMap: Readonly<Record<string, string>> = NO_CLAIMS_MAP;
  #metadata: unknown;
  #cookies: Map<string, string> | undefined;
  /** `parameter('token')`, kept because plugins read it per (event, session). */
  #token: string;
  /**
   * The parameters push configs set, each replacing the query's values of that name for the
   * rest of the session (bahamut merges them into the session's parameters). Made by the
   * first config that has parameters: most sessions never need it.
   */
  #merged: Map<string, readonly string[]> | undefined;
  /** Token renewals are verified one after the other, so the last one sent has the last word. */
  renewalTail: Promise<void> | undefined;

  /** The last valid push config. */
  config: PushConfig | undefined;
  /** Section 4: after an invalid config (with enableErrors) the session gets nothing. */
  errorState = false;
  /** maxConfigsPerSecond: when the current one-second window started (ms), and configs counted in it. */
  configWindowStart = 0;
  configCount = 0;
  /** Events dropped for this session because its client read too slowly. */
  dropped = 0;
  /** True while this session's socket is corked until the end of the turn. */
  corked = false;
  /** The `since` of the session's URL (docs/PROTOCOL.md, "Recovery"), if any. */
  readonly since: string | undefined;
  /** True once an event was written to this session (a later `since` cannot be honoured in order). */
  received = false;
  /**
   * After a replay: live events at or before this position were sent by the replay and are
   * dropped for this session until a later one passes (fan-out.ts).
   */
  floor: string | undefined;
  /** Set while the session replays history: live events are held until it is done (recovery.ts). */
  resume: ResumeHold | undefined;
  /** Pending async predicate checks, chained so one session's events stay in order. */
  asyncTail: Promise<void> | undefined;
  /** The connection events are written to; set once the handshake completed. */
  transport: SessionTransport | undefined;
  /** The config of the session's request (`config` parameter), between the session phase and its start. */
  initialConfig: PushConfig | undefined;
  /**
   * The frame format of the transport, copied here at registration so that the fan-out's loop
   * reads a field of the session rather than calling through the transport per event.
   */
  format: FrameFormat = FrameFormat.WebSocketJson;
  /** True from the handshake until the close. */
  open = false;
  /**
   * The close the server sent this session by policy (1008 for a slow consumer), recorded
   * instead of the one the socket reports: the close frame waits behind the unread data, and
   * the terminate() that follows makes the socket say 1006.
   */
  policyClose: { readonly code: number; readonly reason: string } | undefined;

  constructor(init: SessionInit) {
    this.id = flatCopy(init.id);
    // Flat: JSON.stringify builds long results as a tree of parts, each kept alive by it.
    this.#headers = flatCopy(JSON.stringify(init.request.headers));
    this.#requestSocket = init.request.socket as Partial<TLSSocket>;
    this.enableErrors = init.query.has('enableErrors');
    this.#search = init.query.toString();
    this.#host = init.host;
    this.clientIP = init.clientIP;
    this.encodings = init.encodings;
    this.binary = init.encodings.write === MSGPACK_MEDIA_TYPE;
    this.since = init.since?.slice(0, 200) ?? undefined;
    this.#token = init.query.get('token') ?? '';
  }

  get token(): string {
    return this.#token;
  }

  get transportName(): TransportName {
    return this.transport?.name ?? 'websocket';
  }

  get startTime(): Date {
    return (this.#startTime ??= new Date(this.startMs));
  }

  parameter(name: string): string {
    const merged = this.#merged?.get(name);
    if (merged !== undefined) return merged[0] ?? '';
    return new URLSearchParams(this.#search).get(name) ?? '';
  }

  parameters(name: string): readonly string[] {
    return this.#merged?.get(name) ?? new URLSearchParams(this.#search).getAll(name);
  }

  /**
   * Merges the parameters of a valid push config into the session's, for its life (bahamut):
   * each name given replaces that name's values, the others keep theirs. Answers true when
   * `token` changed, so that the caller runs the renewal hooks ({@link renewSessionToken}).
   */
  mergeParameters(parameters: Readonly<Record<string, readonly string[]>>): boolean {
    const names = Object.keys(parameters);
    if (names.length === 0) return false;
    this.#merged ??= new Map();
    for (const name of names) this.#merged.set(name, parameters[name] ?? []);
    const token = this.parameter('token');
    if (token === this.#token) return false;
    this.#token = token;
    return true;
  }

  header(name: string): string | undefined {
    const headers = JSON.parse(this.#headers) as IncomingHttpHeaders;
    const key = name.toLowerCase();
    // Own headers only: the parsed copy inherits from Object.prototype (`constructor`…).
    if (!Object.hasOwn(headers, key)) return undefined;
    const value = headers[key];
    return Array.isArray(value) ? value.join(', ') : value;
  }

  cookie(name: string): string | undefined {
    this.#cookies ??= parseCookies(this.header('cookie'));
    return this.#cookies.get(name);
  }

  get claims(): readonly string[] {
    return this.#claims;
  }

  get claimsMap(): Readonly<Record<string, string>> {
    return this.#claimsMap;
  }

  setClaims(claims: readonly string[]): void {
    if (!Array.isArray(claims) || !claims.every((c) => typeof c === 'string')) {
      throw new TypeError('claims must be a list of key=value strings');
    }
    this.#claims = Object.freeze([...claims]);
    this.#claimsMap = Object.freeze(claimsToMap(this.#claims));
  }

  get pushConfig(): PushConfig | undefined {
    return this.config;
  }

  get metadata(): unknown {
    return this.#metadata;
  }

  setMetadata(metadata: unknown): void {
    this.#metadata = metadata;
  }

  get peerCertificate(): PeerCertificate | undefined {
    const socket = this.#requestSocket;
    if (typeof socket.getPeerCertificate !== 'function') return undefined;
    const cert = socket.getPeerCertificate();
    return cert && Object.keys(cert).length > 0 ? cert : undefined;
  }

  get signal(): AbortSignal {
    if (this.#abort === undefined) {
      this.#abort = new AbortController();
      if (this.#ended) this.#abort.abort();
    }
    return this.#abort.signal;
  }

  get isOpen(): boolean {
    return this.open;
  }

  get droppedEvents(): number {
    return this.dropped;
  }

  directPush(...events: PushEvent[]): void {
    this.#host.directPush(this, events);
  }

  close(code = 1000, reason = ''): void {
    this.transport?.close(code, reason);
  }

  /** Ends the session's signal; called once when the socket closes. */
  abort(): void {
    this.open = false;
    this.#ended = true;
    this.#abort?.abort();
  }
}

/**
 * Tells the plugins with an `onTokenRenewal` hook, in registration order, that a push config
 * changed the session's token (`parameters.token`, as Go clients renew it). A hook that throws
 * or rejects ends the session: with the thrown PushError's close code (1008 for an
 * UnauthorizedError), else 1008, and a reason that is the error's message only for a
 * PushError (a plain error's text may quote the token). Renewals of one session run one after
 * the other, each with the token it brought. Never throws; nothing is left unhandled.
 */
export function renewSessionToken(
  session: ServerSession,
  plugins: readonly Plugin[],
  logger: Logger,
): void {
  const hooks = plugins.filter((plugin) => typeof plugin.onTokenRenewal === 'function');
  if (hooks.length === 0) return;
  const token = session.token;
  const run = async (): Promise<void> => {
    for (const plugin of hooks) {
      if (!session.isOpen) return;
      try {
        await plugin.onTokenRenewal?.(session, token);
      } catch (error) {
        logger.debug(
          { plugin: plugin.name, sessionId: session.id, err: describeError(error) },
          'pushwire: token renewal refused, closing',
        );
        if (error instanceof PushError) session.close(error.closeCode, error.message);
        else session.close(1008, 'token renewal refused');
        return;
      }
    }
  };
  session.renewalTail = (session.renewalTail ?? Promise.resolve()).then(run, run);
}
