/**
 * The WebSocket adapter of {@link SessionTransport}: frames written straight
 * to the upgraded socket (they are built once per event, already framed:
 * lib/frame.ts), ping/pong keepalive, close handshakes.
 */
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { SocketTransport } from './socket-transport.js';
import { FrameFormat, type TransportName } from './contract.js';

const WS_OPEN = 1;
const WS_CLOSED = 3;
/** How long a policy close waits for the peer's answer before destroying the socket. */
const POLICY_CLOSE_GRACE_MS = 1000;
/**
 * Where a WebSocket points back to its transport (which points to its session), for the shared
 * listeners. The transport itself, not an object of both: one object less per idle session.
 */
const kBinding = Symbol('pushwire.binding');

type BoundSocket<S> = WebSocket & { [kBinding]: WebSocketTransport<S> };

/** The connection of one WebSocket session (`S`: the session it carries). */
export class WebSocketTransport<S = unknown> extends SocketTransport {
  get name(): TransportName {
    return 'websocket';
  }
  readonly format: FrameFormat;
  /** The ws object, for the close handshake and pings. */
  readonly ws: WebSocket;
  /** The session, for the listeners shared by every session's socket. */
  readonly session: S;
  /** Keepalive: false after a ping until the pong arrives. */
  alive = true;

  constructor(ws: WebSocket, socket: Socket, binary: boolean, session: S) {
    // The raw socket frames are written to (ws writes nothing of ours: frames are prebuilt).
    super(socket);
    this.ws = ws;
    this.session = session;
    this.format = binary ? FrameFormat.WebSocketMsgpack : FrameFormat.WebSocketJson;
  }

  get writable(): boolean {
    return this.ws.readyState === WS_OPEN && this.socket.writable;
  }

  keepalive(judge: boolean): void {
    if (!this.alive && judge) {
      this.ws.terminate();
      return;
    }
    this.alive = false;
    try {
      this.ws.ping();
    } catch {
      this.ws.terminate();
    }
  }

  close(code: number, reason: string): void {
    // Close reasons must fit a control frame: 123 bytes.
    const safeReason = Buffer.byteLength(reason) > 123 ? reason.slice(0, 60) : reason;
    try {
      this.ws.close(code, safeReason);
    } catch {
      // An invalid close code from a plugin: end the session anyway, with 1008.
      this.ws.close(1008, safeReason);
    }
  }

  closeForPolicy(code: number, reason: string): void {
    if (this.ws.readyState !== WS_OPEN) return;
    this.ws.close(code, reason);
    // The close frame waits behind the unread data; a reader that stopped will not answer it.
    setTimeout(() => this.ws.terminate(), POLICY_CLOSE_GRACE_MS).unref();
  }

  closeAndWait(code: number, reason: string, ms: number): Promise<void> {
    const ws = this.ws;
    if (ws.readyState === WS_CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      // On timeout, terminate and still wait for 'close': it unregisters the session, so that
      // close() resolves with no session left (terminate destroys the socket; 'close' follows).
      const timer = setTimeout(() => ws.terminate(), ms);
      ws.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.close(code, reason);
    });
  }
}

/**
 * Drops the peer address Node caches on a socket once something read `remoteAddress` (Express's
 * `req.ip` does, for the session's clientIP): an object per session, for the session's whole
 * life, that nothing reads again (the session keeps its clientIP). Node reads the address anew
 * if asked later while the socket is open. A no-op on a Node without that cache.
 */
function forgetPeerName(socket: Socket): void {
  const cached = socket as Socket & { _peername?: unknown };
  if (cached._peername !== undefined) cached._peername = undefined;
}

/**
 * Gives back the chunk list ws's receiver grew to read a message: a queue that keeps the
 * capacity it reached (17 slots, 152 bytes) once a message was read, for the session's life.
 * Every session reads one (its push config) and most never read another, so the list is
 * replaced by an empty one, which holds no storage, when nothing is queued in it. A no-op on a
 * ws without that field.
 */
function shrinkReceiverQueue(ws: WebSocket): void {
  const receiver = (ws as WebSocket & { _receiver?: { _buffers?: unknown } })._receiver;
  const queue = receiver?._buffers;
  if (Array.isArray(queue) && queue.length === 0) receiver!._buffers = [];
}

/** What a WebSocket session's socket reports to the server. */
export interface WebSocketSessionEvents<S> {
  /** A message arrived (a push config). */
  message(session: S, data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void;
  /** The socket closed, with the code and reason it reports. */
  close(session: S, code: number, reason: string): void;
  /** The socket reported an error (a close follows). */
  error(session: S, error: Error): void;
}

/**
 * Returns a function that binds a session to its upgraded WebSocket: it
 * makes the transport and attaches listeners shared by every session of
 * the server, which find their session on the socket. Four closures per
 * session were a measurable part of an idle session's memory.
 */
export function webSocketBinder<S>(
  events: WebSocketSessionEvents<S>,
): (session: S, ws: WebSocket, socket: Socket, binary: boolean) => WebSocketTransport<S> {
  const binding = (ws: WebSocket): WebSocketTransport<S> => (ws as BoundSocket<S>)[kBinding];
  const listeners = {
    message(this: WebSocket, data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
      events.message(binding(this).session, data, isBinary);
      shrinkReceiverQueue(this);
    },
    pong(this: WebSocket): void {
      binding(this).alive = true;
    },
    error(this: WebSocket, error: Error): void {
      events.error(binding(this).session, error);
    },
    close(this: WebSocket, code: number, reason: Buffer): void {
      events.close(binding(this).session, code, reason.toString());
    },
  };
  return (session, ws, socket, binary) => {
    const transport = new WebSocketTransport(ws, socket, binary, session);
    (ws as BoundSocket<S>)[kBinding] = transport;
    forgetPeerName(socket);
    ws.on('message', listeners.message);
    ws.on('pong', listeners.pong);
    ws.on('error', listeners.error);
    ws.on('close', listeners.close);
    return transport;
  };
}
