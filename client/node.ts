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
  type WebSocketLike,
} from './client.js';

/** The most of a refusal body that is kept: an error array is a few hundred bytes. */
const MAX_REFUSAL_BODY = 64 * 1024;

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
  if (!(socket instanceof WebSocket)) return;
  socket.on('unexpected-response', (_request, response: IncomingMessage) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      report(response.statusCode ?? 0, parseBody(Buffer.concat(chunks).toString('utf8')));
      socket.terminate();
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
 * Creates a client and starts connecting, as `pushwire/client`'s
 * createPushClient does, with `ws` as the default WebSocket class. A
 * WebSocket class passed in the options wins; if it is `ws` or a subclass
 * (one that sets headers, say), refusals are still read.
 */
export function createPushClient(url: string | URL, options: PushClientOptions = {}): PushClient {
  return createClient(url, options, { WebSocket, watchRefusal });
}

export * from './index.js';
