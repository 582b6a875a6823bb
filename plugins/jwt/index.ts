/**
 * jwtAuthPlugin: authenticates a session with a JSON Web Token, verified by
 * `jose`, and turns the token's claims into session claims (`key=value`,
 * bahamut's form). Optionally closes the session (1008) when the token
 * expires. A token renewed through a push config's `parameters.token` (as Go
 * clients renew one) is verified again: its claims and `exp` replace the old
 * ones, and a token that does not verify closes the session with 1008.
 *
 * What it never does: accept `alg: none`, accept a token longer than
 * `maxTokenLength`, put the token (or a piece of it) into a refusal body or
 * a log line.
 */
import { isIP } from 'node:net';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify } from 'jose';
import type {
  CryptoKey,
  JWK,
  JWTPayload,
  JWTVerifyOptions,
  KeyObject,
  RemoteJWKSetOptions,
} from 'jose';
import {
  PushError,
  ServiceUnavailableError,
  UnauthorizedError,
  type Logger,
  type Plugin,
  type PushSession,
} from '../../lib/index.js';

/** Where a token can come from: the `token` query parameter, `Authorization: Bearer`, a cookie. */
export type JwtTokenSource = 'query' | 'header' | 'cookie';

/** A key jose verifies with: a Node KeyObject, a WebCrypto CryptoKey, a JWK, or secret bytes. */
export type JwtKey = KeyObject | CryptoKey | JWK | Uint8Array;

/** Options of {@link jwtAuthPlugin}. Exactly one of `key`, `jwksUrl`, `verify` is required. */
export interface JwtAuthOptions {
  /**
   * The verification key. A string or a Uint8Array is an HMAC secret (at
   * least 32 bytes, RFC 7518 §3.2); a KeyObject, CryptoKey or JWK is used as
   * jose uses it.
   */
  key?: JwtKey | string;
  /** A JWKS URL (https; http only on a loopback host), fetched and cached by jose's createRemoteJWKSet. */
  jwksUrl?: string | URL;
  /** Options of createRemoteJWKSet (timeout, cooldown, cache age). */
  jwksOptions?: RemoteJWKSetOptions;
  /**
   * Verifies the token yourself and returns its payload; a throw refuses
   * with 401 (a thrown PushError keeps its status). It receives any token
   * up to `maxTokenLength` (a JWE too: the shape is not checked); `exp` and
   * `nbf` of what it returns are still checked. Not combinable with `algorithms`,
   * `issuer`, `audience`, `requiredClaims` (they are jose's options).
   */
  verify?: (token: string) => JWTPayload | Promise<JWTPayload>;
  /**
   * Accepted `alg` values; `none` is never accepted. Default: HS256, HS384,
   * HS512 for a secret; RS*, PS*, ES*, EdDSA, Ed25519 otherwise (jose also
   * refuses an algorithm that does not fit the key).
   */
  algorithms?: readonly string[];
  /** Expected `iss` (one of). Default: not checked. */
  issuer?: string | readonly string[];
  /** Expected `aud` (one of). Default: not checked. */
  audience?: string | readonly string[];
  /** Claims the token must carry (e.g. `['exp', 'sub']`). Default none. */
  requiredClaims?: readonly string[];
  /** Seconds of leeway for `exp` and `nbf`. Default 0. */
  clockTolerance?: number;
  /**
   * Where to look for the token, first found wins. Default `['query',
   * 'header']`, plus `'cookie'` at the end when `cookieName` is set.
   */
  tokenSources?: readonly JwtTokenSource[];
  /**
   * The cookie holding the token. Reading a token from a cookie exposes the
   * endpoint to cross-site WebSocket hijacking unless `allowedOrigins` is
   * set on the push middleware. Default: none (cookies are not read).
   */
  cookieName?: string;
  /** Longer tokens are refused (401) before any parsing. Default 8192 characters. */
  maxTokenLength?: number;
  /** Turns the verified payload into session claims. Default {@link defaultJwtClaims}. */
  mapClaims?: (payload: JWTPayload) => readonly string[];
  /** Close the session with 1008 when the token's `exp` (plus `clockTolerance`) passes. Default false. */
  closeOnExpiry?: boolean;
  /** No token in any source: `ko` refuses with 401 (default), `continue` asks the next auth plugin. */
  onMissingToken?: 'ko' | 'continue';
  /** Where refusals are logged (debug, never the token). Default: silent. */
  logger?: Logger;
  /** The plugin's name in logs. Default `jwt`. */
  name?: string;
}

/** Every option name: anything else is a typo that would silently skip a check. */
const KNOWN_OPTIONS = new Set([
  'key',
  'jwksUrl',
  'jwksOptions',
  'verify',
  'algorithms',
  'issuer',
  'audience',
  'requiredClaims',
  'clockTolerance',
  'tokenSources',
  'cookieName',
  'maxTokenLength',
  'mapClaims',
  'closeOnExpiry',
  'onMissingToken',
  'logger',
  'name',
]);

const HMAC_ALGORITHMS = ['HS256', 'HS384', 'HS512'];
const ASYMMETRIC_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
];
/** RFC 7518 §3.2: an HMAC key at least as long as the hash output (256 bits for HS256). */
const MIN_SECRET_BYTES = 32;
const DEFAULT_MAX_TOKEN_LENGTH = 8192;
/** setTimeout's largest delay; a longer one fires at once, so long expiries are re-armed in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** JWS compact serialization: three base64url segments (the signature may not be empty for us). */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const BEARER = /^Bearer +([^\s]+) *$/i;
const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/**
 * The default claims mapper: each top-level string, number or boolean
 * becomes `key=value`; an array becomes one claim per primitive element;
 * `null`, nested objects and keys containing `=` are skipped (map them with
 * your own `mapClaims`). `{ sub: 'alice', roles: ['a', 'b'] }` gives
 * `['sub=alice', 'roles=a', 'roles=b']`.
 */
export function defaultJwtClaims(payload: JWTPayload): string[] {
  const claims: string[] = [];
  for (const [key, value] of Object.entries(payload)) {
    if (key === '' || key.includes('=')) continue;
    const values: unknown[] = Array.isArray(value) ? value : [value];
    for (const v of values) {
      if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') {
        claims.push(`${key}=${String(v)}`);
      }
    }
  }
  return claims;
}

function fail(message: string): never {
  throw new TypeError(`jwtAuthPlugin: ${message}`);
}

function isStringList(value: unknown): value is readonly string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string' && v !== '');
}

function isLoopback(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, '');
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

/** What a verification yields: the payload, or the refusal (never carrying the token). */
type Verifier = (token: string) => Promise<JWTPayload>;

/** A refusal with a fixed description, and the reason logged beside it. */
class TokenRefusal extends UnauthorizedError {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}

/** Maps a jose failure to a refusal whose text never includes the token or its claims. */
function refusalFor(error: unknown, remoteKeys: boolean): PushError {
  if (error instanceof PushError) return error;
  if (error instanceof joseErrors.JOSEError) {
    switch (error.code) {
      case 'ERR_JWT_EXPIRED':
        return new TokenRefusal('Token expired', error.code);
      case 'ERR_JWT_CLAIM_VALIDATION_FAILED': {
        const claim = (error as joseErrors.JWTClaimValidationFailed).claim;
        if (claim === 'nbf') return new TokenRefusal('Token not yet valid', `${error.code}:nbf`);
        return new TokenRefusal('Token claims rejected', `${error.code}:${claim}`);
      }
      case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
        return new TokenRefusal('Invalid token signature', error.code);
      case 'ERR_JOSE_ALG_NOT_ALLOWED':
      case 'ERR_JOSE_NOT_SUPPORTED':
        return new TokenRefusal('Token algorithm not allowed', error.code);
      case 'ERR_JWKS_NO_MATCHING_KEY':
      case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
        return new TokenRefusal('Invalid token signature', error.code);
      // The key server failed, not the client: 503 says "try again", 401 would say "your token is bad".
      case 'ERR_JWKS_TIMEOUT':
      case 'ERR_JWKS_INVALID':
        return new ServiceUnavailableError('The token keys are unavailable');
      default:
        return new TokenRefusal('Invalid token', error.code);
    }
  }
  // Outside jose's own errors: a JWKS fetch that failed (network), or a key jose cannot use.
  if (remoteKeys) return new ServiceUnavailableError('The token keys are unavailable');
  return new TokenRefusal('Invalid token', 'unexpected');
}

/** Checks exp/nbf of a payload a custom verify function returned (jose checks its own). */
function checkTimes(payload: JWTPayload, toleranceSec: number): void {
  const now = Date.now() / 1000;
  if (payload.exp !== undefined) {
    if (typeof payload.exp !== 'number') throw new TokenRefusal('Invalid token', 'exp-type');
    if (payload.exp + toleranceSec <= now) throw new TokenRefusal('Token expired', 'exp');
  }
  if (payload.nbf !== undefined) {
    if (typeof payload.nbf !== 'number') throw new TokenRefusal('Invalid token', 'nbf-type');
    if (payload.nbf - toleranceSec > now) throw new TokenRefusal('Token not yet valid', 'nbf');
  }
}

/**
 * The expiry timers of one plugin's sessions: each session has at most one, which a renewed
 * token re-arms (its `exp` replaces the old) or clears (a token without `exp`). A timer closes
 * the session with 1008 once its time has passed; it re-arms in steps because setTimeout cannot
 * wait more than ~24.8 days, is cleared when the session ends, and never keeps the process alive.
 */
class ExpiryTimers {
  readonly #timers = new WeakMap<PushSession, NodeJS.Timeout>();
  readonly #watched = new WeakSet<PushSession>();

  constructor(
    private readonly logger: Logger,
    private readonly name: string,
  ) {}

  /** Closes `session` at `atMs` (epoch ms), replacing its timer; undefined clears it. */
  set(session: PushSession, atMs: number | undefined): void {
    clearTimeout(this.#timers.get(session));
    this.#timers.delete(session);
    if (atMs === undefined || session.signal.aborted) return;
    if (!this.#watched.has(session)) {
      this.#watched.add(session);
      session.signal.addEventListener('abort', () => clearTimeout(this.#timers.get(session)), {
        once: true,
      });
    }
    const arm = (): void => {
      const left = atMs - Date.now();
      if (left <= 0) {
        this.#timers.delete(session);
        this.logger.debug(
          { plugin: this.name, sessionId: session.id },
          'pushwire: token expired, closing',
        );
        session.close(1008, 'token expired');
        return;
      }
      const timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
      timer.unref();
      this.#timers.set(session, timer);
    };
    arm();
  }
}

/**
 * A session-phase auth plugin verifying a JWT (see {@link JwtAuthOptions}).
 * It follows bahamut's auth chain: skipped when an earlier auth plugin said
 * ok; on success it sets the claims (`mapClaims`), marks the session
 * authenticated and keeps the payload in `ctx.state.jwt`. Refusals are 401
 * with a fixed description (`Token expired`, `Invalid token signature`…),
 * 503 when a JWKS cannot be fetched; never 500, never the token.
 *
 * A session it authenticated with the `token` query parameter (when
 * `tokenSources` has `'query'`) is verified again when a push config renews
 * that token (`parameters.token`, PROTOCOL.md section 4): the claims are
 * replaced by the new token's, `closeOnExpiry` follows the new `exp` (none:
 * no expiry), and a token that does not verify (or an empty one) closes the
 * session with 1008 and the refusal's fixed description; a JWKS that cannot
 * be fetched then closes it with 1001, so that the client reconnects.
 *
 * Throws TypeError at once for invalid options (a missing or doubled key
 * source, a short secret, `none` among the algorithms, an unknown option).
 */
export function jwtAuthPlugin(options: JwtAuthOptions): Plugin {
  if (options === null || typeof options !== 'object') fail('options must be an object');
  for (const key of Object.keys(options)) {
    // A misspelt `audiance` would leave the audience unchecked: refuse it loudly.
    if (!KNOWN_OPTIONS.has(key)) fail(`unknown option ${key}`);
  }
  const sources = [options.key, options.jwksUrl, options.verify].filter((s) => s !== undefined);
  if (sources.length !== 1) fail('give exactly one of key, jwksUrl, verify');

  const name = options.name ?? 'jwt';
  if (typeof name !== 'string' || name === '') fail('name must be a non-empty string');
  const logger = options.logger ?? silent;
  for (const level of ['debug', 'info', 'warn', 'error'] as const) {
    if (typeof logger[level] !== 'function') fail(`logger.${level} must be a function`);
  }
  const clockTolerance = options.clockTolerance ?? 0;
  if (
    typeof clockTolerance !== 'number' ||
    !Number.isFinite(clockTolerance) ||
    clockTolerance < 0
  ) {
    fail('clockTolerance must be a number of seconds >= 0');
  }
  const maxTokenLength = options.maxTokenLength ?? DEFAULT_MAX_TOKEN_LENGTH;
  if (!Number.isInteger(maxTokenLength) || maxTokenLength <= 0) {
    fail('maxTokenLength must be a positive integer');
  }
  const mapClaims = options.mapClaims ?? defaultJwtClaims;
  if (typeof mapClaims !== 'function') fail('mapClaims must be a function');
  const closeOnExpiry = options.closeOnExpiry ?? false;
  if (typeof closeOnExpiry !== 'boolean') fail('closeOnExpiry must be a boolean');
  const onMissingToken = options.onMissingToken ?? 'ko';
  if (onMissingToken !== 'ko' && onMissingToken !== 'continue') {
    fail("onMissingToken must be 'ko' or 'continue'");
  }
  const cookieName = options.cookieName;
  if (cookieName !== undefined && (typeof cookieName !== 'string' || cookieName === '')) {
    fail('cookieName must be a non-empty string');
  }
  const tokenSources: readonly JwtTokenSource[] =
    options.tokenSources ??
    (cookieName === undefined ? ['query', 'header'] : ['query', 'header', 'cookie']);
  if (
    !Array.isArray(tokenSources) ||
    tokenSources.length === 0 ||
    !tokenSources.every((s) => s === 'query' || s === 'header' || s === 'cookie') ||
    new Set(tokenSources).size !== tokenSources.length
  ) {
    fail("tokenSources must be a non-empty list of distinct 'query', 'header', 'cookie'");
  }
  if (tokenSources.includes('cookie') && cookieName === undefined) {
    fail("tokenSources has 'cookie' but no cookieName is set");
  }

  let verifier: Verifier;
  const remoteKeys = options.jwksUrl !== undefined;
  const checkShape = options.verify === undefined;
  if (options.verify !== undefined) {
    const verify = options.verify;
    if (typeof verify !== 'function') fail('verify must be a function');
    for (const opt of ['algorithms', 'issuer', 'audience', 'requiredClaims', 'jwksOptions']) {
      if (options[opt as keyof JwtAuthOptions] !== undefined) {
        fail(`${opt} is checked by jose and cannot be combined with verify; check it in verify`);
      }
    }
    verifier = async (token) => {
      let payload: unknown;
      try {
        payload = await verify(token);
      } catch (error) {
        // The function's own message may quote the token: only a deliberate PushError is kept.
        if (error instanceof PushError) throw error;
        throw new TokenRefusal('Invalid token', 'verify-threw');
      }
      if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
        throw new TokenRefusal('Invalid token', 'verify-returned-no-payload');
      }
      checkTimes(payload as JWTPayload, clockTolerance);
      return payload as JWTPayload;
    };
  } else {
    let symmetric: boolean;
    let keyInput: JwtKey | ReturnType<typeof createRemoteJWKSet>;
    if (options.jwksUrl !== undefined) {
      let url: URL;
      try {
        url = new URL(String(options.jwksUrl));
      } catch {
        fail('jwksUrl is not a valid URL');
      }
      // Keys fetched over plain HTTP could be swapped by anyone on the path.
      if (url.protocol !== 'https:' && !(url.protocol === 'http:' && isLoopback(url.hostname))) {
        fail('jwksUrl must be https (http is allowed only on a loopback host)');
      }
      keyInput = createRemoteJWKSet(url, options.jwksOptions);
      symmetric = false;
    } else {
      const key = options.key;
      if (typeof key === 'string' || key instanceof Uint8Array) {
        const bytes = typeof key === 'string' ? new TextEncoder().encode(key) : key;
        if (bytes.byteLength < MIN_SECRET_BYTES) {
          fail(`an HMAC secret must be at least ${MIN_SECRET_BYTES} bytes`);
        }
        keyInput = bytes;
        symmetric = true;
      } else if (key !== null && typeof key === 'object') {
        keyInput = key;
        const k = key as { type?: unknown; kty?: unknown };
        symmetric = k.type === 'secret' || k.kty === 'oct';
      } else {
        fail('key must be a secret (string or Uint8Array), a KeyObject, a CryptoKey or a JWK');
      }
    }
    const algorithms = options.algorithms ?? (symmetric ? HMAC_ALGORITHMS : ASYMMETRIC_ALGORITHMS);
    if (!isStringList(algorithms) || algorithms.length === 0) {
      fail('algorithms must be a non-empty list of algorithm names');
    }
    if (algorithms.some((a) => a.toLowerCase() === 'none')) {
      fail("algorithms must not include 'none'");
    }
    const issuer = options.issuer;
    if (issuer !== undefined && typeof issuer !== 'string' && !isStringList(issuer)) {
      fail('issuer must be a string or a list of strings');
    }
    const audience = options.audience;
    if (audience !== undefined && typeof audience !== 'string' && !isStringList(audience)) {
      fail('audience must be a string or a list of strings');
    }
    if (options.requiredClaims !== undefined && !isStringList(options.requiredClaims)) {
      fail('requiredClaims must be a list of claim names');
    }
    const verifyOptions: JWTVerifyOptions = {
      algorithms: [...algorithms],
      clockTolerance,
      ...(issuer !== undefined
        ? { issuer: typeof issuer === 'string' ? issuer : [...issuer] }
        : {}),
      ...(audience !== undefined
        ? { audience: typeof audience === 'string' ? audience : [...audience] }
        : {}),
      ...(options.requiredClaims ? { requiredClaims: [...options.requiredClaims] } : {}),
    };
    const resolvedKey = keyInput;
    verifier = async (token) => {
      const { payload } =
        typeof resolvedKey === 'function'
          ? await jwtVerify(token, resolvedKey, verifyOptions)
          : await jwtVerify(token, resolvedKey, verifyOptions);
      return payload;
    };
  }

  /** The token from the first source that has one; a malformed Bearer header refuses. */
  const findToken = (session: PushSession): string | undefined => {
    for (const source of tokenSources) {
      if (source === 'query') {
        if (session.token !== '') return session.token;
      } else if (source === 'cookie') {
        const value = session.cookie(cookieName as string);
        if (value !== undefined && value !== '') return value;
      } else {
        const header = session.header('authorization');
        if (header === undefined || header.trim() === '') continue;
        // Another scheme (Basic for a proxy…) is someone else's credential: look further.
        if (!/^bearer(\s|$)/i.test(header.trimStart())) continue;
        const match = BEARER.exec(header.trim());
        if (match === null) throw new TokenRefusal('Malformed Authorization header', 'header');
        return match[1];
      }
    }
    return undefined;
  };

  /** Verifies a token and maps its claims; throws a refusal that never carries the token. */
  const verifyToken = async (token: string): Promise<{ payload: JWTPayload; claims: string[] }> => {
    if (token.length > maxTokenLength) throw new TokenRefusal('Token too long', 'too-long');
    // A custom verify may take other formats (JWE has five segments); jose wants a JWS.
    if (checkShape && !COMPACT_JWS.test(token)) {
      throw new TokenRefusal('Malformed token', 'malformed');
    }
    let payload: JWTPayload;
    try {
      payload = await verifier(token);
    } catch (error) {
      throw refusalFor(error, remoteKeys);
    }
    let claims: unknown;
    try {
      claims = mapClaims(payload);
    } catch {
      claims = undefined; // the mapper's message may quote the payload: a fixed refusal
    }
    if (!isStringList(claims)) throw new TokenRefusal('Invalid token', 'mapClaims');
    return { payload, claims: [...claims] };
  };

  /** Logs a refusal (never the token) and returns it as the PushError to throw. */
  const refused = (session: PushSession, error: unknown, message: string): PushError => {
    const refusal = refusalFor(error, remoteKeys);
    logger.debug(
      {
        plugin: name,
        sessionId: session.id,
        clientIP: session.clientIP,
        status: refusal.status,
        reason: refusal instanceof TokenRefusal ? refusal.reason : refusal.code,
      },
      message,
    );
    return refusal;
  };

  /** When a payload's session must close (epoch ms), or undefined when it need not. */
  const expiryOf = (payload: JWTPayload): number | undefined =>
    closeOnExpiry && typeof payload.exp === 'number'
      ? (payload.exp + clockTolerance) * 1000
      : undefined;

  /** Each session's expiry until it starts (the timer needs an open session). */
  const expiries = new WeakMap<PushSession, number>();
  const timers = new ExpiryTimers(logger, name);
  /** Sessions this plugin authenticated from the `token` query parameter: renewals re-verify. */
  const renewable = new WeakSet<PushSession>();
  /** Sessions whose timer runs (onSessionStart has run): a renewal re-arms it. */
  const started = new WeakSet<PushSession>();

  return {
    name,
    async session(ctx, next) {
      if (ctx.authenticated) return next();
      const { session } = ctx;
      let payload: JWTPayload | undefined;
      let fromQuery = false;
      // Only this plugin's own work is in the try: what later plugins throw keeps its own meaning.
      try {
        const token = findToken(session);
        if (token === undefined && onMissingToken === 'ko') {
          throw new TokenRefusal('Missing token', 'missing');
        }
        if (token !== undefined) {
          const verified = await verifyToken(token);
          payload = verified.payload;
          session.setClaims(verified.claims);
          fromQuery = tokenSources.includes('query') && token === session.token;
        }
      } catch (error) {
        throw refused(session, error, 'pushwire: jwt refused');
      }
      if (payload === undefined) return next(); // no token, and onMissingToken is 'continue'
      ctx.authenticated = true;
      ctx.state.jwt = payload;
      if (fromQuery) renewable.add(session);
      const at = expiryOf(payload);
      if (at !== undefined) expiries.set(session, at);
      return next();
    },
    onSessionStart(session) {
      started.add(session);
      const at = expiries.get(session);
      expiries.delete(session);
      timers.set(session, at);
    },
    async onTokenRenewal(session, token) {
      if (!renewable.has(session)) return;
      let verified: { payload: JWTPayload; claims: string[] };
      try {
        if (token === '') throw new TokenRefusal('Missing token', 'missing');
        verified = await verifyToken(token);
      } catch (error) {
        // Thrown to the core, which closes the session with the refusal's close code.
        throw refused(session, error, 'pushwire: jwt renewal refused');
      }
      session.setClaims(verified.claims);
      // The new token's exp replaces the old one's; a token without exp lifts the expiry.
      const at = expiryOf(verified.payload);
      if (started.has(session)) timers.set(session, at);
      else if (at === undefined) expiries.delete(session);
      else expiries.set(session, at);
    },
  };
}
