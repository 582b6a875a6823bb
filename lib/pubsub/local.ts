import { performance } from 'node:perf_hooks';
import { NotConnectedError } from '../errors.js';
import {
  resolveHistoryOptions,
  subjectMatches,
  type HistoryEntry,
  type HistoryHandler,
  type HistoryOptions,
  type HistoryRead,
  type PubSubClient,
  type PubSubHandler,
  type PubSubStatus,
  type ResolvedHistoryOptions,
  type TopicHistory,
  type Unsubscribe,
} from './contract.js';
import {
  checkReadMax,
  checkTopic,
  historyRoot,
  newEpoch,
  splitPosition,
  topicCovers,
} from './history-common.js';

interface Subscription {
  subject: string;
  handler: PubSubHandler;
  active: boolean;
}

/** Options of {@link LocalPubSub}. */
export interface LocalPubSubOptions {
  /** Called when a subscription handler throws; the default ignores it (the server's handlers never throw). */
  onError?: (error: unknown) => void;
  /**
   * Keeps a bounded history per topic root, in memory, and sets
   * `pubsub.history` (see {@link LocalHistory}); off when absent. Throws a
   * RangeError from the constructor for a bound that is not a positive
   * integer.
   */
  history?: HistoryOptions;
}

/** A publication waiting for the microtask that delivers it; `stored` is set when history keeps it. */
interface Queued {
  subject: string;
  payload: Uint8Array;
  stored?: StoredEvent;
}

/**
 * The in-memory backend, for one process: the default and the reference
 * implementation of {@link PubSubClient}. Several push middlewares (or tests
 * simulating several servers) can share one instance like a broker.
 *
 * Delivery is asynchronous (a microtask after `publish`), as with a real
 * broker, so a handler never runs inside the publisher's call stack, and
 * payloads published in one turn reach a handler in that order.
 *
 * With the `history` option, `history` is a {@link LocalHistory}: every
 * publication is also stored (a copy of its bytes) in a bounded ring of its
 * subject's first token, and `follow` delivers in the same microtask as
 * `subscribe`.
 */
export class LocalPubSub implements PubSubClient {
  #subs: Subscription[] = [];
  #status: PubSubStatus = 'disconnected';
  #listeners = new Set<(status: PubSubStatus) => void>();
  #queue: Queued[] = [];
  #flushScheduled = false;
  readonly #onError: (error: unknown) => void;
  readonly #history: LocalHistory | undefined;

  /** Creates the bus; throws a RangeError for invalid `history` bounds. */
  constructor(options: LocalPubSubOptions = {}) {
    this.#onError = options.onError ?? (() => undefined);
    this.#history = options.history
      ? new LocalHistory(resolveHistoryOptions(options.history), this.#onError)
      : undefined;
  }

  /** The current connection state. */
  get status(): PubSubStatus {
    return this.#status;
  }

  /** The in-memory history, when the `history` option is set; undefined otherwise. */
  get history(): LocalHistory | undefined {
    return this.#history;
  }

  /** Marks the bus connected; idempotent. */
  async connect(): Promise<void> {
    if (this.#status !== 'connected') this.#setStatus('connected');
  }

  /**
   * Drops every subscription and follower and marks the bus closed;
   * idempotent. The history itself is kept (it lives as long as the
   * instance, like a broker's store), with its epoch.
   */
  async disconnect(): Promise<void> {
    for (const sub of this.#subs) sub.active = false;
    this.#subs = [];
    this.#queue = [];
    this.#history?.stopFollowers();
    if (this.#status !== 'closed') this.#setStatus('closed');
  }

  /**
   * Queues `payload` for every matching subscription (and, with history,
   * stores a copy of it first, so that a `read()` after the resolution sees
   * it); rejects when not connected.
   */
  async publish(subject: string, payload: Uint8Array): Promise<void> {
    if (this.#status !== 'connected') {
      throw new NotConnectedError('LocalPubSub: publish before connect() (or after disconnect())');
    }
    const stored = this.#history?.store(subject, payload);
    this.#queue.push(stored ? { subject, payload, stored } : { subject, payload });
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(() => this.#flush());
    }
  }

  /** Subscribes `handler` to `subject` (`>` as the last token matches every subject below). */
  async subscribe(subject: string, handler: PubSubHandler): Promise<Unsubscribe> {
    const sub: Subscription = { subject, handler, active: true };
    this.#subs.push(sub);
    return async () => {
      if (!sub.active) return;
      sub.active = false;
      this.#subs = this.#subs.filter((s) => s !== sub);
    };
  }

  /** Adds a connection-state listener; returns its remover. */
  onStatus(listener: (status: PubSubStatus) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #flush(): void {
    this.#flushScheduled = false;
    const queue = this.#queue;
    this.#queue = [];
    for (const { subject, payload, stored } of queue) {
      // A snapshot: a handler that subscribes or unsubscribes does not change this delivery.
      for (const sub of this.#subs.slice()) {
        if (!sub.active || !subjectMatches(sub.subject, subject)) continue;
        try {
          sub.handler(payload, subject);
        } catch (error) {
          this.#onError(error);
        }
      }
      if (stored) this.#history?.deliver(stored);
    }
  }

  #setStatus(status: PubSubStatus): void {
    this.#status = status;
    for (const listener of this.#listeners) listener(status);
  }
}

/** One publication stored by a {@link LocalHistory}. */
export interface StoredEvent {
  /** Its offset in the root: 1 for the first event of the root. */
  seq: number;
  /** The first token of its subject. */
  root: string;
  subject: string;
  /**
   * Where its bytes are: a private copy (the publisher's buffer may be
   * reused once publish() returned) at `offset` in `chunk`, a block shared
   * with the next events of the root (see {@link Ring.copy}).
   */
  chunk: Uint8Array;
  offset: number;
  length: number;
  /** performance.now() when stored: monotonic, so a wall-clock jump neither keeps nor drops events. */
  at: number;
}

/** Payloads up to this size share blocks; larger ones are copied alone. */
const SHARED_PAYLOAD_MAX = 4096;
const CHUNK_MIN = 1024;
const CHUNK_MAX = 64 * 1024;

/** The stored bytes of an event, as a view (handlers and readers must not change them). */
function bytesOf(event: StoredEvent): Uint8Array {
  return event.chunk.subarray(event.offset, event.offset + event.length);
}

interface Follower {
  topic: string;
  root: string;
  handler: HistoryHandler;
  /** The newest seq of the root when follow() was called: only later events are delivered. */
  after: number;
  active: boolean;
}

/**
 * A bounded ring of the events of one root: a circular buffer that grows
 * by doubling up to `maxEvents` slots and never past, so the memory of a
 * root is at most `maxEvents` entries whatever the rate.
 */
class Ring {
  #slots: Array<StoredEvent | undefined> = [];
  #head = 0;
  #count = 0;
  /** The seq of the newest event ever stored (0: none), kept when it is trimmed. */
  lastSeq = 0;

  /** The block small payloads are copied into, and how much of it is used. */
  #chunk = new Uint8Array(0);
  #used = 0;

  constructor(readonly capacity: number) {}

  /**
   * Copies `payload` into the root's current block (a new one, twice the
   * last up to 64 KiB, when it is full): one ArrayBuffer per block rather
   * than per event, which is most of an event's overhead. Events are
   * trimmed oldest first, so a block is released with its last event, and
   * a root holds at most its live payloads plus one block. Payloads over
   * 4 KiB get a block of their own.
   */
  copy(payload: Uint8Array): { chunk: Uint8Array; offset: number } {
    const size = payload.byteLength;
    if (size > SHARED_PAYLOAD_MAX) return { chunk: new Uint8Array(payload), offset: 0 };
    if (this.#used + size > this.#chunk.byteLength) {
      const next = Math.min(CHUNK_MAX, Math.max(CHUNK_MIN, this.#chunk.byteLength * 2));
      this.#chunk = new Uint8Array(next);
      this.#used = 0;
    }
    const offset = this.#used;
    this.#chunk.set(payload, offset);
    this.#used += size;
    return { chunk: this.#chunk, offset };
  }

  /** The seq of the oldest stored event; `lastSeq + 1` when none is stored. */
  get firstSeq(): number {
    return this.lastSeq - this.#count + 1;
  }

  get size(): number {
    return this.#count;
  }

  push(event: StoredEvent): void {
    if (this.#count === this.capacity) this.#shift();
    if (this.#count === this.#slots.length) this.#grow();
    this.#slots[(this.#head + this.#count) % this.#slots.length] = event;
    this.#count++;
    this.lastSeq = event.seq;
  }

  /** The stored event of `seq`, if it is still stored. */
  get(seq: number): StoredEvent | undefined {
    const index = seq - this.firstSeq;
    if (index < 0 || index >= this.#count) return undefined;
    return this.#slots[(this.#head + index) % this.#slots.length];
  }

  /** Drops the events stored before `oldest` (a performance.now() time). */
  trimOlderThan(oldest: number): void {
    while (this.#count > 0) {
      const first = this.#slots[this.#head];
      if (!first || first.at >= oldest) return;
      this.#shift();
    }
  }

  #shift(): void {
    this.#slots[this.#head] = undefined; // release the payload now, not when the slot is reused
    this.#head = (this.#head + 1) % this.#slots.length;
    this.#count--;
  }

  #grow(): void {
    const size = Math.min(this.capacity, Math.max(16, this.#slots.length * 2));
    const slots = new Array<StoredEvent | undefined>(size);
    for (let i = 0; i < this.#count; i++) {
      slots[i] = this.#slots[(this.#head + i) % this.#slots.length];
    }
    this.#slots = slots;
    this.#head = 0;
  }
}

/**
 * The history of a {@link LocalPubSub} (its `history` when the option is
 * set): one {@link Ring} per root (the first token of a subject, see
 * `historyRoot`), holding at most `maxEvents` events no older than
 * `maxAge` ms. Age is enforced when a root is written or read, so an idle
 * root keeps its expired events in memory until then (still at most
 * `maxEvents`), but never returns them.
 *
 * Positions are `<epoch>:<seq>`: the epoch is random per instance (a
 * process restart makes a new one, since the ring is gone), `seq` counts
 * the events of a root from 1, and `<epoch>:0` is the head of a root that
 * has none. `read` is exact: `recovered` is true whenever every event after
 * `since` is still stored.
 */
export class LocalHistory implements TopicHistory {
  /** The bounds this history keeps. */
  readonly options: ResolvedHistoryOptions;
  /** The epoch of every position of this instance. */
  readonly epoch = newEpoch();
  readonly #rings = new Map<string, Ring>();
  #followers = new Set<Follower>();
  readonly #onError: (error: unknown) => void;

  /** Used by {@link LocalPubSub}; `options` are already resolved. */
  constructor(options: ResolvedHistoryOptions, onError: (error: unknown) => void) {
    this.options = options;
    this.#onError = onError;
  }

  /**
   * Follows `topic`: `handler` gets every event published under it after
   * this call, in the microtask that delivers it to subscribers. Resolves
   * to an idempotent unsubscribe function. Rejects with a TypeError for an
   * empty topic.
   */
  async follow(topic: string, handler: HistoryHandler): Promise<Unsubscribe> {
    checkTopic(topic);
    const root = historyRoot(topic);
    const follower: Follower = {
      topic,
      root,
      handler,
      after: this.#rings.get(root)?.lastSeq ?? 0,
      active: true,
    };
    this.#followers.add(follower);
    return async () => {
      follower.active = false;
      this.#followers.delete(follower);
    };
  }

  /**
   * The events of `topic` stored after `since`, oldest first, at most
   * `max`. `recovered` is false (and `entries` empty) for a `since` that
   * does not parse, is of another epoch, is past the newest event, or whose
   * next event has been trimmed. Rejects with a RangeError for a `max` that
   * is not a positive integer, a TypeError for an empty topic.
   */
  async read(topic: string, since: string, max: number): Promise<HistoryRead> {
    checkTopic(topic);
    checkReadMax(max);
    const ring = this.#rings.get(historyRoot(topic));
    ring?.trimOlderThan(performance.now() - this.options.maxAge);
    const lastSeq = ring?.lastSeq ?? 0;
    const head = `${this.epoch}:${lastSeq}`;
    const seq = this.#parse(since);
    const firstSeq = ring?.firstSeq ?? 1;
    // Everything after `since` is stored when its successor is the oldest stored event or later.
    if (seq === undefined || seq > lastSeq || seq + 1 < firstSeq) {
      return { recovered: false, entries: [], more: false, head };
    }
    const entries: HistoryEntry[] = [];
    let more = false;
    for (let next = seq + 1; ring && next <= lastSeq; next++) {
      const event = ring.get(next);
      if (!event || !topicCovers(topic, event.subject)) continue;
      if (entries.length === max) {
        more = true;
        break;
      }
      entries.push({
        payload: bytesOf(event),
        subject: event.subject,
        position: `${this.epoch}:${event.seq}`,
      });
    }
    return { recovered: true, entries, more, head };
  }

  /** Orders two positions of this epoch by their seq; NaN when either does not parse or is of another epoch. */
  compare(a: string, b: string): number {
    const x = this.#parse(a);
    const y = this.#parse(b);
    if (x === undefined || y === undefined) return NaN;
    return Math.sign(x - y);
  }

  /** The number of events stored under `root`, for tests and metrics. */
  size(root: string): number {
    return this.#rings.get(root)?.size ?? 0;
  }

  /** Stores a copy of a publication; used by {@link LocalPubSub.publish}. */
  store(subject: string, payload: Uint8Array): StoredEvent {
    const root = historyRoot(subject);
    let ring = this.#rings.get(root);
    if (!ring) {
      ring = new Ring(this.options.maxEvents);
      this.#rings.set(root, ring);
    }
    const at = performance.now();
    ring.trimOlderThan(at - this.options.maxAge);
    const { chunk, offset } = ring.copy(payload);
    const event: StoredEvent = {
      seq: ring.lastSeq + 1,
      root,
      subject,
      chunk,
      offset,
      length: payload.byteLength,
      at,
    };
    ring.push(event);
    return event;
  }

  /** Hands a stored event to the followers of its topic; used by LocalPubSub's delivery microtask. */
  deliver(event: StoredEvent): void {
    if (this.#followers.size === 0) return;
    const position = `${this.epoch}:${event.seq}`;
    const payload = bytesOf(event);
    for (const follower of [...this.#followers]) {
      if (!follower.active || follower.root !== event.root) continue;
      if (event.seq <= follower.after || !topicCovers(follower.topic, event.subject)) continue;
      try {
        follower.handler(payload, event.subject, position);
      } catch (error) {
        this.#onError(error);
      }
    }
  }

  /** Silences every follower (LocalPubSub.disconnect()). */
  stopFollowers(): void {
    for (const follower of this.#followers) follower.active = false;
    this.#followers = new Set();
  }

  /** The seq of a position of this epoch; undefined for anything else. */
  #parse(position: string): number | undefined {
    const parts = splitPosition(position);
    if (!parts || parts.epoch !== this.epoch || !/^\d{1,15}$/.test(parts.offset)) return undefined;
    return Number(parts.offset);
  }
}
