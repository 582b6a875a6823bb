/**
 * The Server-Sent Events adapter of {@link SessionTransport}
 * (docs/PROTOCOL.md section 10): an HTTP response whose body is an event
 * stream, written straight to the socket.
 *
 * Why the socket and not `res.write`: the stream is delimited by the
 * connection's close (one stream per connection), so frames built once per
 * event go out as they are, with no chunk framing per write, exactly as the
 * WebSocket adapter writes prebuilt frames; and a compression middleware
 * that wrapped `res.write` cannot buffer a stream it never sees. The head
 * goes through the response (`writeHead`), so it keeps the headers
 * middleware set before the endpoint (CORS, for an `EventSource` of another
 * origin) and Node knows the response started.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { SocketTransport } from './socket-transport.js';
import { FrameFormat, type TransportName } from './contract.js';

/** How long a policy close waits for the buffered data to leave before destroying the socket. */
const POLICY_CLOSE_GRACE_MS = 1000;
/** A comment line and the blank line that ends it: the keepalive, and the stream's first bytes. */
const COMMENT = Buffer.from(':\n\n');
/** A line break of any kind: what an SSE reader would take as the end of a field. */
const LINE_BREAK = /\r\n|\r|\n/g;

/**
 * One SSE event: an optional `event:` type, an optional `id:`, and `data`
 * as `data:` lines (split at the line breaks it holds, which a reader
 * joins with `\n`: for JSON, whose only raw line breaks are whitespace,
 * the same value).
 */
export function sseEvent(data: string, id?: string, type?: string): Buffer {
  let text = '';
  if (type !== undefined) text += 'event: ' + type + '\n';
  // An id holding a line break or NUL would end the field early or be ignored by readers; a
  // position never does, but this is the wire: drop the id rather than corrupt the stream.
  if (id !== undefined && !/[\r\n\0]/.test(id)) text += 'id: ' + id + '\n';
  const body =
    data.includes('\n') || data.includes('\r') ? data.replace(LINE_BREAK, '\ndata: ') : data;
  return Buffer.from(text + 'data: ' + body + '\n\n', 'utf8');
}

/** The connection of one SSE session. */
export class SseTransport extends SocketTransport {
  get name(): TransportName {
    return 'sse';
  }
  get format(): FrameFormat {
    return FrameFormat.SseJson;
  }
  /**
   * Keepalive: false from a keepalive comment until it left for the kernel. A peer that stopped
   * reading keeps it in the buffer; one that vanished without a reset is left to TCP.
   */
  alive = true;
  /** The close sent by the server, reported when the socket closes. */
  closeSent: { code: number; reason: string } | undefined;
  readonly #onFlushed = (): void => {
    this.alive = true;
  };

  /**
   * Starts the stream: the head (through `res`), then the first comment. Throws when a
   * middleware made the response compressed (it ignored `no-transform`): the body written to
   * the socket would not be what the head announces.
   */
  constructor(socket: Socket, res: ServerResponse) {
    // The socket of the request: the response's head and body are written to it.
    super(socket);
    socket.setNoDelay(true);
    // Neither chunked nor keep-alive: the body ends with the connection (section 10).
    res.useChunkedEncodingByDefault = false;
    res.removeHeader('Content-Length');
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache, no-transform',
      'X-Accel-Buffering': 'no',
      Connection: 'close',
    });
    if (res.getHeader('Content-Encoding') !== undefined) {
      socket.destroy();
      throw new Error(
        "a middleware compresses the push endpoint's event stream; mount compression() so that it skips this route (see the README)",
      );
    }
    res.flushHeaders();
    socket.write(COMMENT);
  }

  get writable(): boolean {
    return this.closeSent === undefined && this.socket.writable;
  }

  keepalive(judge: boolean): void {
    if (!this.writable) return;
    if (!this.alive && judge) {
      this.closeSent = { code: 1006, reason: 'keepalive not read' };
      this.socket.destroy();
      return;
    }
    this.alive = false;
    this.socket.write(COMMENT, this.#onFlushed);
  }

  close(code: number, reason: string): void {
    if (this.closeSent !== undefined || !this.socket.writable) return;
    this.closeSent = { code, reason };
    this.socket.end(sseEvent(JSON.stringify({ code, reason }), undefined, 'close'));
  }

  closeForPolicy(code: number, reason: string): void {
    if (this.closeSent !== undefined) return;
    this.close(code, reason);
    // The close event waits behind the unread data; a reader that stopped will not read it.
    const socket = this.socket;
    setTimeout(() => socket.destroy(), POLICY_CLOSE_GRACE_MS).unref();
  }

  closeAndWait(code: number, reason: string, ms: number): Promise<void> {
    const socket = this.socket;
    if (socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => socket.destroy(), ms);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.close(code, reason);
      // Ended already by the peer, or by a close before: the socket still has to go.
      if (!socket.writable) socket.destroy();
    });
  }
}

/** What an SSE session's socket reports to the server. */
export interface SseSessionEvents<S> {
  /** The connection closed, with the close the server sent, or 1000 (peer ended) / 1006 (lost). */
  close(session: S, code: number, reason: string): void;
  /** The socket reported an error (a close follows). */
  error(session: S, error: Error): void;
}

/**
 * Returns a function that starts an SSE session's stream on its request's
 * socket and reports the socket's end to the server.
 */
export function sseBinder<S>(
  events: SseSessionEvents<S>,
): (session: S, socket: Socket, res: ServerResponse) => SseTransport {
  return (session, socket, res) => {
    const transport = new SseTransport(socket, res);
    socket.on('error', (error: Error) => events.error(session, error));
    socket.once('close', (hadError: boolean) => {
      const sent = transport.closeSent;
      if (sent !== undefined) events.close(session, sent.code, sent.reason);
      else if (hadError) events.close(session, 1006, 'connection lost');
      else events.close(session, 1000, 'client closed the stream');
    });
    return transport;
  };
}
