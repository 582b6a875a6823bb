/**
 * The client's public types: its options, its events, the WebSocket it
 * needs and what a platform entry point adds (client.ts implements them).
 */
import type { Scheduler } from './backoff.js';
import type { PushRefusedError } from './errors.js';
import type { PushConfig, PushEncoding, ReceivedEvent, RecoveryInfo } from './protocol.js';

/**
 * What the client needs of a WebSocket: the standard API, as browsers, Node
 * 22+ and the `ws` package implement it. The handlers are typed `unknown`
 * so that any of those classes is accepted as it is.
 */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: unknown;
  onmessage: unknown;
  onclose: unknown;
  onerror: unknown;
}

/** A WebSocket class: `globalThis.WebSocket`, or `ws`'s default export. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/**
 * How the client reaches the server: a WebSocket, a Server-Sent Events stream (PROTOCOL.md
 * section 10), or `auto`, a WebSocket that falls back to SSE; see {@link PushClientOptions.transport}.
 */
export type PushTransport = 'websocket' | 'sse' | 'auto';

/** The client's state; see {@link PushClient.state}. */
export type PushClientState = 'connecting' | 'open' | 'reconnecting' | 'refused' | 'closed';

/** Payload of `open`. */
export interface OpenInfo {
  /** Failed attempts since the last healthy connection (0 on a first connection). */
  retries: number;
  /** What opened: a WebSocket, or an SSE stream. */
  transport: 'websocket' | 'sse';
}

/** Payload of `close`: one WebSocket or SSE stream ended. */
export interface CloseInfo {
  /**
   * The close code (1006 when the connection failed or dropped without a close frame); over
   * SSE, the code of the server's `event: close`, 1000 when setConfig() replaced the stream.
   */
  code: number;
  reason: string;
  /** False when the socket never opened: a network failure or a refused handshake. */
  opened: boolean;
  /**
   * True when the client will try again: after a delay (a `reconnecting` follows), or at once
   * when setConfig() replaced an SSE stream or `auto` falls back to SSE.
   */
  willReconnect: boolean;
}

/** Payload of `reconnecting`. */
export interface ReconnectInfo {
  /** The number of this retry since the last healthy connection, from 1. */
  attempt: number;
  /** Milliseconds until the attempt starts. */
  delay: number;
}

/** The events of {@link PushClient.on} and their payloads. */
export interface PushClientEventMap {
  /** An event from the server, entity decoded. */
  event: ReceivedEvent;
  /**
   * Something went wrong: PushRefusedError (each refused handshake),
   * PushConfigError (the server rejected the push config), PushDecodeError
   * (a message skipped), or what a `token` function threw.
   */
  error: Error;
  /** A WebSocket opened (the push config, if any, has just been sent), or an SSE stream did. */
  open: OpenInfo;
  /** A WebSocket or SSE stream ended (or failed to open). */
  close: CloseInfo;
  /** A retry is scheduled. */
  reconnecting: ReconnectInfo;
  /** The server refused with 401 or 403: the client stopped (until `connect()`). */
  refused: PushRefusedError;
  /**
   * A reconnection's replay ended (PROTOCOL.md section 9): with `recovered`
   * false, events were missed and the application must re-read its state.
   */
  recovery: RecoveryInfo;
}

/** A listener of {@link PushClient.on}. */
export type PushClientListener<K extends keyof PushClientEventMap> = (
  payload: PushClientEventMap[K],
) => void;

/** Options of {@link createPushClient}. */
export interface PushClientOptions {
  /**
   * The credential, sent as the `token` query parameter. A function is
   * called before every attempt (to refresh an expiring token); if it throws,
   * the attempt counts as failed and is retried.
   */
  token?: string | (() => string | undefined | Promise<string | undefined>);
  /**
   * `json` (the default) or `msgpack`, both directions. Messages are read by this encoding,
   * whatever their frame type: bahamut sends MessagePack events in text frames, which
   * `pushwire/client/node` reads as bytes. A browser's WebSocket cannot: it fails the
   * connection on a text frame that is not UTF-8, and turns one that is into a string, from
   * which the bytes are lost (a PushDecodeError). In a browser, use `json` against a bahamut
   * server; pushwire itself sends MessagePack in binary frames, which browsers read.
   */
  encoding?: PushEncoding;
  /**
   * Ask the server for error events (`enableErrors`), so an invalid push
   * config becomes a PushConfigError instead of a close with 1003. Default true.
   */
  enableErrors?: boolean;
  /** Extra query parameters, which plugins read with `session.parameter(name)`. */
  parameters?: Record<string, string | readonly string[]>;
  /** The shortest reconnect delay and the base of its growth, in ms. Default 500. */
  minDelay?: number;
  /** The longest reconnect delay, in ms. Default 30,000. */
  maxDelay?: number;
  /** Set to false to never reconnect: the client closes when its socket does. Default true. */
  reconnect?: boolean;
  /**
   * With a server that keeps history (PROTOCOL.md section 9), a reconnection
   * resumes after the last event received (`since`), and a `recovery` event
   * says whether nothing was missed. Set to false to always start live.
   * Default true.
   */
  resume?: boolean;
  /** A position to resume from on the first connection (one saved by an earlier run). */
  since?: string;
  /**
   * Browsers only (Node's `ws` reads the status itself): an HTTP URL,
   * relative to the endpoint, that answers a GET carrying the handshake's
   * query with the handshake's refusal: the status and the JSON error body,
   * or a 2xx (or 426) when the handshake would be accepted. Fetched only
   * after a socket failed before opening, because the WebSocket API hides
   * the status of a refused handshake. Without it, a browser cannot tell a
   * refusal from a network failure and keeps retrying with backoff.
   */
  checkUrl?: string | URL;
  /**
   * HTTP headers of the handshake (an `Authorization` header, say); a function is called
   * before every attempt, as `token`'s is, and a throw retries the same way. Over WebSocket,
   * Node only (`pushwire/client/node`, with `ws`): a browser's WebSocket cannot send request
   * headers, so `pushwire/client` throws a TypeError at creation when this is set with a
   * transport other than `sse`, rather than connect without them. Use `token` or `parameters`
   * there, or `transport: 'sse'`, whose `fetch` sends them everywhere.
   */
  headers?:
    Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
  /**
   * `websocket` (the default), `sse` (a Server-Sent Events stream read with `fetch`, PROTOCOL.md
   * section 10: same events, reconnects, resume and refusals; the push config travels in the
   * URL, so setConfig() opens a new stream), or `auto`: a WebSocket, and when one fails before
   * opening without an HTTP refusal the client could see, an SSE stream at once; the first
   * transport that opens is kept for the life of the client. SSE carries JSON only: `sse` or
   * `auto` with `encoding: 'msgpack'` is a TypeError at creation.
   */
  transport?: PushTransport;
  /** The WebSocket class. Default `globalThis.WebSocket` (`ws` in `pushwire/client/node`). */
  WebSocket?: WebSocketConstructor;
  /** The clock and timers (tests inject a fake one). Default the real ones. */
  scheduler?: Scheduler;
  /** A random source in [0, 1) for the jitter (tests inject one). Default Math.random. */
  random?: () => number;
}

/** The push client. Create one with {@link createPushClient}. */
export interface PushClient extends AsyncIterable<ReceivedEvent> {
  /**
   * `connecting` (an attempt is under way), `open`, `reconnecting` (waiting
   * for the next attempt), `refused` (stopped after a 401/403), `closed`
   * (stopped by close(), or by a drop with `reconnect: false`).
   */
  readonly state: PushClientState;
  /**
   * `websocket` or `sse`: the transport of the open socket or stream, else of the next attempt
   * (in a `close` listener, `auto` has already chosen the next one).
   */
  readonly transport: 'websocket' | 'sse';
  /**
   * The position of the last event received, when the server keeps history
   * (PROTOCOL.md section 9): save it to resume a later run with `since`.
   */
  readonly position: string | undefined;
  /** The push config last given to setConfig(), if any. */
  readonly config: PushConfig | undefined;
  /**
   * Adds a listener; returns the function that removes it. A listener that
   * throws does not disturb the client or the other listeners: the error is
   * rethrown asynchronously (reportError in browsers, an uncaught exception
   * in Node).
   */
  on<K extends keyof PushClientEventMap>(type: K, listener: PushClientListener<K>): () => void;
  /**
   * Replaces the push config: sent now if a socket is open, and after every
   * reconnection. Throws TypeError when it is not an object or cannot be
   * encoded. The server answers an invalid one with an error event
   * (PushConfigError) or, without `enableErrors`, a close with 1003. Over
   * SSE, whose config is fixed per stream, the stream open (or being opened)
   * is closed and a new one opened at once with the new config and `since`
   * the last position (a `close` with willReconnect true, then an `open`);
   * an invalid config is a 400 refusal, reported as a PushConfigError and
   * retried with backoff until a valid one is set.
   */
  setConfig(config: PushConfig): void;
  /**
   * Connects again after close() or a refusal (with a fresh backoff and the
   * token function called again), or skips the wait while `reconnecting`.
   * Does nothing while `connecting` or `open`.
   */
  connect(): void;
  /** Closes the socket with 1000 and stops reconnecting; ends the iterators. Idempotent. */
  close(): void;
  /**
   * The events from now on, as an async iterator. It ends when close() is
   * called and throws the PushRefusedError when the client stops on a
   * refusal. Events wait in an unbounded queue until read: read promptly or
   * break out of the loop (which unsubscribes).
   */
  events(): AsyncIterableIterator<ReceivedEvent>;
}

/**
 * What a platform provides: the default WebSocket class, and a way to read
 * the HTTP status and body of a refused handshake when the WebSocket
 * implementation exposes them (`ws` does, browsers do not).
 */
export interface Transport {
  WebSocket?: WebSocketConstructor;
  /**
   * Opens a socket, its handshake carrying `headers` when given. Absent where the WebSocket API
   * cannot send headers (browsers): the `headers` option is then refused at creation, and
   * sockets are made with `new WebSocket(url)`.
   */
  open?(
    WebSocketClass: WebSocketConstructor,
    url: string,
    headers: Record<string, string> | undefined,
  ): WebSocketLike;
  /**
   * Hands every message of `socket` to `deliver` as the bytes that came on the wire, text
   * frames included, and answers true; false when it cannot (the client then reads `onmessage`,
   * where a text frame is already a string). bahamut sends MessagePack events in text frames,
   * which only their bytes can decode.
   */
  watchMessages?(socket: WebSocketLike, deliver: (data: unknown) => void): boolean;
  /** Checks the `WebSocket` option's class at creation; throws TypeError when it cannot work. */
  checkWebSocket?(WebSocketClass: WebSocketConstructor): void;
  watchRefusal?(socket: WebSocketLike, report: (status: number, body: unknown) => void): void;
}
