/**
 * Helpers for the security and auth-plugin tests: a logger that records
 * every line (to prove secrets never reach it), a raw upgrade request (to
 * see exactly what a refused client receives), and token signing.
 */
import { connect } from 'node:net';
import { inspect } from 'node:util';
import { SignJWT, type JWTPayload } from 'jose';
import type { Logger } from '../../lib/index.js';
import { withTimeout } from './wait.js';

/** A logger that keeps every record, every level. */
export interface CapturedLogger {
  logger: Logger;
  records: Array<{ level: string; msg: string | undefined; obj: object }>;
  /** Everything logged, as one string: JSON plus a deep inspect (which also shows Errors and symbols). */
  text(): string;
}

/** A logger recording every call (debug included). */
export function captureLogger(): CapturedLogger {
  const records: CapturedLogger['records'] = [];
  const record =
    (level: string) =>
    (obj: object, msg?: string): void => {
      records.push({ level, msg, obj });
    };
  return {
    logger: {
      debug: record('debug'),
      info: record('info'),
      warn: record('warn'),
      error: record('error'),
    },
    records,
    text: () =>
      records
        .map(
          (r) =>
            `${r.level} ${r.msg ?? ''} ${JSON.stringify(r.obj)} ${inspect(r.obj, { depth: Infinity, showHidden: true })}`,
        )
        .join('\n'),
  };
}

/** What a raw upgrade request got back: every byte the server wrote, until it closed. */
export interface RawResponse {
  /** The whole response, as text. */
  text: string;
  /** The status line's code. */
  status: number;
  /** The body after the headers. */
  body: string;
}

/**
 * Sends a WebSocket upgrade request on a plain TCP socket and collects
 * everything until the server closes the connection. A refused upgrade must
 * be a complete HTTP response followed by the close; anything else (a 101,
 * a frame) shows up in `text`.
 */
export function rawUpgrade(
  port: number,
  path: string,
  headers: Record<string, string> = {},
  timeout = 5000,
): Promise<RawResponse> {
  const lines = [
    `GET ${path} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    'Upgrade: websocket',
    'Connection: Upgrade',
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
    'Sec-WebSocket-Version: 13',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  const socket = connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const done = new Promise<RawResponse>((resolve, reject) => {
    socket.once('error', reject);
    socket.once('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
      const split = text.indexOf('\r\n\r\n');
      resolve({ text, status, body: split === -1 ? '' : text.slice(split + 4) });
    });
  });
  socket.write(lines.join('\r\n') + '\r\n\r\n');
  return withTimeout(done, timeout, 'the server did not close the refused connection').finally(() =>
    socket.destroy(),
  );
}

/** A 32-byte HMAC secret for tests (RFC 7518 asks for at least the hash size). */
export const TEST_SECRET = 'pushwire-test-secret-0123456789-abcdef';

/** Signs an HS256 JWT with `secret`; `expiresIn`/`notBefore` are jose's time spans or epoch seconds. */
export async function signHs256(
  payload: JWTPayload,
  options: {
    secret?: string;
    alg?: string;
    expiresIn?: string | number;
    notBefore?: string | number;
  } = {},
): Promise<string> {
  let jwt = new SignJWT(payload).setProtectedHeader({ alg: options.alg ?? 'HS256' }).setIssuedAt();
  if (options.expiresIn !== undefined) jwt = jwt.setExpirationTime(options.expiresIn);
  if (options.notBefore !== undefined) jwt = jwt.setNotBefore(options.notBefore);
  return jwt.sign(new TextEncoder().encode(options.secret ?? TEST_SECRET));
}

/** An unsigned `alg: none` token: what an attacker sends hoping the verifier skips the signature. */
export function unsignedToken(payload: JWTPayload): string {
  const b64 = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(payload)}.`;
}
