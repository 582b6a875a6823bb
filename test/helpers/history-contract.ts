/**
 * The shared suite of the TopicHistory contract (lib/pubsub/contract.ts):
 * every backend with a `history` option (LocalPubSub, Redis Streams,
 * JetStream) must pass it. A backend's test file calls
 *
 * ```ts
 * runHistoryContract('RedisPubSub', () => ({
 *   start: async () => { broker = await startRedis(); },
 *   stop: () => broker.stop(),
 *   create: (history) => new RedisPubSub({ url: broker.url, history }),
 *   maxEventsSlack: 200,
 * }));
 * ```
 *
 * and gets one `describe` of tests. Each test uses topics of its own
 * (random names), so a broker shared by the whole suite needs no cleaning
 * between tests; every client a test creates is disconnected after it.
 *
 * Nothing sleeps: a test waits for the events that prove its point, or
 * polls a condition with a deadline (the maxAge test publishes until the
 * old events are gone). To prove that something was NOT delivered, it
 * publishes a marker afterwards and waits for the marker: one publisher's
 * events are delivered in order, so anything else would have come first.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, afterEach, before, describe, it } from 'node:test';
import type {
  HistoryEntry,
  HistoryOptions,
  HistoryPubSubClient,
  PubSubClient,
} from '../../lib/pubsub/contract.js';
import { deferred, waitFor, withTimeout } from './wait.js';

/** What the suite needs of a backend. */
export interface HistoryContractBackend {
  /** Starts what the backend needs (a broker); called once, before the first test. */
  start?(): Promise<void>;
  /** Stops it; called once, after the last test. */
  stop?(): Promise<void>;
  /**
   * A client with history on and these bounds, not connected yet. Clients
   * made by one backend share one store (one broker; for LocalPubSub, a
   * second client is the same instance: see `peer`).
   */
  create(history: HistoryOptions): PubSubClient;
  /**
   * A second client on the same store as `client`, not connected yet (as
   * a second server of the fleet would be). Default: `create()` with the
   * same bounds, right for a broker; LocalPubSub returns `client` itself.
   */
  peer?(client: HistoryPubSubClient, history: HistoryOptions): PubSubClient;
  /**
   * How many events past `maxEvents` the backend may still keep: 0 for an
   * exact bound; Redis's `MAXLEN ~` trims whole stream nodes (100 entries
   * by default), so it may keep up to about that many more.
   */
  maxEventsSlack: number;
  /** How long an event may take to be delivered, in ms; default 5000. */
  deliveryTimeout?: number;
}

/** One event delivered by `follow`. */
export interface Followed {
  subject: string;
  text: string;
  position: string;
}

/** Records what a `follow` delivers and lets a test wait for it. */
export class FollowInbox {
  readonly events: Followed[] = [];
  readonly #waiters = new Set<() => void>();

  /** The handler to give to `follow`. */
  readonly handler = (payload: Uint8Array, subject: string, position: string): void => {
    this.events.push({ subject, text: Buffer.from(payload).toString(), position });
    for (const waiter of [...this.#waiters]) waiter();
  };

  /** The payloads received, as text. */
  texts(): string[] {
    return this.events.map((event) => event.text);
  }

  /** Resolves when `done()` holds; rejects after `ms` saying what arrived. */
  async until(done: () => boolean, what: string, ms = 5_000): Promise<void> {
    if (done()) return;
    const reached = deferred();
    const waiter = (): void => {
      if (done()) reached.resolve();
    };
    this.#waiters.add(waiter);
    try {
      await withTimeout(reached.promise, ms, what);
    } catch (error) {
      const last = this.texts().slice(-5).join(', ');
      throw new Error(`${(error as Error).message}; got ${this.events.length}, last: ${last}`, {
        cause: error,
      });
    } finally {
      this.#waiters.delete(waiter);
    }
  }

  /** Resolves once a payload `text` arrived. */
  untilText(text: string, ms?: number): Promise<void> {
    return this.until(() => this.texts().includes(text), `"${text}" was not followed`, ms);
  }
}

const encoder = new TextEncoder();

/** `value` as payload bytes. */
export const bytes = (value: string): Uint8Array => encoder.encode(value);

/** A topic name no other test uses. */
export const uniqueTopic = (): string => `h${randomBytes(5).toString('hex')}`;

/** The texts of read entries. */
export const entryTexts = (entries: HistoryEntry[]): string[] =>
  entries.map((entry) => Buffer.from(entry.payload).toString());

/** Publishes `texts` on `subject`, one after the other (each acknowledged before the next). */
export async function publishAll(
  client: PubSubClient,
  subject: string,
  texts: string[],
): Promise<void> {
  for (const text of texts) await client.publish(subject, bytes(text));
}

/** Reads every page after `since`, `max` at a time; returns the entries and the page sizes. */
export async function readAll(
  client: HistoryPubSubClient,
  topic: string,
  since: string,
  max: number,
): Promise<{ entries: HistoryEntry[]; pages: number[] }> {
  const entries: HistoryEntry[] = [];
  const pages: number[] = [];
  let from = since;
  for (;;) {
    const page = await client.history.read(topic, from, max);
    assert.equal(page.recovered, true, `page from ${from} recovered`);
    pages.push(page.entries.length);
    entries.push(...page.entries);
    const last = page.entries.at(-1);
    if (!page.more || !last) return { entries, pages };
    from = last.position;
  }
}

/** True when `client.history` is set, asserting it. */
function withHistory(client: PubSubClient): HistoryPubSubClient {
  assert.ok(client.history, 'the client has a history');
  return client as HistoryPubSubClient;
}

/** Registers the TopicHistory contract tests for one backend (see the module comment). */
export function runHistoryContract(name: string, makeBackend: () => HistoryContractBackend): void {
  describe(`${name}: the TopicHistory contract`, () => {
    const backend = makeBackend();
    const delivery = backend.deliveryTimeout ?? 5_000;
    const open = new Set<PubSubClient>();

    const connected = async (client: PubSubClient): Promise<HistoryPubSubClient> => {
      open.add(client);
      await client.connect();
      return withHistory(client);
    };
    const create = (history: HistoryOptions = {}): Promise<HistoryPubSubClient> =>
      connected(backend.create(history));
    const peer = (client: HistoryPubSubClient, history: HistoryOptions = {}) =>
      connected(backend.peer ? backend.peer(client, history) : backend.create(history));
    const follow = async (client: HistoryPubSubClient, topic: string): Promise<FollowInbox> => {
      const inbox = new FollowInbox();
      await client.history.follow(topic, inbox.handler);
      return inbox;
    };
    const headOf = async (client: HistoryPubSubClient, topic: string): Promise<string> =>
      (await client.history.read(topic, 'not a position', 1)).head;

    before(async () => {
      await backend.start?.();
    });
    after(async () => {
      await backend.stop?.();
    });
    afterEach(async () => {
      const clients = [...open];
      open.clear();
      await Promise.all(clients.map((client) => client.disconnect()));
    });

    it('exposes its resolved bounds', async () => {
      const client = await create({ maxEvents: 42 });
      assert.deepEqual(client.history.options, { maxEvents: 42, maxAge: 3_600_000 });
    });

    it('follows in publication order, with increasing positions', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const inbox = await follow(client, topic);
      const texts = Array.from({ length: 200 }, (_, i) => `e${i}`);
      // Not awaited one by one: order must hold for publications in flight together.
      await Promise.all(texts.map((text) => client.publish(topic, bytes(text))));
      await inbox.until(() => inbox.events.length === texts.length, 'not all events', delivery);
      assert.deepEqual(inbox.texts(), texts);
      for (let i = 1; i < inbox.events.length; i++) {
        const previous = inbox.events[i - 1]?.position ?? '';
        const current = inbox.events[i]?.position ?? '';
        assert.ok(client.history.compare(previous, current) < 0, `${previous} < ${current}`);
        assert.ok(client.history.compare(current, previous) > 0);
        assert.equal(client.history.compare(current, current), 0);
      }
    });

    it('follows from a peer: positions are the same on every client of the store', async () => {
      const publisher = await create();
      const follower = await peer(publisher);
      const topic = uniqueTopic();
      const head0 = await headOf(follower, topic);
      const inbox = await follow(follower, topic);
      await publishAll(publisher, topic, ['a', 'b', 'c']);
      await inbox.until(() => inbox.events.length === 3, 'the peer did not follow', delivery);
      assert.deepEqual(inbox.texts(), ['a', 'b', 'c']);
      const read = await publisher.history.read(topic, head0, 10);
      assert.equal(read.recovered, true, "the peer's head is a position of the publisher's store");
      assert.deepEqual(
        read.entries.map((entry) => entry.position),
        inbox.events.map((event) => event.position),
      );
    });

    it('delivers only what is stored after follow() resolved; read has the rest', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const head0 = await headOf(client, topic);
      await publishAll(client, topic, ['before']);
      const inbox = await follow(client, topic);
      await publishAll(client, topic, ['after', 'marker']);
      await inbox.untilText('marker', delivery);
      assert.deepEqual(inbox.texts(), ['after', 'marker']);
      const read = await client.history.read(topic, head0, 10);
      assert.equal(read.recovered, true);
      assert.deepEqual(entryTexts(read.entries), ['before', 'after', 'marker']);
    });

    it('resolves publish() once stored: a read right after it has the event', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const head0 = await headOf(client, topic);
      await client.publish(topic, bytes('stored'));
      const read = await client.history.read(topic, head0, 10);
      assert.deepEqual(entryTexts(read.entries), ['stored']);
      assert.equal(read.head, read.entries[0]?.position);
    });

    it('reads exactly the events after `since`, with the positions follow gave', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const inbox = await follow(client, topic);
      const texts = Array.from({ length: 10 }, (_, i) => `r${i}`);
      await publishAll(client, topic, texts);
      await inbox.until(() => inbox.events.length === 10, 'not all events', delivery);
      const third = inbox.events[2];
      assert.ok(third);
      const read = await client.history.read(topic, third.position, 100);
      assert.equal(read.recovered, true);
      assert.equal(read.more, false);
      assert.deepEqual(entryTexts(read.entries), texts.slice(3));
      assert.deepEqual(
        read.entries.map((entry) => [entry.subject, entry.position]),
        inbox.events.slice(3).map((event) => [event.subject, event.position]),
      );
      assert.equal(read.head, inbox.events.at(-1)?.position);
    });

    it('reads from the head: recovered, nothing, and the head unchanged', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const empty = await client.history.read(topic, 'x', 1);
      assert.equal(empty.recovered, false);
      const fromEmptyHead = await client.history.read(topic, empty.head, 5);
      assert.deepEqual(
        { recovered: fromEmptyHead.recovered, entries: fromEmptyHead.entries.length },
        { recovered: true, entries: 0 },
        'the head of a topic without events is a position to start from',
      );
      await publishAll(client, topic, ['one', 'two']);
      const { head } = await client.history.read(topic, 'x', 1);
      const read = await client.history.read(topic, head, 5);
      assert.deepEqual(
        { recovered: read.recovered, entries: read.entries.length, more: read.more },
        { recovered: true, entries: 0, more: false },
      );
      assert.equal(read.head, head);
    });

    it('pages with max and more: every event once, in order', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const head0 = await headOf(client, topic);
      const texts = Array.from({ length: 10 }, (_, i) => `p${i}`);
      await publishAll(client, topic, texts);
      const { entries, pages } = await readAll(client, topic, head0, 3);
      assert.deepEqual(pages, [3, 3, 3, 1]);
      assert.deepEqual(entryTexts(entries), texts);
      const exact = await client.history.read(topic, head0, 10);
      assert.equal(exact.more, false, 'a read that ends on the last event has no more');
      const first = await client.history.read(topic, head0, 1);
      assert.deepEqual([entryTexts(first.entries), first.more], [['p0'], true]);
    });

    it('rejects a max that is not a positive integer with a RangeError', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const head = await headOf(client, topic);
      for (const max of [0, -1, 1.5, Number.NaN]) {
        await assert.rejects(client.history.read(topic, head, max), RangeError, String(max));
      }
    });

    it('answers recovered false for a malformed, foreign-epoch or future since', async () => {
      const client = await create();
      const topic = uniqueTopic();
      await publishAll(client, topic, ['x', 'y']);
      const { head } = await client.history.read(topic, 'x', 1);
      const colon = head.indexOf(':');
      const epoch = head.slice(0, colon);
      const offset = head.slice(colon + 1);
      const otherEpoch = epoch === 'e0e0e0e0e0e0' ? 'f1f1f1f1f1f1' : 'e0e0e0e0e0e0';
      const bad = [
        '',
        'garbage',
        ':',
        epoch,
        `${epoch}:`,
        `${epoch}:abc`,
        `${epoch}:-1`,
        `:${offset}`,
        'x'.repeat(10_000),
        `${otherEpoch}:${offset}`,
        // Digits appended to the offset make it greater in every position format we use.
        `${head}99999`,
      ];
      for (const since of bad) {
        const read = await client.history.read(topic, since, 10);
        assert.deepEqual(
          { recovered: read.recovered, entries: read.entries, more: read.more, head: read.head },
          { recovered: false, entries: [], more: false, head },
          `since ${JSON.stringify(since.slice(0, 40))}`,
        );
      }
      assert.ok(Number.isNaN(client.history.compare('garbage', head)));
      assert.ok(Number.isNaN(client.history.compare(head, `${otherEpoch}:${offset}`)));
    });

    it('trims past maxEvents: trimmed positions are not recovered, the newest are', async () => {
      const maxEvents = 20;
      const client = await create({ maxEvents });
      const topic = uniqueTopic();
      const inbox = await follow(client, topic);
      const total = maxEvents + backend.maxEventsSlack + 30;
      const texts = Array.from({ length: total }, (_, i) => `m${i}`);
      // One at a time: a follower more than maxEvents behind may lose events (see RedisHistory).
      await publishAll(client, topic, texts);
      await inbox.until(() => inbox.events.length === total, 'not all events', delivery);
      const first = inbox.events[0];
      assert.ok(first);
      const trimmed = await client.history.read(topic, first.position, 10);
      assert.deepEqual([trimmed.recovered, trimmed.entries.length], [false, 0]);
      // At least maxEvents are kept: a client maxEvents behind recovers.
      const behind = inbox.events[total - maxEvents - 1];
      assert.ok(behind);
      const kept = await readAll(client, topic, behind.position, 7);
      assert.deepEqual(entryTexts(kept.entries), texts.slice(total - maxEvents));
    });

    it('trims past maxAge: a position older than maxAge is not recovered', async () => {
      const maxAge = 200;
      const client = await create({ maxAge });
      const topic = uniqueTopic();
      const head0 = await headOf(client, topic);
      await publishAll(client, topic, ['old']);
      assert.equal((await client.history.read(topic, head0, 10)).recovered, true);
      // Trimming by age may happen when the topic is next written: keep writing until it has.
      let n = 0;
      await waitFor(
        async () => {
          await client.publish(topic, bytes(`filler${n++}`));
          return !(await client.history.read(topic, head0, 10)).recovered;
        },
        { timeout: 10_000, interval: 25, message: 'the event older than maxAge was never trimmed' },
      );
      const { head } = await client.history.read(topic, 'x', 1);
      const fresh = await client.history.read(topic, head, 10);
      assert.equal(fresh.recovered, true, 'the newest position is still recovered');
    });

    it('keeps subjects below the topic, and follows only the topic’s subjects', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const head0 = await headOf(client, topic);
      const all = await follow(client, topic);
      const sub = await follow(client, `${topic}.task`);
      const published: Array<[string, string]> = [
        [topic, 'plain'],
        [`${topic}.task.create`, 'task-create'],
        [`${topic}x`, 'sibling-root'],
        [`other.${topic}`, 'other-root'],
        [`${topic}.user.update`, 'user-update'],
        [`${topic}.taskforce`, 'taskforce'],
        [`${topic}.task`, 'task'],
        [topic, 'marker'],
      ];
      for (const [subject, text] of published) await client.publish(subject, bytes(text));
      await all.untilText('marker', delivery);
      const expected = ['plain', 'task-create', 'user-update', 'taskforce', 'task', 'marker'];
      assert.deepEqual(all.texts(), expected);
      assert.deepEqual(all.events[1]?.subject, `${topic}.task.create`);
      const read = await client.history.read(topic, head0, 100);
      assert.deepEqual(entryTexts(read.entries), expected);
      // `<topic>.task` covers itself and what is below it, not `<topic>.taskforce`.
      await sub.untilText('task', delivery);
      assert.deepEqual(sub.texts(), ['task-create', 'task']);
      const subRead = await client.history.read(`${topic}.task`, head0, 1);
      assert.deepEqual([entryTexts(subRead.entries), subRead.more], [['task-create'], true]);
      const subRest = await readAll(client, `${topic}.task`, head0, 1);
      assert.deepEqual(entryTexts(subRest.entries), ['task-create', 'task']);
    });

    it('stores payloads byte for byte, as they were when published', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const head0 = await headOf(client, topic);
      const inbox: Uint8Array[] = [];
      const got = deferred();
      await client.history.follow(topic, (payload) => {
        inbox.push(Buffer.from(payload));
        if (inbox.length === 3) got.resolve();
      });
      const binary = Uint8Array.from({ length: 256 }, (_, i) => i);
      const large = randomBytes(64 * 1024);
      const mutable = Buffer.from('original');
      await client.publish(topic, binary);
      await client.publish(topic, new Uint8Array(0));
      const pending = client.publish(topic, large);
      await pending;
      mutable.fill(0); // after the resolution: the contract forbids changing it before
      await withTimeout(got.promise, delivery, 'payloads not followed');
      const read = await client.history.read(topic, head0, 10);
      const expected = [Buffer.from(binary), Buffer.alloc(0), Buffer.from(large)];
      assert.deepEqual(
        inbox.map((p) => Buffer.from(p)),
        expected,
      );
      assert.deepEqual(
        read.entries.map((entry) => Buffer.from(entry.payload)),
        expected,
      );
    });

    it('stops following once unsubscribe resolved; unsubscribe is idempotent', async () => {
      const client = await create();
      const topic = uniqueTopic();
      const stopped = new FollowInbox();
      const unsubscribe = await client.history.follow(topic, stopped.handler);
      const live = await follow(client, topic);
      await publishAll(client, topic, ['one']);
      await stopped.untilText('one', delivery);
      await unsubscribe();
      await unsubscribe();
      await publishAll(client, topic, ['two', 'marker']);
      await live.untilText('marker', delivery);
      assert.deepEqual(stopped.texts(), ['one']);
    });
  });
}
