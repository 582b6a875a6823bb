/**
 * The push config (PROTOCOL.md section 4): what a client sends to choose
 * its events, its validation, and the identity step of dispatch (section 5,
 * step 3). No I/O here.
 */
import { decode } from './msgpack.js';
import { MSGPACK_MEDIA_TYPE, type Encoding } from './encoding.js';
import { compileFilter, FilterSyntaxError, type CompiledFilter } from './filter.js';

/** A push config as a client writes it. */
export interface PushConfigInput {
  /** Identity → the event types wanted (empty or null: every type). Absent or empty: every event. */
  identities?: Record<string, string[] | null>;
  /** Identity → a filter expression (section 7) on the entity; the identity must be in `identities`. */
  filters?: Record<string, string>;
  /** Merged into the session's parameters. */
  parameters?: Record<string, string[] | string>;
}

/** Bounds on a push config, so a client cannot make the server do unbounded work per event. */
export interface PushConfigLimits {
  /** Most identities in `identities`. Default 1,000. */
  maxIdentities: number;
  /** Most types listed for one identity. Default 100. */
  maxTypesPerIdentity: number;
  /** Most keys in `parameters`. Default 100. */
  maxParameters: number;
}

/** The defaults of {@link PushConfigLimits}. */
export const DEFAULT_PUSH_CONFIG_LIMITS: PushConfigLimits = {
  maxIdentities: 1000,
  maxTypesPerIdentity: 100,
  maxParameters: 100,
};

/**
 * An invalid push config: undecodable, of the wrong shape, or with a filter
 * that does not parse or names an undeclared identity. `data` says where.
 */
export class PushConfigError extends Error {
  /** Details for the error event's `data` (e.g. `{ identity, column }`). */
  readonly data: Record<string, unknown> | undefined;
  constructor(message: string, data?: Record<string, unknown>) {
    super(message);
    this.name = 'PushConfigError';
    this.data = data;
  }
}

/** The event fields the identity step reads; `entity` is read only when a filter needs it. */
export interface ConfigTarget {
  readonly identity: string;
  readonly type: string;
  readonly entity: unknown;
  /**
   * A number no other event of this process has (WireEvent numbers them):
   * the key of the verdict memo. Without it, nothing is remembered.
   */
  readonly memoKey?: number;
}

/**
 * Verdicts remembered per selector, in slots picked by the event's number:
 * events checked session by session (event 1, 2…, then the next session)
 * find theirs again where one remembered verdict would have been replaced.
 * A power of two; the fan-out's batches are no larger, so the events of a
 * batch that were numbered one after the other never share a slot.
 */
export const VERDICT_MEMO_SLOTS = 32;

/**
 * A selector's remembered verdicts, slot by slot. It keeps the events'
 * numbers, not the events: a selector outlives its sessions (interned), and
 * must not keep their payloads alive.
 */
interface VerdictMemo {
  keys: number[];
  related: (readonly string[] | undefined)[];
  verdicts: boolean[];
}

/**
 * The part of a push config that decides which events pass (identities,
 * types, filters), shared by every session that sent the same one, with its
 * verdicts on the latest events remembered: 1,000 sessions with one config
 * cost one evaluation per event, not 1,000.
 */
export class ConfigSelector {
  /** Identity → accepted types (null: all types); null when every event passes this step. */
  readonly identities: ReadonlyMap<string, ReadonlySet<string> | null> | null;
  /** Identity → compiled filter. */
  readonly filters: ReadonlyMap<string, CompiledFilter>;
  // Created on the first evaluation: most sessions' selectors are shared, but an idle
  // server with many distinct configs should not pay for memo slots it never uses.
  #memo: VerdictMemo | undefined;

  constructor(
    identities: Map<string, Set<string> | null> | null,
    filters: Map<string, CompiledFilter>,
  ) {
    this.identities = identities;
    this.filters = filters;
  }

  /** See {@link PushConfig.allows}. */
  allows(event: ConfigTarget, related: readonly string[]): boolean {
    if (this.identities === null) return true;
    const key = event.memoKey;
    if (key === undefined) return this.#evaluate(event, related);
    // Events are immutable once received, so the verdict for the same event holds.
    const slot = key & (VERDICT_MEMO_SLOTS - 1);
    const memo = (this.#memo ??= {
      keys: new Array<number>(VERDICT_MEMO_SLOTS).fill(-1),
      related: new Array<undefined>(VERDICT_MEMO_SLOTS).fill(undefined),
      verdicts: new Array<boolean>(VERDICT_MEMO_SLOTS).fill(false),
    });
    if (memo.keys[slot] === key && memo.related[slot] === related) {
      return memo.verdicts[slot] as boolean;
    }
    const verdict = this.#evaluate(event, related);
    memo.keys[slot] = key;
    memo.related[slot] = related;
    memo.verdicts[slot] = verdict;
    return verdict;
  }

  #evaluate(event: ConfigTarget, related: readonly string[]): boolean {
    let verdict = this.#allowsIdentity(event.identity, event);
    for (let i = 0; !verdict && i < related.length; i++) {
      verdict = this.#allowsIdentity(related[i] as string, event);
    }
    return verdict;
  }

  #allowsIdentity(identity: string, event: ConfigTarget): boolean {
    const types = (this.identities as ReadonlyMap<string, ReadonlySet<string> | null>).get(
      identity,
    );
    if (types === undefined) return false;
    if (types !== null && !types.has(event.type)) return false;
    const filter = this.filters.get(identity);
    if (filter === undefined) return true;
    try {
      return filter.match(event.entity);
    } catch {
      return false;
    }
  }
}

/** Selectors by their source text; bounded so that clients cannot grow it without limit. */
const selectors = new Map<string, ConfigSelector>();
const MAX_INTERNED_SELECTORS = 10_000;

function internSelector(
  key: string,
  identities: Map<string, Set<string> | null> | null,
  filters: Map<string, CompiledFilter>,
): ConfigSelector {
  const known = selectors.get(key);
  if (known !== undefined) return known;
  if (selectors.size >= MAX_INTERNED_SELECTORS) selectors.clear();
  const selector = new ConfigSelector(identities, filters);
  selectors.set(key, selector);
  return selector;
}

/** A validated push config, its filters compiled once. */
export class PushConfig {
  /** The identities-and-filters part, shared between sessions that sent the same one. */
  readonly selector: ConfigSelector;
  /** The parameters to merge into the session. */
  readonly parameters: Readonly<Record<string, readonly string[]>>;
  /** The config as the client sent it, normalized (for plugins and logs). */
  readonly input: Readonly<PushConfigInput>;

  constructor(
    selector: ConfigSelector,
    parameters: Record<string, string[]>,
    input: PushConfigInput,
  ) {
    this.selector = selector;
    this.parameters = parameters;
    this.input = input;
  }

  /** Identity → accepted types (null: all types); null when every event passes this step. */
  get identities(): ReadonlyMap<string, ReadonlySet<string> | null> | null {
    return this.selector.identities;
  }

  /** Identity → compiled filter. */
  get filters(): ReadonlyMap<string, CompiledFilter> {
    return this.selector.filters;
  }

  /** True when this config has a filter on some identity. */
  get hasFilters(): boolean {
    return this.selector.filters.size > 0;
  }

  /**
   * Step 3 of dispatch: the event passes if its own identity, or one of
   * `related`, is accepted with the event's type and, where that identity
   * has a filter, the filter matches the entity. An entity that does not
   * decode matches no filter.
   */
  allows(event: ConfigTarget, related: readonly string[]): boolean {
    return this.selector.allows(event, related);
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  // Only a map decodes to a plain object: a MessagePack timestamp decodes to
  // a Date, a bin to a Uint8Array, an unknown extension to an ExtData; none
  // of them is a push config (a Date has no keys and passed as `{}`).
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * Decodes a client message in the session's read encoding. Throws
 * {@link PushConfigError} when it does not decode.
 */
export function decodePushConfigMessage(data: Uint8Array, encoding: Encoding): unknown {
  try {
    if (encoding === MSGPACK_MEDIA_TYPE) return decode(data);
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(data));
  } catch (error) {
    throw new PushConfigError(
      `the push config does not decode as ${encoding}: ${(error as Error).message}`,
    );
  }
}

/**
 * Validates a decoded push config and compiles its filters. Throws
 * {@link PushConfigError} with a message that says what is wrong.
 */
export function parsePushConfig(
  value: unknown,
  limits: PushConfigLimits = DEFAULT_PUSH_CONFIG_LIMITS,
): PushConfig {
  if (!isPlainObject(value)) throw new PushConfigError('the push config must be an object');
  for (const key of Object.keys(value)) {
    if (key !== 'identities' && key !== 'filters' && key !== 'parameters') {
      throw new PushConfigError(`unknown push config key ${JSON.stringify(key)}`, { key });
    }
  }
  const input: PushConfigInput = {};

  let identities: Map<string, Set<string> | null> | null = null;
  if (value.identities !== undefined && value.identities !== null) {
    if (!isPlainObject(value.identities)) {
      throw new PushConfigError('identities must be an object of identity → list of types');
    }
    const entries = Object.entries(value.identities);
    if (entries.length > limits.maxIdentities) {
      throw new PushConfigError(`too many identities (at most ${limits.maxIdentities})`);
    }
    // No prototype: a client's `__proto__` key must stay a plain key.
    input.identities = Object.create(null) as Record<string, string[]>;
    if (entries.length > 0) identities = new Map();
    for (const [identity, types] of entries) {
      if (types === null || (Array.isArray(types) && types.length === 0)) {
        identities?.set(identity, null);
        input.identities[identity] = [];
        continue;
      }
      if (!Array.isArray(types) || !types.every((t) => typeof t === 'string')) {
        throw new PushConfigError(`identities.${identity} must be a list of event types`, {
          identity,
        });
      }
      if (types.length > limits.maxTypesPerIdentity) {
        throw new PushConfigError(
          `identities.${identity} lists too many types (at most ${limits.maxTypesPerIdentity})`,
          { identity },
        );
      }
      identities?.set(identity, new Set(types as string[]));
      input.identities[identity] = [...(types as string[])];
    }
  }

  const filters = new Map<string, CompiledFilter>();
  if (value.filters !== undefined && value.filters !== null) {
    if (!isPlainObject(value.filters)) {
      throw new PushConfigError('filters must be an object of identity → filter expression');
    }
    input.filters = Object.create(null) as Record<string, string>;
    for (const [identity, source] of Object.entries(value.filters)) {
      if (typeof source !== 'string') {
        throw new PushConfigError(`filters.${identity} must be a string`, { identity });
      }
      if (identities === null || !identities.has(identity)) {
        throw new PushConfigError(
          `filters.${identity} names an identity that is not in identities`,
          { identity },
        );
      }
      try {
        filters.set(identity, compileFilter(source));
      } catch (error) {
        if (error instanceof FilterSyntaxError) {
          throw new PushConfigError(`filters.${identity}: ${error.message}`, {
            identity,
            column: error.column,
            expected: error.expected,
          });
        }
        throw error;
      }
      input.filters[identity] = source;
    }
  }

  const parameters = Object.create(null) as Record<string, string[]>;
  if (value.parameters !== undefined && value.parameters !== null) {
    if (!isPlainObject(value.parameters)) {
      throw new PushConfigError('parameters must be an object of name → list of strings');
    }
    const entries = Object.entries(value.parameters);
    if (entries.length > limits.maxParameters) {
      throw new PushConfigError(`too many parameters (at most ${limits.maxParameters})`);
    }
    for (const [name, v] of entries) {
      if (typeof v === 'string') parameters[name] = [v];
      else if (Array.isArray(v) && v.every((s) => typeof s === 'string')) parameters[name] = [...v];
      else {
        throw new PushConfigError(`parameters.${name} must be a string or a list of strings`, {
          parameter: name,
        });
      }
    }
    input.parameters = parameters;
  }

  // The key is the normalized text of what decides dispatch: equal texts select the same events.
  const key = JSON.stringify([input.identities ?? null, input.filters ?? null]);
  return new PushConfig(internSelector(key, identities, filters), parameters, input);
}
