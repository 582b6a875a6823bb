/**
 * The history of {@link RedisPubSub} (its `history` option), over Redis
 * Streams with node-redis's own stream commands.
 *
 * Keys, per root (the first token of a subject, see `historyRoot`):
 *
 * - `pushwire:history:{<root>}`: a stream; each entry holds the fields `s`
 *   (the subject) and `p` (the payload bytes). Publishing is `XADD` with an
 *   auto ID, bounded by `MAXLEN ~ maxEvents`, and, at most every
 *   `min(1000, maxAge / 10)` ms per root, by `MINID <now - maxAge>`
 *   instead (XADD takes one bound per call; the MAXLEN bound skipped on
 *   that call is one event, within what `~` allows anyway).
 * - `pushwire:history:{<root>}:epoch`: the epoch, a random string set with
 *   `SET NX` by whichever server uses the root first. A Redis restarted
 *   without persistence has lost both keys, so the next use makes a new
 *   epoch and no old position is ever taken for a new one. The braces make
 *   both keys hash to one cluster slot.
 *
 * Positions are `<epoch>:<stream ID>` (`3f9a…:1712345678901-0`). Delete the
 * two keys together or not at all: a stream deleted under a kept epoch key
 * would make old positions look valid.
 */
import { MultiErrorReply, RESP_TYPES, type RedisClientType } from 'redis';
import { PubSubError } from '../errors.js';
import type {
  HistoryEntry,
  HistoryHandler,
  HistoryRead,
  ResolvedHistoryOptions,
  TopicHistory,
  Unsubscribe,
} from './contract.js';
import {
  checkReadMax,
  checkTopic,
  historyRoot,
  newEpoch,
  splitPosition,
  topicCovers,
} from './history-common.js';
import type { RedisClientLike } from './redis.js';

/** The stream that holds the history of `root`. */
export function historyStreamKey(root: string): string {
  return `pushwire:history:{${root}}`;
}

/** The key that holds the epoch of `root`'s stream. */
export function historyEpochKey(root: string): string {
  return `${historyStreamKey(root)}:epoch`;
}

/** What {@link RedisHistory} needs of the {@link RedisPubSub} that owns it. */
export interface RedisHistoryHost {
  /** The publishing connection when it is ready; throws the rejection `publish()` would give otherwise. */
  publisher(operation: string): RedisClientLike;
  /** A new, unconnected connection for one follower: a duplicate that reconnects as long as the backend lives. */
  dedicated(): RedisClientLike;
  /** Turns a driver's error into the backend's PubSubError. */
  wrap(error: unknown, what: string): PubSubError;
  /** Reports what must not escape (a handler's throw, a follower's failure) to `onError`. */
  report(error: unknown): void;
}

/** A stream ID `<ms>-<n>` as two numbers, so IDs order numerically. */
type StreamId = readonly [number, number];

/** What a consistent look at a root's stream found. */
interface Snapshot {
  epoch: string;
  /** The ID of the oldest stored entry; undefined when none is stored. */
  first: StreamId | undefined;
  /** The newest ID the stream ever generated (kept when trimmed); `0-0` when there is no stream. */
  last: StreamId;
  /** True when no entry was ever removed (XINFO's entries-added equals length; Redis 7 and later). */
  whole: boolean;
}

/** A stream message as node-redis hands it back, in buffer or string mode. */
interface RawMessage {
  id: Buffer | string;
  message: Record<string, Buffer | string | undefined>;
}

const ZERO: StreamId = [0, 0];
/** How many entries one blocking XREAD of a follower may return. */
const FOLLOW_BATCH = 512;

/**
 * The {@link TopicHistory} of a RedisPubSub with the `history` option (see
 * the module comment for the keys). `read` is conservative: `recovered` is
 * true when `since` is of the current epoch, not past the newest ID, and at
 * or after the oldest stored entry (or equal to the newest ID when nothing
 * is stored, or anything when nothing was ever trimmed); for the one
 * position just before the oldest stored entry of a trimmed stream it
 * answers false, since Redis does not tell what was between.
 *
 * `follow` cannot deliver what was trimmed before it read it: a follower
 * more than `maxEvents` behind the publishers (or `maxAge`) skips what it
 * lost. Size `maxEvents` well above what is published during the longest
 * pause of a server (the default, 10,000, is seconds at high rates).
 * Events older than `maxAge` are trimmed by the next publish to their root,
 * so an idle root may still return them.
 */
export class RedisHistory implements TopicHistory {
  /** The bounds this history keeps. */
  readonly options: ResolvedHistoryOptions;
  readonly #host: RedisHistoryHost;
  readonly #followers = new Set<RedisFollower>();
  /** Per root, the Date.now() after which the next XADD trims by age. */
  readonly #trimAt = new Map<string, number>();
  readonly #trimEvery: number;
  /** The ms part of the newest ID an XADD returned, and Date.now() when it did: Redis's clock, seen from here. */
  #serverMs: number | undefined;
  #serverSeenAt = 0;

  /** Used by {@link RedisPubSub}; `options` are already resolved. */
  constructor(options: ResolvedHistoryOptions, host: RedisHistoryHost) {
    this.options = options;
    this.#host = host;
    this.#trimEvery = Math.max(1, Math.min(1000, Math.floor(options.maxAge / 10)));
  }

  /**
   * Appends a publication to its root's stream; resolves once XADD
   * replied (the event is stored). Rejects like RedisPubSub's `publish()`.
   */
  async append(subject: string, payload: Buffer): Promise<void> {
    const publisher = this.#host.publisher('publish');
    const root = historyRoot(subject);
    const now = Date.now();
    let trim:
      | { strategy: 'MAXLEN'; strategyModifier: '~'; threshold: number }
      | { strategy: 'MINID'; threshold: number } = {
      strategy: 'MAXLEN',
      strategyModifier: '~',
      threshold: this.options.maxEvents,
    };
    // Age is measured on Redis's clock (the IDs are its time), estimated from the last reply;
    // the threshold never passes an ID already seen, so the entry being added is never trimmed.
    if (this.#serverMs !== undefined && now >= (this.#trimAt.get(root) ?? 0)) {
      this.#trimAt.set(root, now + this.#trimEvery);
      const serverNow = this.#serverMs + (now - this.#serverSeenAt);
      const threshold = Math.min(this.#serverMs, serverNow - this.options.maxAge);
      if (threshold > 0) trim = { strategy: 'MINID', threshold };
    }
    let id: string;
    try {
      id = String(
        await redis(publisher).xAdd(
          historyStreamKey(root),
          '*',
          { s: subject, p: payload },
          { TRIM: trim },
        ),
      );
    } catch (error) {
      throw this.#host.wrap(error, `publish to ${subject}`);
    }
    const parsed = parseId(id);
    if (parsed && (this.#serverMs === undefined || parsed[0] >= this.#serverMs)) {
      this.#serverMs = parsed[0];
      this.#serverSeenAt = Date.now();
    }
  }

  /**
   * Follows `topic` on a dedicated connection (a blocking XREAD loop from
   * the newest ID at the time of the call). After a reconnection it checks
   * the epoch and goes on from the last ID it delivered, so nothing still
   * in the stream is missed; when the epoch changed (Redis lost its data)
   * it delivers the new stream from its start, with the new epoch's
   * positions. Resolves once the loop is reading; rejects with a
   * PubSubError when the connection cannot be opened.
   */
  async follow(topic: string, handler: HistoryHandler): Promise<Unsubscribe> {
    checkTopic(topic);
    const follower = new RedisFollower(this.#host, topic, handler);
    this.#followers.add(follower);
    try {
      await follower.start();
    } catch (error) {
      this.#followers.delete(follower);
      await follower.stop();
      throw this.#host.wrap(error, `follow ${topic}`);
    }
    return async () => {
      this.#followers.delete(follower);
      await follower.stop();
    };
  }

  /**
   * The events of `topic` after `since`: XRANGE from `since` (exclusive)
   * with COUNT, then, in one MULTI, the epoch and XINFO STREAM, which
   * decide `recovered` (see the class comment). Rejects with a RangeError
   * for a bad `max`, and with a PubSubError while Redis is unreachable.
   */
  async read(topic: string, since: string, max: number): Promise<HistoryRead> {
    checkTopic(topic);
    checkReadMax(max);
    const root = historyRoot(topic);
    const wanted = splitPosition(since);
    const from = wanted ? parseId(wanted.offset) : undefined;
    const entries: HistoryEntry[] = [];
    // A topic that is its root takes every entry; one with dots filters, so it may page further.
    const batch = topic === root ? max + 1 : Math.max(max + 1, 100);
    let cursor = from;
    let head: string | undefined;
    try {
      for (;;) {
        const publisher = this.#host.publisher('read');
        const key = historyStreamKey(root);
        // XRANGE before the snapshot: if the oldest stored ID is still at or before the cursor
        // afterwards, it was when XRANGE ran, so the range has no trimmed hole.
        const range = cursor
          ? buffers(publisher).xRange(key, `(${formatId(cursor)}`, '+', { COUNT: batch })
          : undefined;
        range?.catch(() => undefined); // observed below; a failing snapshot must not leave it unhandled
        const state = await snapshot(publisher, root);
        const messages = ((await range) ?? []) as unknown as RawMessage[];
        head ??= `${state.epoch}:${formatId(state.last)}`;
        if (!cursor || !wanted || wanted.epoch !== state.epoch || !covered(cursor, state)) {
          return { recovered: false, entries: [], more: false, head };
        }
        for (const raw of messages) {
          const id = String(raw.id);
          const subject = String(raw.message.s ?? '');
          cursor = parseId(id) ?? cursor;
          if (!topicCovers(topic, subject)) continue;
          if (entries.length === max) return { recovered: true, entries, more: true, head };
          entries.push({
            payload: toBytes(raw.message.p),
            subject,
            position: `${state.epoch}:${id}`,
          });
        }
        if (messages.length < batch) return { recovered: true, entries, more: false, head };
      }
    } catch (error) {
      throw this.#host.wrap(error, `read ${topic}`);
    }
  }

  /** Orders two positions by their stream IDs; NaN when either does not parse or their epochs differ. */
  compare(a: string, b: string): number {
    const x = splitPosition(a);
    const y = splitPosition(b);
    if (!x || !y || x.epoch !== y.epoch) return NaN;
    const i = parseId(x.offset);
    const j = parseId(y.offset);
    if (!i || !j) return NaN;
    return compareIds(i, j);
  }

  /** Stops every follower (RedisPubSub.disconnect()). */
  async stopAll(): Promise<void> {
    const followers = [...this.#followers];
    this.#followers.clear();
    await Promise.all(followers.map((follower) => follower.stop()));
  }
}

/**
 * One `follow()`: a dedicated connection (a blocking XREAD holds its
 * connection) and the loop that reads it.
 */
class RedisFollower {
  readonly #host: RedisHistoryHost;
  readonly #topic: string;
  readonly #root: string;
  readonly #handler: HistoryHandler;
  readonly #connection: RedisClientLike;
  #active = true;
  /** Set when the connection dropped: the epoch must be checked before reading on. */
  #recheck = false;
  #epoch = '';
  #cursor: StreamId = ZERO;
  #wake: (() => void) | undefined;
  #loop: Promise<void> = Promise.resolve();

  constructor(host: RedisHistoryHost, topic: string, handler: HistoryHandler) {
    this.#host = host;
    this.#topic = topic;
    this.#root = historyRoot(topic);
    this.#handler = handler;
    this.#connection = host.dedicated();
    // node-redis throws an 'error' event that has no listener; the loop sees the failure itself.
    this.#connection.on('error', () => {
      this.#recheck = true;
    });
    this.#connection.on('reconnecting', () => {
      this.#recheck = true;
    });
    this.#connection.on('ready', () => this.#wake?.());
    // A reconnect strategy that gave up closes the connection for good: nothing will follow.
    this.#connection.on('end', () => {
      if (!this.#active) return;
      this.#active = false;
      this.#wake?.();
      this.#host.report(
        new PubSubError(
          `RedisPubSub: follow ${this.#topic}: its connection was closed for good`,
          'PUSH_PUBSUB_UNREACHABLE',
        ),
      );
    });
  }

  async start(): Promise<void> {
    await this.#connection.connect();
    const state = await snapshot(this.#connection, this.#root);
    this.#epoch = state.epoch;
    this.#cursor = state.last;
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    if (!this.#active) return;
    this.#active = false;
    this.#wake?.();
    // Destroying the connection is what ends a blocking XREAD at once.
    if (this.#connection.isOpen) this.#connection.destroy();
    await this.#loop;
  }

  async #run(): Promise<void> {
    const key = historyStreamKey(this.#root);
    while (this.#active) {
      try {
        if (!this.#connection.isReady) await this.#ready();
        if (!this.#active) return;
        if (this.#recheck) {
          const state = await snapshot(this.#connection, this.#root);
          this.#recheck = false;
          if (state.epoch !== this.#epoch) {
            // Redis lost the stream: everything in the new one is after what was delivered.
            this.#epoch = state.epoch;
            this.#cursor = ZERO;
          } else if (!covered(this.#cursor, state)) {
            // Nothing to deliver for what is gone; say so, so that it is not lost silently.
            this.#host.report(
              new PubSubError(
                `RedisPubSub: follow ${this.#topic}: events were trimmed before this follower read them (raise history.maxEvents)`,
                'PUSH_HISTORY_GAP',
              ),
            );
          }
        }
        const reply = (await buffers(this.#connection).xRead(
          { key, id: formatId(this.#cursor) },
          { BLOCK: 0, COUNT: FOLLOW_BATCH },
        )) as unknown as Array<{ messages: RawMessage[] }> | null;
        for (const stream of reply ?? []) {
          for (const raw of stream.messages) this.#deliver(raw);
          // A full batch means this follower is behind: check it has not fallen off the stream.
          if (stream.messages.length === FOLLOW_BATCH) this.#recheck = true;
        }
      } catch (error) {
        if (!this.#active) return;
        this.#recheck = true;
        if (this.#connection.isReady) {
          // Connected but refused (a key of another type, an ACL): report it and back off.
          this.#host.report(this.#host.wrap(error, `follow ${this.#topic}`));
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, 1000);
            this.#wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
        }
      }
    }
  }

  #deliver(raw: RawMessage): void {
    const id = String(raw.id);
    this.#cursor = parseId(id) ?? this.#cursor;
    const subject = String(raw.message.s ?? '');
    if (!this.#active || !topicCovers(this.#topic, subject)) return;
    try {
      this.#handler(toBytes(raw.message.p), subject, `${this.#epoch}:${id}`);
    } catch (error) {
      this.#host.report(error);
    }
  }

  /** Resolves on the connection's next 'ready', or when stopped. */
  #ready(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#wake = resolve;
      if (this.#connection.isReady || !this.#active) resolve();
    });
  }
}

/**
 * The epoch (made with SET NX when missing) and what XINFO STREAM says of
 * the oldest and newest IDs, in one MULTI so that they describe one
 * moment. A missing stream (nothing published yet, or all lost) is `0-0`.
 */
async function snapshot(client: RedisClientLike, root: string): Promise<Snapshot> {
  const epochKey = historyEpochKey(root);
  let replies: unknown[];
  try {
    replies = (await redis(client)
      .multi()
      .set(epochKey, newEpoch(), { condition: 'NX' })
      .get(epochKey)
      .xInfoStream(historyStreamKey(root))
      .exec()) as unknown[];
  } catch (error) {
    // XINFO fails on a stream that does not exist yet; the epoch replies are still good.
    if (
      error instanceof MultiErrorReply &&
      error.errorIndexes.length === 1 &&
      error.errorIndexes[0] === 2 &&
      /no such key/i.test(String(error.replies[2]))
    ) {
      replies = [error.replies[0], error.replies[1], undefined];
    } else {
      throw error;
    }
  }
  const epoch = replies[1];
  if (typeof epoch !== 'string' && !Buffer.isBuffer(epoch)) {
    throw new PubSubError(`RedisPubSub: no epoch for ${root} (GET replied ${String(epoch)})`);
  }
  const info = replies[2];
  if (info === undefined || info === null) {
    return { epoch: String(epoch), first: undefined, last: ZERO, whole: true };
  }
  const length = Number(field(info, 'length') ?? 0);
  const added = field(info, 'entries-added');
  const last = parseId(String(field(info, 'last-generated-id') ?? '0-0')) ?? ZERO;
  // recorded-first-entry-id exists from Redis 7; before, the first entry's own ID says the same.
  let first = parseId(String(field(info, 'recorded-first-entry-id') ?? ''));
  if (!first || (first[0] === 0 && first[1] === 0)) {
    const entry = field(info, 'first-entry') as { id?: unknown } | null | undefined;
    first = entry?.id === undefined ? undefined : parseId(String(entry.id));
  }
  return {
    epoch: String(epoch),
    first: length > 0 ? first : undefined,
    last,
    whole: added !== undefined && Number(added) === length,
  };
}

/** True when every entry after `since` is still stored, per {@link Snapshot}. */
function covered(since: StreamId, state: Snapshot): boolean {
  if (compareIds(since, state.last) > 0) return false; // a position from the future
  if (compareIds(since, state.last) === 0 || state.whole) return true;
  return state.first !== undefined && compareIds(since, state.first) >= 0;
}

/** A field of an XINFO reply, which node-redis gives as an object or a Map depending on RESP. */
function field(info: unknown, name: string): unknown {
  if (info instanceof Map) return info.get(name);
  return (info as Record<string, unknown>)[name];
}

/** `<ms>-<n>` as numbers; undefined when it is not a stream ID this module can order exactly. */
function parseId(id: string): StreamId | undefined {
  const match = /^(\d{1,15})-(\d{1,15})$/.exec(id);
  if (!match) return undefined;
  return [Number(match[1]), Number(match[2])];
}

function formatId(id: StreamId): string {
  return `${id[0]}-${id[1]}`;
}

function compareIds(a: StreamId, b: StreamId): number {
  return Math.sign(a[0] - b[0]) || Math.sign(a[1] - b[1]);
}

/** A payload field as bytes (always a Buffer in buffer mode; a missing field is empty). */
function toBytes(value: Buffer | string | undefined): Uint8Array {
  if (value === undefined) return new Uint8Array(0);
  return Buffer.isBuffer(value) ? value : Buffer.from(value);
}

/** The node-redis client behind {@link RedisClientLike}, for the stream commands it does not list. */
function redis(client: RedisClientLike): RedisClientType {
  return client as unknown as RedisClientType;
}

/** The same connection with bulk strings as Buffers, so payloads come back byte for byte. */
function buffers(client: RedisClientLike) {
  return redis(client).withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
}
