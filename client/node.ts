/**
 * pushwire/client/node: the client of `pushwire/client` with the `ws`
 * package as its WebSocket, for Node (20 has no global WebSocket) and for
 * what `ws` adds over the standard API: the HTTP status and body of a
 * refused handshake, which this entry reads so that a refusal is known
 * without `checkUrl`. Kept out of the browser bundle, which must not import `ws`.
 */
import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import {
  createClient,
  parseBody,
  type PushClient,
  type PushClientOptions,
  type WebSocketConstructor,
  type WebSocketLike,
} from './client.js';

/** The most of a refusal body that is kept: an error array is a few hundred bytes. */
const MAX_REFUSAL_BODY = 64 * 1024;

/**
 * How long an opening handshake may go unanswered before the attempt fails (and the client
 * backs off and retries), in ms. Without it a connection that TCP thinks is open but no server
 * holds, which a reconnect storm makes when it overflows the server's accept queue, leaves the
 * client waiting for TCP to give up (tcp_retries2: about 15 minutes).
 */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * Reads a refused handshake from `ws`: with an `unexpected-response`
 * listener, `ws` hands over the response instead of failing at once, so the
 * body can be read; the socket is then terminated, which fires the usual
 * error and close events (code 1006).
 */
function watchRefusal(
  socket: WebSocketLike,
  report: (status: number, body: unknown) => void,
): void {
  // Any `ws` ≥ 8 (checkWebSocket let nothing else in), even another copy than ours.
  const emitter = socket as unknown as WebSocket;
  if (typeof emitter.on !== 'function') return;
  emitter.on('unexpected-response', (_request, response: IncomingMessage) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      report(response.statusCode ?? 0, parseBody(Buffer.concat(chunks).toString('utf8')));
      emitter.terminate();
    };
    response.on('data', (chunk: Buffer) => {
      if (size < MAX_REFUSAL_BODY) chunks.push(chunk.subarray(0, MAX_REFUSAL_BODY - size));
      size += chunk.length;
    });
    response.on('end', finish);
    response.on('error', finish);
    response.on('close', finish);
  });
}

/**
 * Refuses a WebSocket class this entry cannot read refusals from. Without the status of a
 * refused handshake a 401 looks like a network failure and the client reconnects forever, so
 * this fails at creation instead: a class that is not `ws` (a standard WebSocket: use
 * `pushwire/client` and its `checkUrl`), or a `ws` older than 8 (a subclass of the `ws@7` that
 * npm hoists for express-ws, say: use the `headers` option instead of a subclass).
 */
function checkWebSocket(WebSocketClass: WebSocketConstructor): void {
  if (WebSocketClass === WebSocket || WebSocketClass.prototype instanceof WebSocket) return;
  const proto = WebSocketClass.prototype as Partial<Record<'on' | 'terminate', unknown>>;
  if (typeof proto.on !== 'function' || typeof proto.terminate !== 'function') {
    throw new TypeError(
      'pushwire/client/node: options.WebSocket is not the ws package, so refused handshakes could not be told from network failures; pass ws >= 8, or use pushwire/client with checkUrl',
    );
  }
  // `WebSocketServer` is a static of ws's class since ws 8; a subclass inherits it.
  if ((WebSocketClass as unknown as { WebSocketServer?: unknown }).WebSocketServer === undefined) {
    throw new TypeError(
      'pushwire/client/node: options.WebSocket is ws < 8 (npm may have hoisted the ws@7 of express-ws); refused handshakes would become endless reconnects. Use the headers option instead of a ws subclass, or pass a class of ws >= 8',
    );
  }
}

/**
 * Opens a `ws` socket, its handshake carrying `headers` when given and bounded by
 * HANDSHAKE_TIMEOUT_MS. UTF-8 is not checked at the frame level: bahamut sends MessagePack
 * events in text frames, which `ws` would otherwise close with 1007; the JSON decoding of
 * events checks UTF-8 itself (client/protocol.ts).
 */
function open(
  WebSocketClass: WebSocketConstructor,
  url: string,
  headers: Record<string, string> | undefined,
): WebSocketLike {
  // ws's constructor takes (address, protocols?, options?): an object second is the options.
  const Ws = WebSocketClass as unknown as new (url: string, options: object) => WebSocketLike;
  const options = { skipUTF8Validation: true, handshakeTimeout: HANDSHAKE_TIMEOUT_MS };
  return new Ws(url, headers === undefined ? options : { ...options, headers });
}

/**
 * Reads messages through `ws`'s own `message` event, which gives a text frame as its bytes (a
 * Buffer) where `onmessage` would give a string: a MessagePack event in a text frame, as bahamut
 * sends them, is decoded from those bytes.
 */
function watchMessages(socket: WebSocketLike, deliver: (data: unknown) => void): boolean {
  const emitter = socket as unknown as WebSocket;
  if (typeof emitter.on !== 'function') return false;
  emitter.on('message', (data: WebSocket.RawData) => deliver(data));
  return true;
}

/**
 * Creates a client and starts connecting, as `pushwire/client`'s
 * createPushClient does, with `ws` as the default WebSocket class and the
 * `headers` option available. A WebSocket class passed in the options wins;
 * it must be `ws` 8 or later, or a subclass of it, so that refusals are
 * still read: anything else throws a TypeError.
 */
export function createPushClient(url: string | URL, options: PushClientOptions = {}): PushClient {
  return createClient(url, options, {
    WebSocket,
    watchRefusal,
    open,
    watchMessages,
    checkWebSocket,
  });
}

export * from './index.js';
