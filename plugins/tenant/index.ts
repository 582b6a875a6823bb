/**
 * tenantIsolationPlugin: a dispatch plugin that delivers an event only to
 * sessions whose namespace claim is the event's namespace or one of its
 * ancestors. `/acme` sees `/acme` and `/acme/x`; it never sees `/acmex` or
 * `/other`. It reads claims, which only the session phase (auth plugins)
 * sets, never a push config's `parameters`, which the client controls.
 */
import type {
  Logger,
  Plugin,
  PublicationHeaders,
  PushSession,
  WireEvent,
} from '../../lib/index.js';

/** Options of {@link tenantIsolationPlugin}. */
export interface TenantIsolationOptions {
  /** The claim key holding the session's namespace (`namespace=/acme`). Default `namespace`. */
  claim?: string;
  /**
   * The event's namespace, computed once per event. Default: the entity's
   * `namespace` attribute when it is a string. Returning undefined, or
   * throwing, delivers the event to no session.
   */
  namespaceOf?: (event: WireEvent, publication: Readonly<PublicationHeaders>) => string | undefined;
  /** Where events without a namespace are reported (debug). Default: silent. */
  logger?: Logger;
  /** The plugin's name in logs. Default `tenant`. */
  name?: string;
}

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** Strips trailing slashes (`/acme/` is `/acme`) but keeps the root `/`. */
function normalize(namespace: string): string {
  const trimmed = namespace.replace(/\/+$/, '');
  return trimmed === '' && namespace.startsWith('/') ? '/' : trimmed;
}

/**
 * True when `namespace` is `ancestor` or below it, segment-wise: `/acme/x`
 * is under `/acme`, `/acmex` is not. Both normalized; an empty ancestor
 * contains nothing.
 */
export function isWithinNamespace(namespace: string, ancestor: string): boolean {
  if (ancestor === '' || namespace === '') return false;
  if (namespace === ancestor) return true;
  const prefix = ancestor === '/' ? '/' : ancestor + '/';
  return namespace.startsWith(prefix);
}

function defaultNamespaceOf(event: WireEvent): string | undefined {
  const entity = event.entity as { namespace?: unknown } | null;
  if (entity === null || typeof entity !== 'object') return undefined;
  return typeof entity.namespace === 'string' ? entity.namespace : undefined;
}

/**
 * A dispatch plugin isolating tenants by namespace (see
 * {@link TenantIsolationOptions}). Fails closed: a session without the
 * claim, or an event without a namespace, gets nothing. The event's
 * namespace is computed once per event; the per-session check is
 * synchronous and reads a per-session cache of the claim's values (a
 * session may hold several: `namespace=/a`, `namespace=/b`). Throws
 * TypeError at once for invalid options.
 */
export function tenantIsolationPlugin(options: TenantIsolationOptions = {}): Plugin {
  if (options === null || typeof options !== 'object') {
    throw new TypeError('tenantIsolationPlugin: options must be an object');
  }
  for (const key of Object.keys(options)) {
    if (!['claim', 'namespaceOf', 'logger', 'name'].includes(key)) {
      throw new TypeError(`tenantIsolationPlugin: unknown option ${key}`);
    }
  }
  const claim = options.claim ?? 'namespace';
  if (typeof claim !== 'string' || claim === '' || claim.includes('=')) {
    throw new TypeError('tenantIsolationPlugin: claim must be a non-empty key without =');
  }
  const namespaceOf = options.namespaceOf ?? defaultNamespaceOf;
  if (typeof namespaceOf !== 'function') {
    throw new TypeError('tenantIsolationPlugin: namespaceOf must be a function');
  }
  const name = options.name ?? 'tenant';
  const logger = options.logger ?? silent;
  const claimPrefix = `${claim}=`;

  // Claims are a frozen array replaced by setClaims(): keyed by that array, the cache can never go stale.
  const cache = new WeakMap<readonly string[], readonly string[]>();
  const namespacesOf = (session: PushSession): readonly string[] => {
    const claims = session.claims;
    let namespaces = cache.get(claims);
    if (namespaces === undefined) {
      namespaces = claims
        .filter((c) => c.startsWith(claimPrefix))
        .map((c) => normalize(c.slice(claimPrefix.length)))
        .filter((ns) => ns !== '');
      cache.set(claims, namespaces);
    }
    return namespaces;
  };
  const nobody = (): boolean => false;

  return {
    name,
    dispatch(ctx, next) {
      let namespace: string | undefined;
      try {
        const raw = namespaceOf(ctx.event, ctx.publication);
        namespace = typeof raw === 'string' ? normalize(raw) : undefined;
      } catch {
        namespace = undefined;
      }
      if (namespace === undefined || namespace === '') {
        logger.debug(
          { plugin: name, identity: ctx.event.identity, type: ctx.event.type },
          'pushwire: event without a namespace delivered to no session',
        );
        ctx.predicates.push(nobody);
        return next();
      }
      const eventNamespace = namespace;
      ctx.predicates.push((session) => {
        const namespaces = namespacesOf(session);
        for (let i = 0; i < namespaces.length; i++) {
          if (isWithinNamespace(eventNamespace, namespaces[i] as string)) return true;
        }
        return false;
      });
      return next();
    },
  };
}
