/**
 * The push client: one logical session over as many WebSockets (or
 * Server-Sent Events streams, PROTOCOL.md section 10) as it takes. It
 * connects, resends its push config on every (re)connection, decodes events
 * in either encoding, reconnects with backoff, and stops for good on a
 * 401/403 refusal or an explicit close(). Standard APIs only (WebSocket,
 * fetch, URL, TextDecoder), so the same code runs in browsers and in Node;
 * what differs per platform (the WebSocket class, how a refusal is read)
 * comes in through {@link Transport}.
 */
import {
  backoffDelay,
  realScheduler,
  DEFAULT_MAX_DELAY,
  DEFAULT_MIN_DELAY,
  type Scheduler,
} from './backoff.js';
import { errorObjectsOf, PushConfigError, PushRefusedError, type ErrorObject } from './errors.js';
import { openEventStream } from './sse.js';
import {
  decodeEvent,
  encodeConfig,
  isPlainJson,
  RECOVERY_TYPE,
  type PushConfig,
  type ReceivedEvent,
  type RecoveryInfo,
} from './protocol.js';

import type {
  WebSocketLike,
  WebSocketConstructor,
  PushClientState,
  PushClientEventMap,
  PushClientListener,
  PushClientOptions,
  PushClient,
  Transport,
} from './types.js';

export type {
  WebSocketLike,
  WebSocketConstructor,
  PushTransport,
  PushClientState,
  OpenInfo,
  CloseInfo,
  ReconnectInfo,
  PushClientEventMap,
  PushClientListener,
  PushClientOptions,
  PushClient,
  Transport,
} from './types.js';

/** The handlers the client sets, typed as it uses them. */
interface SocketHandlers {
  onopen: () => void;
  onmessage: (event: { data: unknown }) => void;
  onclose: (event: { code: number; reason: string }) => void;
  onerror: () => void;
}

/** A connection that stayed open this long was healthy: the next retry starts from `minDelay`. */
const HEALTHY_AFTER_MS = 5_000;
/** Statuses after which retrying cannot help until something changes (a token, a permission). */
/**
 * Most characters a config may take in a resuming WebSocket's URL, once
 * percent-encoded: well under the 8 KiB request line of common proxies and
 * Node's 16 KiB of headers. A larger config goes as the first frame.
 */
const URL_CONFIG_MAX = 4096;

const FINAL_STATUSES = new Set([401, 403]);

interface Sink {
  push(event: ReceivedEvent): void;
  end(error?: Error): void;
}

/** Rethrows outside the client's call stack, so a faulty listener cannot break it. */
function reportLater(error: unknown): void {
  const report = (globalThis as { reportError?: (error: unknown) => void }).reportError;
  if (typeof report === 'function') report(error);
  else
    setTimeout(() => {
      throw error;
    }, 0);
}

/** The error for a push config the server rejected: an error event, or a 400 over SSE. */
function rejected(object: ErrorObject | undefined): PushConfigError {
  return new PushConfigError(
    `the server rejected the push config: ${object?.description ?? 'invalid'}`,
    object,
  );
}

/** Parses a response body as JSON when it is JSON, else keeps the text. */
export function parseBody(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/** The endpoint URL with a ws: or wss: scheme; relative URLs resolve against the page. */
function endpointUrl(input: string | URL): URL {
  const base = (globalThis as { location?: { href?: string } }).location?.href;
  const url = new URL(String(input), base);
  if (url.protocol === 'http:') url.protocol = 'ws:';
  else if (url.protocol === 'https:') url.protocol = 'wss:';
  else if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
    throw new TypeError(`a push endpoint URL is ws:, wss:, http: or https:, not ${url.protocol}`);
  }
  return url;
}

class Client implements PushClient {
  readonly #endpoint: URL;
  readonly #options: PushClientOptions;
  readonly #transport: Transport;
  readonly #scheduler: Scheduler;
  readonly #listeners = new Map<string, Set<(payload: never) => void>>();
  readonly #sinks = new Set<Sink>();
  #state: PushClientState = 'closed';
  /** The position of the last event received (history on), the `since` of the next connection. */
  #position: string | undefined;
  #socket: WebSocketLike | undefined;
  #timer: unknown;
  /** Failed attempts since the last healthy connection: the exponent of the backoff. */
  #failures = 0;
  /** Bumped by each attempt and by close(): async work of an older generation is stale. */
  #generation = 0;
  #config: PushConfig | undefined;
  #configFrame: string | Uint8Array | undefined;
  /** The config as JSON text when it can travel in a URL (always in JSON; in MessagePack when plain JSON). */
  #configText: string | undefined;
  /** The refusal that stopped the client, for iterators created afterwards. */
  #refusal: PushRefusedError | undefined;
  /** The next attempt is an SSE stream: transport `sse`, or `auto` after a WebSocket failed. */
  #sse: boolean;
  /** `auto`, and nothing has opened yet: a WebSocket that fails to open is followed by SSE. */
  #probing: boolean;

  constructor(url: string | URL, options: PushClientOptions, transport: Transport) {
    this.#endpoint = endpointUrl(url);
    this.#options = options;
    if (typeof options.since === 'string' && options.since !== '') this.#position = options.since;
    this.#transport = transport;
    this.#scheduler = options.scheduler ?? realScheduler;
    if (
      options.encoding !== undefined &&
      options.encoding !== 'json' &&
      options.encoding !== 'msgpack'
    ) {
      throw new TypeError(`encoding is 'json' or 'msgpack', not ${String(options.encoding)}`);
    }
    const mode = options.transport ?? 'websocket';
    if (mode !== 'websocket' && mode !== 'sse' && mode !== 'auto') {
      throw new TypeError(`unknown transport ${String(mode)}`);
    }
    this.#sse = mode === 'sse';
    this.#probing = mode === 'auto';
    if (mode !== 'websocket') {
      // PROTOCOL.md section 10: the server refuses MessagePack streams with 415, which would
      // only show at the first connection; say it here, where the mistake is.
      if (options.encoding === 'msgpack') {
        throw new TypeError(`transport ${mode}: SSE is JSON only`);
      }
      if (typeof fetch !== 'function') throw new TypeError(`transport ${mode} needs fetch`);
    }
    if (mode !== 'sse' && this.#webSocketClass() === undefined) {
      throw new TypeError(
        'no WebSocket class: pass options.WebSocket, or import pushwire/client/node in Node < 22',
      );
    }
    if (options.headers !== undefined && transport.open === undefined && mode !== 'sse') {
      throw new TypeError(
        "headers: a browser's WebSocket cannot send request headers; use token or parameters, or transport 'sse' (in Node, import pushwire/client/node)",
      );
    }
    if (options.WebSocket !== undefined) transport.checkWebSocket?.(options.WebSocket);
    this.connect();
  }

  /** The position of the last event received, when the server keeps history (section 9). */
  get position(): string | undefined {
    return this.#position;
  }

  get state(): PushClientState {
    return this.#state;
  }

  get transport(): 'websocket' | 'sse' {
    return this.#sse ? 'sse' : 'websocket';
  }

  get config(): PushConfig | undefined {
    return this.#config;
  }

  on<K extends keyof PushClientEventMap>(type: K, listener: PushClientListener<K>): () => void {
    let set = this.#listeners.get(type);
    if (set === undefined) this.#listeners.set(type, (set = new Set()));
    const entry = listener as (payload: never) => void;
    set.add(entry);
    return () => void set.delete(entry);
  }

  setConfig(config: PushConfig): void {
    // Encoded once, now, so that a config that cannot be encoded throws here and not on reconnect.
    const frame = encodeConfig(config, this.#options.encoding ?? 'json');
    this.#config = config;
    this.#configFrame = frame;
    this.#configText =
      typeof frame === 'string' ? frame : isPlainJson(config) ? JSON.stringify(config) : undefined;
    if (!this.#sse) {
      if (this.#state === 'open') this.#sendConfig();
    } else if (this.#state === 'reconnecting') {
      this.connect();
    } else if (this.#state === 'open' || this.#state === 'connecting') {
      // PROTOCOL.md section 10: a stream's config is fixed; a new stream resumes from the last
      // position (nothing lost with history on). The old one is closed first, not after the new
      // one opens: a limit of one session per token would refuse the new one, and without
      // history events it still delivered would come twice.
      const socket = this.#socket;
      const generation = ++this.#generation;
      this.#socket = undefined;
      if (socket !== undefined) {
        (socket as unknown as SocketHandlers).onclose = () => undefined;
        socket.close(1000);
        const opened = this.#state === 'open';
        this.#state = 'connecting';
        this.#emit('close', { code: 1000, reason: '', opened, willReconnect: true });
      }
      // A listener that called close() (or connect()) meanwhile has taken over.
      if (generation === this.#generation) void this.#open();
    }
  }

  connect(): void {
    if (this.#state === 'open' || this.#state === 'connecting') return;
    if (this.#state === 'reconnecting') this.#scheduler.clearTimeout(this.#timer);
    else this.#failures = 0;
    this.#refusal = undefined;
    void this.#open();
  }

  close(): void {
    if (this.#state === 'closed') return;
    this.#stop('closed');
    this.#socket?.close(1000);
    this.#socket = undefined;
  }

  events(): AsyncIterableIterator<ReceivedEvent> {
    const queue: ReceivedEvent[] = [];
    const waiting: Array<{
      resolve: (result: IteratorResult<ReceivedEvent>) => void;
      reject: (error: Error) => void;
    }> = [];
    let ended = false;
    let failure: Error | undefined;
    const sink: Sink = {
      push(event) {
        const next = waiting.shift();
        if (next) next.resolve({ value: event, done: false });
        else queue.push(event);
      },
      end(error) {
        ended = true;
        failure = error;
        for (const next of waiting.splice(0)) {
          if (failure) next.reject(failure);
          else next.resolve({ value: undefined, done: true });
          failure = undefined;
        }
      },
    };
    if (this.#state === 'closed') sink.end();
    else if (this.#state === 'refused') sink.end(this.#refusal);
    else this.#sinks.add(sink);
    const sinks = this.#sinks;
    return {
      next() {
        const event = queue.shift();
        if (event !== undefined) return Promise.resolve({ value: event, done: false });
        if (ended) {
          const error = failure;
          failure = undefined;
          return error ? Promise.reject(error) : Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
      },
      return() {
        sinks.delete(sink);
        queue.length = 0;
        sink.end();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  [Symbol.asyncIterator](): AsyncIterator<ReceivedEvent> {
    return this.events();
  }

  #webSocketClass(): WebSocketConstructor | undefined {
    return (
      this.#options.WebSocket ??
      this.#transport.WebSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
    );
  }

  #emit<K extends keyof PushClientEventMap>(type: K, payload: PushClientEventMap[K]): void {
    const set = this.#listeners.get(type);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        (listener as PushClientListener<K>)(payload);
      } catch (error) {
        reportLater(error);
      }
    }
  }

  #sendConfig(): void {
    if (this.#configFrame === undefined) return;
    try {
      this.#socket?.send(this.#configFrame);
    } catch {
      // The socket is closing: the config goes out again on the next connection.
    }
  }

  /**
   * The config this attempt's URL carries, if any. An SSE stream always
   * carries it (section 10). A resuming WebSocket carries it when it fits,
   * so that the replay follows it from the first event even when the
   * client's first frame comes late (a starved client in a reconnect storm;
   * the server waits only 2 s for it, section 9). Only a resume does: a
   * position comes from a pushwire server, which reads the parameter,
   * while bahamut servers ignore it and need the frame.
   */
  #urlConfig(): string | undefined {
    const text = this.#configText;
    if (text === undefined) return undefined;
    if (this.#sse) return text;
    if (!this.#resuming()) return undefined;
    return encodeURIComponent(text).length <= URL_CONFIG_MAX ? text : undefined;
  }

  #resuming(): boolean {
    return this.#position !== undefined && this.#options.resume !== false;
  }

  /** The handshake URL: the endpoint, the extra parameters, then ours (which win). */
  #handshakeUrl(token: string | undefined, config: string | undefined): URL {
    const url = new URL(this.#endpoint);
    for (const [name, value] of Object.entries(this.#options.parameters ?? {})) {
      url.searchParams.delete(name);
      for (const item of typeof value === 'string' ? [value] : value)
        url.searchParams.append(name, item);
    }
    if (token !== undefined && token !== '') url.searchParams.set('token', token);
    url.searchParams.set('encoding', this.#options.encoding ?? 'json');
    if (this.#options.enableErrors !== false) url.searchParams.set('enableErrors', 'true');
    if (this.#sse) url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
    if (config !== undefined) url.searchParams.set('config', config);
    // Resume where the last connection stopped, when the server keeps history (section 9). In
    // the URL rather than the config: the server then holds live events until the replay is done.
    if (this.#resuming()) url.searchParams.set('since', this.#position as string);
    return url;
  }

  async #open(): Promise<void> {
    const generation = ++this.#generation;
    this.#state = 'connecting';
    let token: string | undefined;
    let headers: Record<string, string> | undefined;
    try {
      // Always asynchronous, even on the first attempt from the constructor: listeners added
      // right after createPushClient() must see everything, including a token function's throw.
      await undefined;
      const option = this.#options.token;
      token = typeof option === 'function' ? await option() : option;
      const headersOption = this.#options.headers;
      headers = typeof headersOption === 'function' ? await headersOption() : headersOption;
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#emit('error', error instanceof Error ? error : new Error(String(error)));
      if (generation !== this.#generation) return;
      if (this.#options.reconnect === false) this.#stop('closed');
      else this.#retry();
      return;
    }
    if (generation !== this.#generation) return;
    const urlConfig = this.#urlConfig();
    const url = this.#handshakeUrl(token, urlConfig);
    const sse = this.#sse;
    let refusal: { status: number; body: unknown } | undefined;
    const report = (status: number, body: unknown): void => {
      refusal = { status, body };
    };
    const WebSocketClass = this.#webSocketClass() as WebSocketConstructor;
    let socket: WebSocketLike;
    try {
      const open = this.#transport.open;
      socket = sse
        ? openEventStream(url.href, headers, (status, text) => report(status, parseBody(text)))
        : open !== undefined
          ? open(WebSocketClass, url.href, headers)
          : new WebSocketClass(url.href);
    } catch (error) {
      // The URL was checked at creation, so this does not get better by retrying.
      this.#stop('closed');
      this.#emit('error', error instanceof Error ? error : new Error(String(error)));
      return;
    }
    this.#socket = socket;
    // Binary frames as ArrayBuffer everywhere (a browser's default is Blob, ws's a Buffer).
    socket.binaryType = 'arraybuffer';
    if (!sse) this.#transport.watchRefusal?.(socket, report);
    let openedAt: number | undefined;
    const handlers = socket as unknown as SocketHandlers;
    handlers.onopen = () => {
      if (generation !== this.#generation) return;
      openedAt = this.#scheduler.now();
      this.#state = 'open';
      this.#probing = false;
      // Not again when the URL carried this very config (a setConfig() since then changed it).
      if (urlConfig === undefined || urlConfig !== this.#configText) this.#sendConfig();
      this.#emit('open', { retries: this.#failures, transport: sse ? 'sse' : 'websocket' });
    };
    const deliver = (data: unknown): void => {
      if (generation === this.#generation) this.#receive(data);
    };
    if (sse || this.#transport.watchMessages?.(socket, deliver) !== true) {
      handlers.onmessage = (message) => deliver(message.data);
    }
    // An error event is always followed by a close event, which carries what there is to know.
    handlers.onerror = () => undefined;
    handlers.onclose = (close) => {
      if (this.#socket === socket) this.#socket = undefined;
      void this.#closed(generation, url, close.code, close.reason ?? '', openedAt, refusal, sse);
    };
  }

  #receive(data: unknown): void {
    let event: ReceivedEvent;
    try {
      // By the session's encoding, not by the opcode: bahamut sends MessagePack in text frames.
      event = decodeEvent(data, this.#options.encoding ?? 'json');
    } catch (error) {
      this.#emit('error', error as Error);
      return;
    }
    if (event.type === RECOVERY_TYPE && event.identity === '') {
      const info = event.entity as RecoveryInfo;
      if (info.position !== '') this.#position = info.position;
      this.#emit('recovery', info);
      return;
    }
    if (event.position !== undefined) this.#position = event.position;
    // An error event (section 4): the server rejected the config, it is not an application event.
    if (event.type === 'error' && event.identity === '') {
      this.#emit('error', rejected(event.entity as ErrorObject | undefined));
      return;
    }
    this.#emit('event', event);
    for (const sink of this.#sinks) sink.push(event);
  }

  async #closed(
    generation: number,
    url: URL,
    code: number,
    reason: string,
    openedAt: number | undefined,
    reported: { status: number; body: unknown } | undefined,
    sse: boolean,
  ): Promise<void> {
    const opened = openedAt !== undefined;
    let refusal = reported;
    if (!opened && !sse && refusal === undefined && generation === this.#generation) {
      refusal = await this.#check(url);
    }
    if (generation !== this.#generation) {
      // close() (or connect() after it) took over: this socket's end is all there is to say.
      this.#emit('close', { code, reason, opened, willReconnect: false });
      return;
    }
    if (this.#probing && !opened && (refusal === undefined || refusal.status === 426)) {
      // `auto`: a WebSocket that could not open is followed by a stream at once; a stream that
      // could not open either (the server is down) sends the next attempt back to WebSocket. A
      // 426 is no refusal: a proxy stripped the Upgrade header, and the server answered the
      // plain GET that reached it (section 10).
      refusal = undefined;
      this.#sse = !sse;
      if (!sse) {
        this.#emit('close', { code, reason, opened, willReconnect: true });
        if (generation === this.#generation) void this.#open();
        return;
      }
    }
    if (opened && this.#scheduler.now() - openedAt >= HEALTHY_AFTER_MS) this.#failures = 0;
    // Over SSE a 400 is the server's answer to an invalid `config` parameter (section 10).
    const error =
      refusal === undefined
        ? undefined
        : sse && refusal.status === 400
          ? rejected(errorObjectsOf(refusal.body)[0])
          : new PushRefusedError(refusal.status, refusal.body);
    const final = error instanceof PushRefusedError && FINAL_STATUSES.has(error.status);
    const willReconnect = !final && this.#options.reconnect !== false;
    // Decided before the listeners run, so that a listener calling connect() or close() wins.
    this.#state = final ? 'refused' : willReconnect ? 'reconnecting' : 'closed';
    if (final) this.#refusal = error;
    this.#emit('close', { code, reason, opened, willReconnect });
    if (code === 1003) {
      this.#emit(
        'error',
        new PushConfigError('the server closed the session (1003): the push config is invalid'),
      );
    }
    if (error) this.#emit('error', error);
    if (generation !== this.#generation) return;
    if (final) {
      this.#stop('refused', error);
      this.#emit('refused', error);
    } else if (willReconnect) {
      this.#retry();
    } else {
      this.#stop('closed');
    }
  }

  /** Stops for good (until connect()): stale async work is dropped, iterators end. */
  #stop(state: 'closed' | 'refused', error?: PushRefusedError): void {
    this.#generation++;
    this.#state = state;
    this.#refusal = error;
    this.#scheduler.clearTimeout(this.#timer);
    for (const sink of this.#sinks) sink.end(error);
    this.#sinks.clear();
  }

  /** Asks `checkUrl` whether the failed handshake was refused; undefined when it was not, or when unknown. */
  async #check(url: URL): Promise<{ status: number; body: unknown } | undefined> {
    const checkUrl = this.#options.checkUrl;
    if (checkUrl === undefined || typeof fetch !== 'function') return undefined;
    const http = new URL(url);
    http.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
    const target = new URL(String(checkUrl), http);
    for (const [name, value] of url.searchParams) target.searchParams.append(name, value);
    try {
      const response = await fetch(target, { credentials: 'include', cache: 'no-store' });
      if (response.ok || response.status === 426) return undefined;
      return { status: response.status, body: parseBody(await response.text()) };
    } catch {
      return undefined; // the server is unreachable: a network failure, not a refusal
    }
  }

  #retry(): void {
    const generation = this.#generation;
    const delay = backoffDelay(
      this.#failures,
      {
        minDelay: this.#options.minDelay ?? DEFAULT_MIN_DELAY,
        maxDelay: this.#options.maxDelay ?? DEFAULT_MAX_DELAY,
      },
      this.#options.random,
    );
    this.#failures++;
    this.#state = 'reconnecting';
    this.#timer = this.#scheduler.setTimeout(() => {
      if (generation === this.#generation) void this.#open();
    }, delay);
    this.#emit('reconnecting', { attempt: this.#failures, delay });
  }
}

/**
 * Creates a client and starts connecting to a push endpoint
 * (`wss://host/api/events`; http(s) URLs are converted to what each
 * transport needs, relative URLs resolve against the page). Throws TypeError
 * for a URL that is not one, an unknown encoding or transport, MessagePack
 * over SSE, or when there is no WebSocket class (and `options.transport` is
 * not `sse`). `transport` is how a platform entry point
 * (pushwire/client/node) adds what it knows.
 */
export function createClient(
  url: string | URL,
  options: PushClientOptions = {},
  transport: Transport = {},
): PushClient {
  return new Client(url, options, transport);
}
