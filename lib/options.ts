/** The options of pushMiddleware and their defaults. */
import type { Plugin } from './chain.js';
import { silentLogger, type Logger } from './logger.js';
import { DEFAULT_FILTER_LIMITS, resolveLimits, type FilterLimits } from './protocol/filter.js';

/** What to do with a session whose client reads slower than events arrive. */
export type SlowConsumerPolicy = 'drop' | 'close';

/** Options of {@link pushMiddleware}. Every field is optional. */
export interface PushOptions {
  /** The plugin chain, first registered outermost. Default: none. */
  plugins?: Plugin[];
  /** The path of the endpoint under the mount point. Default `/events`. */
  endpoint?: string;
  /** Publish to `<topic>.<identity>.<type>` and subscribe to `<topic>.>`. Default false. */
  subjectHierarchies?: boolean;
  /**
   * Origins allowed to open a session (exact `scheme://host[:port]`, or a
   * predicate). A request without `Origin` (not a browser) is allowed.
   * Default: every origin — set it when sessions are authenticated by cookies.
   */
  allowedOrigins?: readonly string[] | ((origin: string) => boolean);
  /** Largest client message in bytes; larger closes with 1009. Default 64 KiB. */
  maxPayload?: number;
  /**
   * Push-config messages a session may send per second (a fixed one-second
   * window): each one is decoded and may compile filters, so a client must
   * not make the server do it without bound. Past it the message is ignored
   * and, with `enableErrors`, the client gets one error event (429) per
   * window; without it the session is closed with 1008. 0 disables. Default 10.
   */
  maxConfigsPerSecond?: number;
  /**
   * Most heap bytes one session's push config may hold once compiled
   * (identities, types, filters, patterns, parameters), as estimated from
   * above before compiling. A config past it is invalid: a 400 error event
   * with `enableErrors`, else a close with 1003. Compiled selectors are
   * shared between sessions with equal configs and freed with the last of
   * them, so what push configs hold in all is at most the open sessions
   * times this bound. 0 disables. Default 2 MiB.
   */
  maxPushConfigBytes?: number;
  /**
   * Bounds on the filters of push configs (docs/filters.md): any field of
   * `FilterLimits`, the others at their defaults (`DEFAULT_FILTER_LIMITS`).
   * `maxMatchCost` bounds what one event may cost a session's filter; raise
   * it only for filters that must search long text, knowing the worst case
   * grows with it. A limit that is not a positive integer (or Infinity)
   * throws a TypeError here.
   */
  filterLimits?: Partial<FilterLimits>;
  /** Milliseconds between keepalive pings; 0 disables. Default 30,000. */
  pingInterval?: number;
  /** Bytes a session may have waiting to be written before the slow-consumer policy applies. Default 1 MiB. */
  maxBufferedBytes?: number;
  /** `drop` (default, counted, as bahamut does) or `close` (1008). */
  slowConsumerPolicy?: SlowConsumerPolicy;
  /** Logger with pino's shape. Default: silent. */
  logger?: Logger;
  /** Retries of a failing publish, after the first attempt. Default 3, as bahamut. */
  publishRetries?: number;
  /** Delay before the first retry, doubled each time, in ms. Default 50. */
  publishRetryDelay?: number;
  /** Bound on the Express chain and the session phase of one connection attempt, in ms; past it the attempt gets 503. Default 10,000. */
  sessionTimeout?: number;
  /** Bound on flushing and closing sessions in close(), in ms. Default 5,000. */
  closeTimeout?: number;
  /** Bound on the dispatch plugins of one event, in ms; past it the event is dropped (logged). Default 10,000. */
  dispatchTimeout?: number;
}

/** The options with every default applied. */
export interface ResolvedOptions {
  plugins: Plugin[];
  endpoint: string;
  subjectHierarchies: boolean;
  allowedOrigins: ((origin: string) => boolean) | undefined;
  maxPayload: number;
  maxConfigsPerSecond: number;
  maxPushConfigBytes: number;
  filterLimits: Readonly<FilterLimits>;
  pingInterval: number;
  maxBufferedBytes: number;
  slowConsumerPolicy: SlowConsumerPolicy;
  logger: Logger;
  publishRetries: number;
  publishRetryDelay: number;
  sessionTimeout: number;
  closeTimeout: number;
  dispatchTimeout: number;
}

/**
 * Every option key: the one list the unknown-key check reads; the type below fails to compile
 * when PushOptions gains a key this list lacks.
 */
const OPTION_KEYS = [
  'plugins',
  'endpoint',
  'subjectHierarchies',
  'allowedOrigins',
  'maxPayload',
  'maxConfigsPerSecond',
  'maxPushConfigBytes',
  'filterLimits',
  'pingInterval',
  'maxBufferedBytes',
  'slowConsumerPolicy',
  'logger',
  'publishRetries',
  'publishRetryDelay',
  'sessionTimeout',
  'closeTimeout',
  'dispatchTimeout',
] as const;
type AssertTrue<T extends true> = T;
/** Compile-time only: `true` exactly when every key of PushOptions is in OPTION_KEYS. */
type _OptionKeysComplete = AssertTrue<
  [Exclude<keyof PushOptions, (typeof OPTION_KEYS)[number]>] extends [never] ? true : false
>;

/** Levenshtein distance, for naming the option a misspelt key meant. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current[j] = Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution);
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

/**
 * Throws TypeError for a key that is not an option, naming the closest one: a misspelt option
 * (`histroy`, `maxPayloads`) would otherwise be ignored without a word and its default used.
 */
function checkOptionKeys(options: object): void {
  for (const key of Object.keys(options)) {
    if ((OPTION_KEYS as readonly string[]).includes(key)) continue;
    let closest: string = OPTION_KEYS[0];
    let best = Infinity;
    for (const known of OPTION_KEYS) {
      const d = editDistance(key.toLowerCase(), known.toLowerCase());
      if (d < best) [best, closest] = [d, known];
    }
    throw new TypeError(
      `pushMiddleware: unknown option ${JSON.stringify(key)}; did you mean ${JSON.stringify(closest)}?`,
    );
  }
}

function nonNegative(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new TypeError(`pushMiddleware: option ${name} must be a number >= 0`);
  }
  return value;
}

/** The filter limits with the defaults filled in; a TypeError names an unknown or bad one. */
function resolveFilterLimits(limits: Partial<FilterLimits> | undefined): Readonly<FilterLimits> {
  if (limits === undefined) return DEFAULT_FILTER_LIMITS;
  if (limits === null || typeof limits !== 'object') {
    throw new TypeError('pushMiddleware: option filterLimits must be an object of FilterLimits');
  }
  for (const name of Object.keys(limits)) {
    if (!(name in DEFAULT_FILTER_LIMITS)) {
      throw new TypeError(
        `pushMiddleware: unknown filter limit ${JSON.stringify(name)} (known: ${Object.keys(DEFAULT_FILTER_LIMITS).join(', ')})`,
      );
    }
  }
  try {
    return Object.freeze(resolveLimits(limits));
  } catch (error) {
    if (error instanceof RangeError)
      throw new TypeError(`pushMiddleware: ${error.message}`, { cause: error });
    throw error;
  }
}

/** Validates options and applies defaults. Throws TypeError for an invalid or unknown option. */
export function resolveOptions(handlers: Plugin[] | PushOptions | undefined): ResolvedOptions {
  const options: PushOptions = Array.isArray(handlers) ? { plugins: handlers } : (handlers ?? {});
  checkOptionKeys(options);
  const plugins = options.plugins ?? [];
  if (!Array.isArray(plugins)) throw new TypeError('pushMiddleware: plugins must be an array');
  plugins.forEach((plugin, i) => {
    if (plugin === null || typeof plugin !== 'object') {
      throw new TypeError(`pushMiddleware: plugin ${i} is not an object`);
    }
  });
  const endpoint = options.endpoint ?? '/events';
  if (typeof endpoint !== 'string' || !endpoint.startsWith('/')) {
    throw new TypeError('pushMiddleware: endpoint must be a path starting with /');
  }
  let allowedOrigins: ((origin: string) => boolean) | undefined;
  if (typeof options.allowedOrigins === 'function') allowedOrigins = options.allowedOrigins;
  else if (options.allowedOrigins !== undefined) {
    const allowed = new Set(options.allowedOrigins.map((o) => o.toLowerCase().replace(/\/+$/, '')));
    allowedOrigins = (origin) => allowed.has(origin.toLowerCase());
  }
  const policy = options.slowConsumerPolicy ?? 'drop';
  if (policy !== 'drop' && policy !== 'close') {
    throw new TypeError("pushMiddleware: slowConsumerPolicy must be 'drop' or 'close'");
  }
  return {
    plugins,
    endpoint: endpoint.length > 1 ? endpoint.replace(/\/+$/, '') : endpoint,
    subjectHierarchies: options.subjectHierarchies === true,
    allowedOrigins,
    maxPayload: nonNegative('maxPayload', options.maxPayload, 64 * 1024),
    maxConfigsPerSecond: nonNegative('maxConfigsPerSecond', options.maxConfigsPerSecond, 10),
    maxPushConfigBytes: nonNegative(
      'maxPushConfigBytes',
      options.maxPushConfigBytes,
      2 * 1024 * 1024,
    ),
    filterLimits: resolveFilterLimits(options.filterLimits),
    pingInterval: nonNegative('pingInterval', options.pingInterval, 30_000),
    maxBufferedBytes: nonNegative('maxBufferedBytes', options.maxBufferedBytes, 1024 * 1024),
    slowConsumerPolicy: policy,
    logger: options.logger ?? silentLogger,
    publishRetries: nonNegative('publishRetries', options.publishRetries, 3),
    publishRetryDelay: nonNegative('publishRetryDelay', options.publishRetryDelay, 50),
    sessionTimeout: nonNegative('sessionTimeout', options.sessionTimeout, 10_000),
    closeTimeout: nonNegative('closeTimeout', options.closeTimeout, 5_000),
    dispatchTimeout: nonNegative('dispatchTimeout', options.dispatchTimeout, 10_000),
  };
}
