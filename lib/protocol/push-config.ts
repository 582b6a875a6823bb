/**
 * The push config (PROTOCOL.md section 4): what a client sends to choose
 * its events, its validation, and the identity step of dispatch (section 5,
 * step 3). No I/O here.
 */
import { decode } from './msgpack.js';
import { MSGPACK_MEDIA_TYPE, type Encoding } from './encoding.js';
import {
  compileFilter,
  FilterSyntaxError,
  type CompiledFilter,
  type FilterLimits,
} from './filter.js';
import { DFA_BUDGET_BYTES, isPlainTextPattern } from './pattern.js';

/** A push config as a client writes it. */
export interface PushConfigInput {
  /** Identity → the event types wanted (empty or null: every type). Absent or empty: every event. */
  identities?: Record<string, string[] | null>;
  /** Identity → a filter expression (section 7) on the entity; the identity must be in `identities`. */
  filters?: Record<string, string>;
  /** Merged into the session's parameters. */
  parameters?: Record<string, string[] | string>;
  /**
   * History extension (docs/PROTOCOL.md, "Recovery"): the position of the last event the client
   * received; the server replays what came after it. A value that is not a string is kept as
   * `''`, which no history knows: the answer is `recovered: false`, never an error.
   */
  since?: string;
}

/** The longest `since` kept: longer is no position of any backend. */
const MAX_POSITION_LENGTH = 200;

/** The parameters of every config that sets none: one frozen object shared by all of them. */
const NO_PARAMETERS: Readonly<Record<string, readonly string[]>> = Object.freeze(
  Object.create(null) as Record<string, readonly string[]>,
);

/** Bounds on a push config, so a client cannot make the server do unbounded work per event. */
export interface PushConfigLimits {
  /** Most identities in `identities`. Default 1,000. */
  maxIdentities: number;
  /** Most types listed for one identity. Default 100. */
  maxTypesPerIdentity: number;
  /** Most keys in `parameters`. Default 100. */
  maxParameters: number;
  /**
   * Most heap bytes the config may hold once compiled, by
   * {@link estimatePushConfigBytes} (never below the real figure);
   * `Infinity` lifts the bound. Default 2 MiB (the server's
   * `maxPushConfigBytes`).
   */
  maxBytes: number;
  /** Bounds on each filter (docs/filters.md); absent fields take `DEFAULT_FILTER_LIMITS`. */
  filters?: Partial<FilterLimits>;
}

/** The defaults of {@link PushConfigLimits}. */
export const DEFAULT_PUSH_CONFIG_LIMITS: Readonly<PushConfigLimits> = Object.freeze({
  maxIdentities: 1000,
  maxTypesPerIdentity: 100,
  maxParameters: 100,
  maxBytes: 2 * 1024 * 1024,
});

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
 * numbers, not the events: a selector lives as long as the sessions (and
 * plugins) that hold it, and must not keep the payloads alive with it.
 */
interface VerdictMemo {
  keys: number[];
  related: (readonly string[] | undefined)[];
  verdicts: boolean[];
}

/**
 * The part of a push config that decides which events pass (identities,
 * types, filters), shared through a {@link SelectorPool} by every session
 * that sent the same one, with its verdicts on the latest events
 * remembered: 1,000 sessions with one config cost one evaluation per event,
 * not 1,000.
 */
export class ConfigSelector {
  /** The normalized text of what decides dispatch: equal keys select the same events. */
  readonly key: string;
  /** Identity → accepted types (null: all types); null when every event passes this step. */
  readonly identities: ReadonlyMap<string, ReadonlySet<string> | null> | null;
  /** Identity → compiled filter. */
  readonly filters: ReadonlyMap<string, CompiledFilter>;
  // Created on the first evaluation: most sessions' selectors are shared, but an idle
  // server with many distinct configs should not pay for memo slots it never uses.
  #memo: VerdictMemo | undefined;

  constructor(
    key: string,
    identities: Map<string, Set<string> | null> | null,
    filters: Map<string, CompiledFilter>,
  ) {
    this.key = key;
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

/** A selector in a pool, and how many held configs use it. */
interface PoolEntry {
  readonly selector: ConfigSelector;
  /** The input of configs that carry only a selection (no parameters, no `since`), shared by them. */
  readonly selection: Readonly<PushConfigInput>;
  refs: number;
}

/** True when a config's input is its identities and filters alone. */
function selectsOnly(input: Readonly<PushConfigInput>): boolean {
  if (input.since !== undefined) return false;
  const parameters = input.parameters;
  if (parameters === undefined) return true;
  for (const _ in parameters) return false;
  return true;
}

/** The identities-and-filters part of an input, as a config that sent only those has it. */
function selectionOf(input: Readonly<PushConfigInput>): Readonly<PushConfigInput> {
  if (selectsOnly(input)) return input;
  const selection: PushConfigInput = {};
  if (input.identities !== undefined) selection.identities = input.identities;
  if (input.filters !== undefined) selection.filters = input.filters;
  return selection;
}

/**
 * The selectors in use by a server's sessions, one per distinct config,
 * each counted by the configs that hold it and forgotten with the last:
 * equal configs share one selector (and its verdict memo) for as long as
 * one session uses it, and nothing outlives the sessions. Why not a
 * module-level cache: bounded by entries, it kept up to 10,000 selectors of
 * any size after their sessions had gone (issue 19: 242 MB after one
 * client's 100 configs). With the pool, the selectors in memory are those
 * of open sessions, so their total is bounded by sessions ×
 * `maxPushConfigBytes`.
 */
export class SelectorPool {
  readonly #entries = new Map<string, PoolEntry>();
  /** The entry each acquired config holds (weak: a config the caller drops needs no release to be collected). */
  readonly #held = new WeakMap<PushConfig, PoolEntry>();

  /** Distinct selectors held now. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Takes a reference on the selector of a config equal to `config` (its
   * own when none is held yet) and returns the config to keep: `config`, or
   * a copy sharing the held selector. Give it back with {@link release}.
   * A copy of a config that selects only also shares the input of the
   * first: a session's own copy of `{ identities, filters }` was a few
   * hundred bytes of an idle session, the same for thousands of sessions.
   */
  acquire(config: PushConfig): PushConfig {
    const key = config.selector.key;
    let entry = this.#entries.get(key);
    if (entry === undefined) {
      entry = { selector: config.selector, selection: selectionOf(config.input), refs: 0 };
      this.#entries.set(key, entry);
    }
    const input = selectsOnly(config.input) ? entry.selection : config.input;
    const held =
      entry.selector === config.selector && !this.#held.has(config)
        ? config
        : new PushConfig(entry.selector, config.parameters, input, config.estimatedBytes);
    entry.refs++;
    this.#held.set(held, entry);
    return held;
  }

  /**
   * Gives back the reference a config returned by {@link acquire} holds;
   * the selector is forgotten when no config holds it. A config not
   * acquired here, or already released, is ignored.
   */
  release(config: PushConfig): void {
    const entry = this.#held.get(config);
    if (entry === undefined) return;
    this.#held.delete(config);
    if (--entry.refs === 0 && this.#entries.get(entry.selector.key) === entry) {
      this.#entries.delete(entry.selector.key);
    }
  }
}

/** A validated push config, its filters compiled once. */
export class PushConfig {
  /** The identities-and-filters part, shared between sessions that sent the same one. */
  readonly selector: ConfigSelector;
  /** The parameters to merge into the session. */
  readonly parameters: Readonly<Record<string, readonly string[]>>;
  /** The config as the client sent it, normalized (for plugins and logs). */
  readonly input: Readonly<PushConfigInput>;
  /** The heap bytes it holds once compiled, estimated from above ({@link estimatePushConfigBytes}). */
  readonly estimatedBytes: number;

  constructor(
    selector: ConfigSelector,
    parameters: Readonly<Record<string, readonly string[]>>,
    input: Readonly<PushConfigInput>,
    estimatedBytes: number,
  ) {
    this.selector = selector;
    this.parameters = parameters;
    this.input = input;
    this.estimatedBytes = estimatedBytes;
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

// ---------------------------------------------------------------------------
// What a config holds, in bytes
//
// Calibrated on V8 (Node 20) by parsing 40 distinct configs of one construct each, holding them,
// and reading `process.memoryUsage().heapUsed` after full collections (--expose-gc): the cost of
// each construct per config, divided by how many it has. Each constant is rounded up from the
// worst case measured for what it counts, so that the estimate stays above the real figure for
// every construct (test/unit/push-config-memory.test.ts checks it; the report of issue 19 gives
// the figures). A filter is not parsed to be estimated: a scan of its text counts its tokens,
// each of which the parser would see at least once, so the estimate is made before any
// compiling and a config past the bound costs no more than this scan.

/** A config, its selector, maps and verdict memo (measured ~0.4 KB, +1 KB memo once judged). */
const CONFIG_BYTES = 2048;
/** An identity: its map entry, its set of types (measured ~125 B with no types), its key. */
const IDENTITY_BYTES = 256;
/** A type in an identity's set (measured ~40 B). */
const TYPE_BYTES = 64;
/** A parameter name and its list. */
const PARAMETER_BYTES = 128;
/** A parameter value (measured ~10 B: the strings are the decoded message's). */
const PARAMETER_VALUE_BYTES = 32;
/** A filter: its compiled closure, its map entry, its regex cache (measured ~0.7 KB). */
const FILTER_BYTES = 1024;
/**
 * A token of a filter outside a list: a key, an operator word, a value, a connective, `(` or
 * `[`. A comparison has at least two and, but the last, a connective: the densest, `a in [1] or`
 * (two sets and three closures, measured 590 B), is four (768 B).
 */
const TOKEN_BYTES = 192;
/** A value inside a list: an entry in a set, a string (measured up to 62 B). */
const LIST_VALUE_BYTES = 64;
/**
 * A `matches` pattern run by RE2: its program and Unicode tables (measured up to ~80 KB for
 * `[\p{L}\p{N}]{3}\pM`) and its lazy DFA, bounded by DFA_BUDGET_BYTES of re2js's accounting
 * (counted twice for what V8 adds). A plain-text pattern is a string search: PLAIN_PATTERN_BYTES.
 */
const PATTERN_BYTES = 96 * 1024 + 2 * DFA_BUDGET_BYTES;
const PLAIN_PATTERN_BYTES = 1024;

/** What one pattern occurrence may hold, from its text as written in the filter. */
function patternBytes(raw: string): number {
  return isPlainTextPattern(raw) ? PLAIN_PATTERN_BYTES : PATTERN_BYTES;
}

/** An upper bound on the heap a string holds: a header, and two bytes per code unit. */
function stringBytes(text: string): number {
  return 24 + 2 * text.length;
}

/** Characters that end a word for the scan: whitespace, quotes and the filter's symbols. */
const SEPARATORS = new Set([...' \t\n\r\f\v"\'[](),=!<>'].map((c) => c.charCodeAt(0)));

/** The heap a filter may hold once compiled, from a scan of its text (see above). */
function estimateFilterBytes(source: string): number {
  // The text itself is kept three times over: the config's input, the selector's key, slices.
  let bytes = FILTER_BYTES + 3 * stringBytes(source);
  let inList = false;
  let listOfPatterns = false;
  let previousWord = '';
  const length = source.length;
  let i = 0;
  while (i < length) {
    const c = source.charCodeAt(i);
    let token: string | undefined;
    if (c === 34 || c === 39) {
      let end = i + 1;
      while (end < length && source.charCodeAt(end) !== c)
        end += source.charCodeAt(end) === 92 ? 2 : 1;
      token = source.slice(i + 1, end);
      i = end + 1;
    } else if (c === 91 /* [ */) {
      if (!inList) bytes += TOKEN_BYTES;
      inList = true;
      listOfPatterns = previousWord === 'matches';
      i++;
      continue;
    } else if (c === 93 /* ] */) {
      inList = false;
      previousWord = '';
      i++;
      continue;
    } else if (c === 40 /* ( */) {
      bytes += TOKEN_BYTES;
      i++;
      continue;
    } else if (SEPARATORS.has(c)) {
      i++;
      continue;
    } else {
      let end = i + 1;
      while (end < length && !SEPARATORS.has(source.charCodeAt(end))) end++;
      token = source.slice(i, end);
      i = end;
    }
    if (inList) {
      bytes += LIST_VALUE_BYTES + stringBytes(token);
      if (listOfPatterns) bytes += patternBytes(token) + 2 * stringBytes(token);
      continue;
    }
    bytes += TOKEN_BYTES + stringBytes(token);
    if (previousWord === 'matches') bytes += patternBytes(token) + 2 * stringBytes(token);
    previousWord = token.toLowerCase();
  }
  return bytes;
}

/**
 * The heap bytes a validated push config may hold once compiled, estimated
 * from above: never less than V8's figure for the constructs it was
 * calibrated on (constants above), at most about twice it for dense
 * filters. Pure and cheap: a scan of the filters' text, no parsing.
 */
export function estimatePushConfigBytes(input: Readonly<PushConfigInput>): number {
  let bytes = CONFIG_BYTES;
  for (const [identity, types] of Object.entries(input.identities ?? {})) {
    bytes += IDENTITY_BYTES + 2 * stringBytes(identity);
    for (const type of types ?? []) bytes += TYPE_BYTES + 2 * stringBytes(type);
  }
  for (const source of Object.values(input.filters ?? {})) bytes += estimateFilterBytes(source);
  for (const [name, values] of Object.entries(input.parameters ?? {})) {
    bytes += PARAMETER_BYTES + stringBytes(name);
    const list = typeof values === 'string' ? [values] : values;
    for (const value of list) bytes += PARAMETER_VALUE_BYTES + stringBytes(value);
  }
  return bytes;
}

/**
 * Validates a decoded push config and compiles its filters. Throws
 * {@link PushConfigError} with a message that says what is wrong, and
 * when the config would hold more than `limits.maxBytes` (estimated before
 * anything is compiled). The config's selector is its own: nothing is
 * kept here, so a config dropped is garbage; share equal ones with a
 * {@link SelectorPool}. Limits left out take {@link DEFAULT_PUSH_CONFIG_LIMITS}.
 */
export function parsePushConfig(
  value: unknown,
  limits: Partial<PushConfigLimits> = DEFAULT_PUSH_CONFIG_LIMITS,
): PushConfig {
  const {
    maxIdentities,
    maxTypesPerIdentity,
    maxParameters,
    maxBytes,
    filters: filterLimits,
  } = {
    ...DEFAULT_PUSH_CONFIG_LIMITS,
    ...limits,
  };
  if (!isPlainObject(value)) throw new PushConfigError('the push config must be an object');
  // Keys other than those read below are ignored, as bahamut ignores them (ugorji's decoder
  // swallows a key with no struct field): a newer client sending a key this server does not
  // know must keep its session.
  const input: PushConfigInput = {};

  let identities: Map<string, Set<string> | null> | null = null;
  if (value.identities !== undefined && value.identities !== null) {
    if (!isPlainObject(value.identities)) {
      throw new PushConfigError('identities must be an object of identity → list of types');
    }
    const entries = Object.entries(value.identities);
    if (entries.length > maxIdentities) {
      throw new PushConfigError(`too many identities (at most ${maxIdentities})`);
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
      if (types.length > maxTypesPerIdentity) {
        throw new PushConfigError(
          `identities.${identity} lists too many types (at most ${maxTypesPerIdentity})`,
          { identity },
        );
      }
      identities?.set(identity, new Set(types as string[]));
      input.identities[identity] = [...(types as string[])];
    }
  }

  // Checked first, compiled once the whole config is known to fit within maxBytes.
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
      input.filters[identity] = source;
    }
  }

  let parameters = NO_PARAMETERS as Record<string, string[]>;
  if (value.parameters !== undefined && value.parameters !== null) {
    if (!isPlainObject(value.parameters)) {
      throw new PushConfigError('parameters must be an object of name → list of strings');
    }
    const entries = Object.entries(value.parameters);
    // A prototype-less object is a dictionary (about 200 bytes even empty): made only when used.
    if (entries.length > 0) parameters = Object.create(null) as Record<string, string[]>;
    if (entries.length > maxParameters) {
      throw new PushConfigError(`too many parameters (at most ${maxParameters})`);
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

  if (value.since !== undefined && value.since !== null) {
    // Positions are short; a longer string is no position, and need not be kept whole.
    input.since = typeof value.since === 'string' ? value.since.slice(0, MAX_POSITION_LENGTH) : '';
  }

  const estimatedBytes = estimatePushConfigBytes(input);
  if (estimatedBytes > maxBytes) {
    throw new PushConfigError(
      `the push config would hold about ${estimatedBytes} bytes once compiled ` +
        `(maxPushConfigBytes: at most ${maxBytes} bytes)`,
      { estimatedBytes, maxBytes },
    );
  }

  const filters = new Map<string, CompiledFilter>();
  for (const [identity, source] of Object.entries(input.filters ?? {})) {
    try {
      filters.set(identity, compileFilter(source, filterLimits));
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
  }

  // The key is the normalized text of what decides dispatch: equal texts select the same events.
  const key = JSON.stringify([input.identities ?? null, input.filters ?? null]);
  return new PushConfig(
    new ConfigSelector(key, identities, filters),
    parameters,
    input,
    estimatedBytes,
  );
}
