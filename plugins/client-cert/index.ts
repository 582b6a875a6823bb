/**
 * clientCertAuthPlugin: authenticates a session by its TLS client
 * certificate (mutual TLS). The HTTPS server asks for a certificate but lets
 * the plugin decide:
 *
 * ```ts
 * const server = https.createServer({ key, cert, ca, requestCert: true, rejectUnauthorized: false }, app);
 * const ews = expressWs(app, server);
 * ```
 *
 * With `rejectUnauthorized: true` Node would drop an untrusted client during
 * the TLS handshake, before any HTTP status can be sent; with `false` the
 * connection completes, `socket.authorized` says whether the chain verified
 * against `ca`, and this plugin answers 401.
 */
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { UnauthorizedError, type Logger, type Plugin } from '../../lib/index.js';

/** Options of {@link clientCertAuthPlugin}. */
export interface ClientCertAuthOptions {
  /** Turns the verified certificate into session claims. Default {@link defaultCertificateClaims}. */
  mapClaims?: (certificate: PeerCertificate) => readonly string[];
  /** No certificate: `ko` refuses with 401 (default), `continue` asks the next auth plugin. */
  onMissingCertificate?: 'ko' | 'continue';
  /** Where refusals are logged (debug). Default: silent. */
  logger?: Logger;
  /** The plugin's name in logs. Default `client-cert`. */
  name?: string;
}

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** Node's names of subjectAltName entry types, and the claim suffix each becomes. */
const SAN_TYPES: Record<string, string> = {
  DNS: 'dns',
  'IP Address': 'ip',
  email: 'email',
  URI: 'uri',
  DirName: 'dirname',
  'Registered ID': 'rid',
  othername: 'othername',
};

/**
 * Parses Node's `subjectaltname` string (`DNS:a.example, IP Address:10.0.0.1,
 * URI:spiffe://x`). Node writes a value holding a comma or a quote as a JSON
 * string (since the fix for CVE-2021-44532), so a certificate cannot smuggle
 * an extra entry through a crafted value; this parser honours that quoting.
 */
export function parseSubjectAltName(
  text: string | undefined,
): Array<[type: string, value: string]> {
  const entries: Array<[string, string]> = [];
  if (text === undefined) return entries;
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(':', i);
    if (colon === -1) break;
    const type = text.slice(i, colon).trim();
    let j = colon + 1;
    let value: string;
    if (text[j] === '"') {
      let k = j + 1;
      while (k < text.length && text[k] !== '"') k += text[k] === '\\' ? 2 : 1;
      try {
        value = JSON.parse(text.slice(j, k + 1)) as string;
      } catch {
        value = text.slice(j + 1, k);
      }
      j = k + 1;
    } else {
      const end = text.indexOf(', ', j);
      value = end === -1 ? text.slice(j) : text.slice(j, end);
      j = end === -1 ? text.length : end;
    }
    entries.push([type, value]);
    const next = text.indexOf(', ', j);
    i = next === -1 ? text.length : next + 2;
  }
  return entries;
}

/**
 * The default claims of a certificate:
 *
 * | claim | from |
 * |---|---|
 * | `subject.<field>=<value>` | each subject field (`subject.CN=alice`, `subject.O=Acme`, `subject.OU=…`); a repeated field gives one claim per value |
 * | `issuer.<field>=<value>` | each issuer field (`issuer.CN=Acme CA`) |
 * | `san.dns=`, `san.ip=`, `san.email=`, `san.uri=` | each subjectAltName entry (`san.uri=spiffe://acme/alice`); other types: `san.dirname`, `san.rid`, `san.othername` |
 * | `serial=<hex>` | the serial number |
 * | `fingerprint256=<AA:BB:…>` | the SHA-256 fingerprint, for pinning |
 */
export function defaultCertificateClaims(certificate: PeerCertificate): string[] {
  const claims: string[] = [];
  const addFields = (prefix: string, fields: unknown): void => {
    if (fields === null || typeof fields !== 'object') return;
    for (const [field, value] of Object.entries(fields as Record<string, unknown>)) {
      for (const v of Array.isArray(value) ? value : [value]) {
        if (typeof v === 'string') claims.push(`${prefix}.${field}=${v}`);
      }
    }
  };
  addFields('subject', certificate.subject);
  addFields('issuer', certificate.issuer);
  for (const [type, value] of parseSubjectAltName(certificate.subjectaltname)) {
    const suffix = SAN_TYPES[type] ?? type.toLowerCase().replace(/[^a-z0-9]+/g, '');
    claims.push(`san.${suffix}=${value}`);
  }
  if (typeof certificate.serialNumber === 'string')
    claims.push(`serial=${certificate.serialNumber}`);
  if (typeof certificate.fingerprint256 === 'string') {
    claims.push(`fingerprint256=${certificate.fingerprint256}`);
  }
  return claims;
}

/**
 * A session-phase auth plugin for TLS servers: the client's certificate,
 * verified by the server's `ca`, authenticates the session and becomes its
 * claims ({@link defaultCertificateClaims}). No certificate, or one whose
 * chain did not verify (`socket.authorized === false`), is refused with 401.
 * On a plain-HTTP server there is never a certificate: every attempt is
 * refused. Skipped when an earlier auth plugin said ok. Throws TypeError at
 * once for invalid options.
 */
export function clientCertAuthPlugin(options: ClientCertAuthOptions = {}): Plugin {
  if (options === null || typeof options !== 'object') {
    throw new TypeError('clientCertAuthPlugin: options must be an object');
  }
  for (const key of Object.keys(options)) {
    if (!['mapClaims', 'onMissingCertificate', 'logger', 'name'].includes(key)) {
      throw new TypeError(`clientCertAuthPlugin: unknown option ${key}`);
    }
  }
  const mapClaims = options.mapClaims ?? defaultCertificateClaims;
  if (typeof mapClaims !== 'function') {
    throw new TypeError('clientCertAuthPlugin: mapClaims must be a function');
  }
  const onMissing = options.onMissingCertificate ?? 'ko';
  if (onMissing !== 'ko' && onMissing !== 'continue') {
    throw new TypeError("clientCertAuthPlugin: onMissingCertificate must be 'ko' or 'continue'");
  }
  const name = options.name ?? 'client-cert';
  if (typeof name !== 'string' || name === '') {
    throw new TypeError('clientCertAuthPlugin: name must be a non-empty string');
  }
  const logger = options.logger ?? silent;

  return {
    name,
    async session(ctx, next) {
      if (ctx.authenticated) return next();
      const { session } = ctx;
      const refuse = (message: string, reason: string): never => {
        logger.debug(
          { plugin: name, sessionId: session.id, clientIP: session.clientIP, reason },
          'pushwire: client certificate refused',
        );
        throw new UnauthorizedError(message);
      };
      const socket = ctx.request.socket as Partial<TLSSocket>;
      const certificate = session.peerCertificate;
      if (certificate === undefined) {
        if (onMissing === 'continue') return next();
        refuse('No client certificate', socket.encrypted === true ? 'missing' : 'not-tls');
      }
      // `authorized` is false when the chain did not verify against the server's `ca`.
      if (socket.authorized !== true) {
        refuse('Untrusted client certificate', String(socket.authorizationError ?? 'unverified'));
      }
      const claims = mapClaims(certificate as PeerCertificate);
      if (!Array.isArray(claims) || !claims.every((c) => typeof c === 'string')) {
        refuse('Invalid client certificate', 'mapClaims');
      }
      session.setClaims(claims);
      ctx.authenticated = true;
      return next();
    },
  };
}
