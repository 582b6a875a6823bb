/**
 * Abuse limits as plugins: connection attempts per client per interval,
 * and open sessions per client address and per claim. Both refuse with 429
 * (TooManyRequestsError) before the handshake. The two limits that need the
 * core are options of pushMiddleware: `maxPayload` (a larger client message
 * closes with 1009) and `maxConfigsPerSecond` (push configs per session).
 *
 * Client addresses come from `session.clientIP`: the socket's address, or
 * the forwarded one when Express's `trust proxy` is set. Behind a proxy,
 * set `trust proxy`, or every client shares the proxy's address and limit.
 */
import { isIP } from 'node:net';
import {
  TooManyRequestsError,
  type Logger,
  type Plugin,
  type PushSession,
} from '../../lib/index.js';

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

function nonNegativeInteger(
  plugin: string,
  option: string,
  value: unknown,
  fallback: number,
): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new TypeError(`${plugin}: ${option} must be an integer >= 0`);
  }
  return value;
}

function checkKeys(plugin: string, options: object, known: readonly string[]): void {
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) throw new TypeError(`${plugin}: unknown option ${key}`);
  }
}

/** Expands an IPv6 address (already validated by isIP) into its eight 16-bit groups. */
function ipv6Groups(address: string): number[] | undefined {
  let text = address.split('%')[0] as string; // drop a zone id (fe80::1%eth0)
  const lastColon = text.lastIndexOf(':');
  const last = text.slice(lastColon + 1);
  if (last.includes('.')) {
    // An embedded IPv4 tail (::ffff:10.0.0.1) is two groups.
    const [a = 0, b = 0, c = 0, d = 0] = last.split('.').map(Number);
    text = `${text.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16)));
  const left = parse(halves[0] as string);
  const right = halves.length === 2 ? parse(halves[1] as string) : [];
  const fill = 8 - left.length - right.length;
  if (fill < 0 || (halves.length === 1 && fill !== 0)) return undefined;
  const groups = [...left, ...new Array<number>(fill).fill(0), ...right];
  return groups.some((g) => Number.isNaN(g)) ? undefined : groups;
}

/**
 * The default client key of the limits: the IPv4 address (an IPv4-mapped
 * IPv6 address counts as its IPv4 address), or the /64 prefix of an IPv6
 * address — one IPv6 host usually owns a whole /64, so counting single
 * addresses would let it pick a fresh one per attempt.
 */
export function clientKey(address: string): string {
  if (isIP(address) === 4) return address;
  if (isIP(address.split('%')[0] as string) !== 6) return address;
  const groups = ipv6Groups(address);
  if (groups === undefined) return address;
  const mapped = groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff;
  if (mapped) {
    const hi = groups[6] as number;
    const lo = groups[7] as number;
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  return `${groups
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(':')}::/64`;
}

// ---------------------------------------------------------------------------
// Connection attempts

/** Options of {@link connectionRateLimitPlugin}. */
export interface ConnectionRateLimitOptions {
  /** Attempts allowed per client per interval; the next ones get 429. 0 disables. Default 30. */
  maxAttempts?: number;
  /** The length of a counting window in ms (fixed windows). Default 10,000. */
  intervalMs?: number;
  /**
   * Clients counted at once; past it the oldest window is forgotten (that
   * client starts again from zero). Bounds memory under a flood of
   * addresses. Default 10,000 (about 1 MB).
   */
  maxTrackedClients?: number;
  /** The key a client is counted under. Default {@link clientKey} of `session.clientIP`. */
  keyOf?: (session: PushSession) => string;
  /** The clock, in ms. Default Date.now (tests pass their own). */
  now?: () => number;
  /** Where refusals are logged (debug). Default: silent. */
  logger?: Logger;
  /** The plugin's name in logs. Default `connection-rate-limit`. */
  name?: string;
}

/** The rate-limit plugin, with a view of its memory for monitoring and tests. */
export interface ConnectionRateLimitPlugin extends Plugin {
  /** Clients whose window is being counted now (at most `maxTrackedClients`). */
  readonly trackedClients: number;
}

/**
 * Limits connection attempts per client (address) per interval: past
 * `maxAttempts` in one window the attempt is refused with 429 before the
 * handshake and before any later plugin runs — register it first, so that
 * a flood never reaches token verification. Each attempt counts, accepted
 * or not. Counters live in fixed windows in a map ordered by window start:
 * expired windows are swept from its front on every attempt, and beyond
 * `maxTrackedClients` the oldest is evicted, so memory is bounded whatever
 * the number of addresses. Throws TypeError at once for invalid options.
 */
export function connectionRateLimitPlugin(
  options: ConnectionRateLimitOptions = {},
): ConnectionRateLimitPlugin {
  const plugin = 'connectionRateLimitPlugin';
  checkKeys(plugin, options, [
    'maxAttempts',
    'intervalMs',
    'maxTrackedClients',
    'keyOf',
    'now',
    'logger',
    'name',
  ]);
  const maxAttempts = nonNegativeInteger(plugin, 'maxAttempts', options.maxAttempts, 30);
  const intervalMs = nonNegativeInteger(plugin, 'intervalMs', options.intervalMs, 10_000);
  if (intervalMs === 0) throw new TypeError(`${plugin}: intervalMs must be > 0`);
  const maxTracked = nonNegativeInteger(
    plugin,
    'maxTrackedClients',
    options.maxTrackedClients,
    10_000,
  );
  if (maxTracked === 0) throw new TypeError(`${plugin}: maxTrackedClients must be > 0`);
  const keyOf = options.keyOf ?? ((session: PushSession) => clientKey(session.clientIP));
  const now = options.now ?? Date.now;
  if (typeof keyOf !== 'function' || typeof now !== 'function') {
    throw new TypeError(`${plugin}: keyOf and now must be functions`);
  }
  const logger = options.logger ?? silent;
  const name = options.name ?? 'connection-rate-limit';

  /** key → its window; Map keeps insertion order, and a window is re-inserted when it restarts. */
  const windows = new Map<string, { start: number; count: number }>();

  const result: ConnectionRateLimitPlugin = {
    name,
    get trackedClients() {
      return windows.size;
    },
    session(ctx, next) {
      if (maxAttempts === 0) return next();
      const t = now();
      // The front holds the oldest windows: drop the expired ones (amortized O(1) per attempt).
      for (const [key, w] of windows) {
        if (t - w.start < intervalMs) break;
        windows.delete(key);
      }
      const key = keyOf(ctx.session);
      let w = windows.get(key);
      if (w === undefined || t - w.start >= intervalMs) {
        windows.delete(key);
        w = { start: t, count: 0 };
        windows.set(key, w);
        while (windows.size > maxTracked) {
          const oldest = windows.keys().next().value as string;
          windows.delete(oldest);
        }
      }
      w.count++;
      if (w.count > maxAttempts) {
        const retryAfter = Math.max(1, Math.ceil((w.start + intervalMs - t) / 1000));
        logger.debug(
          { plugin: name, clientIP: ctx.session.clientIP, attempts: w.count },
          'pushwire: too many connection attempts',
        );
        throw new TooManyRequestsError('Too many connection attempts', { data: { retryAfter } });
      }
      return next();
    },
  };
  return result;
}

// ---------------------------------------------------------------------------
// Open sessions

/** Options of {@link sessionLimitPlugin}. */
export interface SessionLimitOptions {
  /** Open sessions per client address. 0 disables. Default 50. */
  maxPerIP?: number;
  /** The claim key whose value is counted (`sub=alice`); sessions without it are not. Default `sub`. */
  claim?: string;
  /** Open sessions per value of `claim`. 0 disables. Default 20. */
  maxPerClaim?: number;
  /** The key a client address is counted under. Default {@link clientKey} of `session.clientIP`. */
  keyOf?: (session: PushSession) => string;
  /** Where refusals are logged (debug). Default: silent. */
  logger?: Logger;
  /** The plugin's name in logs. Default `session-limit`. */
  name?: string;
}

/** The session-limit plugin, with a view of its memory for monitoring and tests. */
export interface SessionLimitPlugin extends Plugin {
  /** Open sessions counted for an address key (see `keyOf`). */
  sessionsFor(addressKey: string): number;
  /** Open sessions counted for a claim value. */
  sessionsForClaim(value: string): number;
  /** Addresses and claim values with at least one open session (entries are removed at zero). */
  readonly trackedKeys: number;
}

/**
 * Limits open sessions per client address and per claim value (one user's
 * tabs and devices). A new session over a limit is refused with 429 before
 * the handshake: the address is checked before the later plugins run, the
 * claim after them (auth sets claims), so its position in the chain does
 * not matter. Sessions are counted from onSessionStart to onSessionStop;
 * attempts that pass the check together can overshoot, so a session that
 * finds itself over the limit once started is closed with 1008. Memory
 * holds only keys with open sessions. Throws TypeError at once for invalid
 * options.
 */
export function sessionLimitPlugin(options: SessionLimitOptions = {}): SessionLimitPlugin {
  const plugin = 'sessionLimitPlugin';
  checkKeys(plugin, options, ['maxPerIP', 'claim', 'maxPerClaim', 'keyOf', 'logger', 'name']);
  const maxPerIP = nonNegativeInteger(plugin, 'maxPerIP', options.maxPerIP, 50);
  const maxPerClaim = nonNegativeInteger(plugin, 'maxPerClaim', options.maxPerClaim, 20);
  const claim = options.claim ?? 'sub';
  if (typeof claim !== 'string' || claim === '') {
    throw new TypeError(`${plugin}: claim must be a non-empty string`);
  }
  const keyOf = options.keyOf ?? ((session: PushSession) => clientKey(session.clientIP));
  if (typeof keyOf !== 'function') throw new TypeError(`${plugin}: keyOf must be a function`);
  const logger = options.logger ?? silent;
  const name = options.name ?? 'session-limit';

  const perIP = new Map<string, number>();
  const perClaim = new Map<string, number>();
  /** What each started session was counted under, so that its stop undoes exactly that. */
  const counted = new WeakMap<PushSession, { ip: string | undefined; claim: string | undefined }>();

  const claimOf = (session: PushSession): string | undefined =>
    maxPerClaim === 0 ? undefined : session.claimsMap[claim];
  const add = (map: Map<string, number>, key: string, delta: number): number => {
    const n = (map.get(key) ?? 0) + delta;
    if (n <= 0) map.delete(key);
    else map.set(key, n);
    return n;
  };
  const refuse = (session: PushSession, what: string): never => {
    logger.debug(
      { plugin: name, sessionId: session.id, clientIP: session.clientIP, limit: what },
      'pushwire: too many sessions',
    );
    throw new TooManyRequestsError(`Too many sessions for this ${what}`);
  };

  return {
    name,
    sessionsFor: (key) => perIP.get(key) ?? 0,
    sessionsForClaim: (value) => perClaim.get(value) ?? 0,
    get trackedKeys() {
      return perIP.size + perClaim.size;
    },
    async session(ctx, next) {
      const { session } = ctx;
      if (maxPerIP > 0 && (perIP.get(keyOf(session)) ?? 0) >= maxPerIP) refuse(session, 'address');
      await next();
      const value = claimOf(session);
      if (value !== undefined && (perClaim.get(value) ?? 0) >= maxPerClaim) refuse(session, claim);
    },
    onSessionStart(session) {
      const ip = maxPerIP > 0 ? keyOf(session) : undefined;
      const value = claimOf(session);
      counted.set(session, { ip, claim: value });
      const ipCount = ip === undefined ? 0 : add(perIP, ip, 1);
      const claimCount = value === undefined ? 0 : add(perClaim, value, 1);
      if (
        (ip !== undefined && ipCount > maxPerIP) ||
        (value !== undefined && claimCount > maxPerClaim)
      ) {
        logger.debug(
          { plugin: name, sessionId: session.id, clientIP: session.clientIP },
          'pushwire: too many sessions (concurrent attempts), closing',
        );
        session.close(1008, 'too many sessions');
      }
    },
    onSessionStop(session) {
      const keys = counted.get(session);
      if (keys === undefined) return;
      counted.delete(session);
      if (keys.ip !== undefined) add(perIP, keys.ip, -1);
      if (keys.claim !== undefined) add(perClaim, keys.claim, -1);
    },
  };
}
