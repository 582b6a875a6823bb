/**
 * The checks of a WebSocket upgrade request that need no application: what
 * `ws` itself would refuse, answered on the raw socket before Express or any
 * plugin runs (no ServerResponse exists yet), so that junk requests cost no
 * token verification and are still counted as refusals.
 */
import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { PushError } from './errors.js';

/** `Sec-WebSocket-Key`: 16 random bytes in base64, as ws checks it. */
const KEY = /^[+/0-9A-Za-z]{22}==$/;
/** `Sec-WebSocket-Protocol`: comma-separated tokens, as ws's parser accepts them. */
const TOKEN = "[!#$%&'*+\\-.^_`|~0-9A-Za-z]+";
const PROTOCOLS = new RegExp(`^${TOKEN}(?:[ \\t]*,[ \\t]*${TOKEN})*$`);

/** Why `ws` would refuse a handshake: its status, message and extra headers. */
export interface MalformedHandshake {
  status: number;
  message: string;
  headers?: Record<string, string>;
}

/**
 * The checks of ws 8's `handleUpgrade`, in its order, with its statuses and headers: a request
 * that fails one would be refused by ws only after Express and the plugin chain ran for it (a
 * JWT verification per junk request), and counted nowhere. Run first, they cost nothing.
 * `perMessageDeflate` is off in our server, so `Sec-WebSocket-Extensions` is never parsed.
 */
export function malformedHandshake(req: IncomingMessage): MalformedHandshake | undefined {
  if (req.method !== 'GET') return { status: 405, message: 'Invalid HTTP method' };
  const upgrade = req.headers.upgrade;
  if (upgrade === undefined || upgrade.toLowerCase() !== 'websocket') {
    return { status: 400, message: 'Invalid Upgrade header' };
  }
  const key = req.headers['sec-websocket-key'];
  if (key === undefined || !KEY.test(key)) {
    return { status: 400, message: 'Missing or invalid Sec-WebSocket-Key header' };
  }
  const version = Number(req.headers['sec-websocket-version']);
  if (version !== 13 && version !== 8) {
    // ws answers 400 (RFC 6455 section 4.4 allows it) with the versions it speaks.
    return {
      status: 400,
      message: 'Missing or invalid Sec-WebSocket-Version header',
      headers: { 'Sec-WebSocket-Version': '13, 8' },
    };
  }
  const protocols = req.headers['sec-websocket-protocol'];
  if (protocols !== undefined) {
    const names = protocols.split(',').map((p) => p.trim());
    if (!PROTOCOLS.test(protocols) || new Set(names).size !== names.length) {
      return { status: 400, message: 'Invalid Sec-WebSocket-Protocol header' };
    }
  }
  return undefined;
}

/**
 * Answers an upgrade on its raw socket (no ServerResponse exists yet), as ws's abortHandshake
 * does, with the protocol's JSON error body, then closes the connection.
 */
export function refuseOnSocket(
  socket: Duplex,
  error: PushError,
  headers: Record<string, string> = {},
): void {
  // The client may already be gone: a write error must not become an uncaught exception.
  socket.on('error', () => socket.destroy());
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify([error.toErrorObject()]);
  const lines = [
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? ''}`,
    'Connection: close',
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
  ];
  socket.once('finish', () => socket.destroy());
  socket.end(`${lines.join('\r\n')}\r\n\r\n${body}`);
}
