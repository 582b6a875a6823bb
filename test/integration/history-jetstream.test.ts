/**
 * JetStream history of the NATS backend (lib/pubsub/jetstream.ts) against a
 * real `nats-server -js`, killed and restarted with its store kept: the
 * TopicHistory contract of lib/pubsub/contract.ts (positions, read, paging,
 * recovery) and what only a broker can show (a stream made again, a crash,
 * bahamut's core NATS publishes captured by the stream).
 *
 * No sleeps: a test waits for the events that prove its point, with a
 * deadline. To prove that nothing more arrives (no duplicate), it publishes
 * a marker last and waits for it: the stream delivers in order, so whatever
 * else was coming would have come first.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect as natsConnect, type NatsConnection } from '@nats-io/transport-node';
import { pushMiddleware } from '../../lib/middleware.js';
import { PubSubError } from '../../lib/errors.js';
import type { HistoryOptions, PubSubStatus, TopicHistory } from '../../lib/pubsub/contract.js';
import { parsePosition, streamEpoch, streamName } from '../../lib/pubsub/jetstream.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { startNats, type Broker } from '../helpers/brokers.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

/** How long an event may take to arrive. */
const DELIVERY_MS = 5_000;
/** How long a restarted broker may take to be reconnected and serve JetStream again. */
const RECOVERY_MS = 20_000;

failOnUnhandledRejections();

const enc = new TextEncoder();
const dec = new TextDecoder();
const text = (value: string): Uint8Array => enc.encode(value);

interface Received {
  subject: string;
  text: string;
  position: string;
}

/** Records what a follow() delivers and lets a test wait for it. */
class Follow {
  readonly events: Received[] = [];
  readonly #waiters = new Set<() => void>();

  readonly handler = (payload: Uint8Array, subject: string, position: string): void => {
    this.events.push({ subject, text: dec.decode(payload), position });
    for (const waiter of [...this.#waiters]) waiter();
  };

  texts(): string[] {
    return this.events.map((event) => event.text);
  }

  has(value: string): boolean {
    return this.events.some((event) => event.text === value);
  }

  async until(done: () => boolean, what: string, ms = DELIVERY_MS): Promise<void> {
    if (done()) return;
    const arrived = deferred();
    const waiter = (): void => {
      if (done()) arrived.resolve();
    };
    this.#waiters.add(waiter);
    try {
      await withTimeout(arrived.promise, ms, `${what}; received ${this.events.length}`);
    } finally {
      this.#waiters.delete(waiter);
    }
  }
}

/** Resolves when `client.status` is (or becomes) `wanted`. */
async function reachStatus(client: NatsPubSub, wanted: PubSubStatus): Promise<void> {
  await waitFor(() => client.status === wanted, {
    timeout: RECOVERY_MS,
    message: `status never became ${wanted} (it is ${client.status})`,
  });
}

/** Publishes until one attempt is acknowledged: right after a restart JetStream may not answer yet. */
async function publishWhenBack(client: NatsPubSub, subject: string, payload: Uint8Array) {
  let done = false;
  await waitFor(
    async () => {
      try {
        await client.publish(subject, payload);
        done = true;
      } catch (error) {
        if (!(error instanceof PubSubError && error.code === 'PUSH_PUBSUB_UNREACHABLE'))
          throw error;
      }
      return done;
    },
    { timeout: RECOVERY_MS, interval: 50, message: `publish to ${subject} never acknowledged` },
  );
}

const sequenceOf = (position: string): number => {
  const parsed = parsePosition(position);
  assert.ok(parsed, `position ${position} parses`);
  return parsed.seq;
};

describe('NATS JetStream history', () => {
  let broker: Broker;
  let admin: NatsConnection;
  const open: NatsPubSub[] = [];
  let topicCount = 0;
  /** A topic of its own for each test: streams do not carry over. */
  const freshTopic = (): string => `hist${++topicCount}`;

  /** A connected client; `null` turns history off. */
  const client = async (history: HistoryOptions | null = {}): Promise<NatsPubSub> => {
    const pubsub = new NatsPubSub({
      servers: broker.url,
      reconnectTimeWait: 50,
      ...(history ? { history } : {}),
    });
    open.push(pubsub);
    await pubsub.connect();
    return pubsub;
  };
  const historyOf = (pubsub: NatsPubSub): TopicHistory => {
    assert.ok(pubsub.history, 'history is on');
    return pubsub.history;
  };
  /** Makes the topic's stream (a first read does), as the server's follow() does before any publish. */
  const useTopic = async (pubsub: NatsPubSub, topic: string): Promise<void> => {
    await historyOf(pubsub).read(topic, '', 1);
  };

  before(async () => {
    broker = await startNats({ jetstream: true });
    admin = await natsConnect({
      servers: broker.url,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 50,
    });
  });
  after(async () => {
    await admin.close();
    await broker.stop();
  });
  afterEach(async () => {
    await Promise.all(open.splice(0).map((pubsub) => pubsub.disconnect()));
    if (!broker.running) await broker.restart();
  });

  it('makes a stream per topic over [topic, topic.>], bounded by the options, on file storage', async () => {
    const topic = freshTopic();
    const pubsub = await client({ maxEvents: 7, maxAge: 60_000 });
    await historyOf(pubsub).read(topic, '0:0', 1);
    const jsm = await jetstreamManager(admin);
    const info = await jsm.streams.info(streamName(topic));
    assert.equal(info.config.name, `PUSHWIRE_${topic}`);
    assert.deepEqual([...(info.config.subjects ?? [])].sort(), [topic, `${topic}.>`].sort());
    assert.equal(info.config.max_msgs, 7);
    assert.equal(info.config.max_age, 60_000 * 1_000_000);
    assert.equal(info.config.storage, 'file');
    assert.equal(streamName('app.events_x'), 'PUSHWIRE_app_2Eevents_5Fx');
  });

  it('updates an existing stream to the bounds of the options', async () => {
    const topic = freshTopic();
    const first = await client({ maxEvents: 5 });
    await historyOf(first).read(topic, '0:0', 1);
    const second = await client({ maxEvents: 9 });
    await historyOf(second).read(topic, '0:0', 1);
    const jsm = await jetstreamManager(admin);
    assert.equal((await jsm.streams.info(streamName(topic))).config.max_msgs, 9);
  });

  it('uses a stream an operator made over the topic, as it is', async () => {
    const topic = freshTopic();
    const jsm = await jetstreamManager(admin);
    await jsm.streams.add({ name: `OPS_${topic}`, subjects: [`${topic}.>`, topic], max_msgs: 3 });
    const pubsub = await client({ maxEvents: 50 });
    await useTopic(pubsub, topic);
    for (let i = 0; i < 5; i++) await pubsub.publish(topic, text(`e${i}`));
    const info = await jsm.streams.info(`OPS_${topic}`);
    assert.equal(info.config.max_msgs, 3, "the operator's bounds are kept");
    assert.equal(info.state.messages, 3);
    const { head } = await historyOf(pubsub).read(topic, '', 1);
    assert.equal(head, `${streamEpoch(info.created)}:5`);
    await assert.rejects(jsm.streams.info(streamName(topic)), 'no PUSHWIRE_ stream besides it');
  });

  it('ages events out after maxAge: their positions are no longer recovered', async () => {
    const topic = freshTopic();
    const pubsub = await client({ maxAge: 300 });
    const history = historyOf(pubsub);
    await useTopic(pubsub, topic);
    for (let i = 0; i < 3; i++) await pubsub.publish(topic, text(`e${i}`));
    const { head } = await history.read(topic, '', 1);
    const start = `${parsePosition(head)?.epoch}:0`;
    assert.equal((await history.read(topic, start, 10)).entries.length, 3);
    await waitFor(async () => !(await history.read(topic, start, 10)).recovered, {
      timeout: 10_000,
      interval: 50,
      message: 'the events never aged out',
    });
    // The newest position is still a good place to resume from: nothing after it is missing.
    assert.deepEqual(await history.read(topic, head, 10), {
      recovered: true,
      entries: [],
      more: false,
      head,
    });
  });

  it('follows in publish order, with increasing positions of one epoch', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    const history = historyOf(pubsub);
    const follow = new Follow();
    await history.follow(topic, follow.handler);
    const sent = Array.from({ length: 200 }, (_, i) => `e${i}`);
    for (const [i, value] of sent.entries()) {
      await pubsub.publish(i % 2 === 0 ? topic : `${topic}.task.create`, text(value));
    }
    await follow.until(() => follow.events.length >= sent.length, 'not every event was followed');
    assert.deepEqual(follow.texts(), sent);
    assert.equal(follow.events[1]?.subject, `${topic}.task.create`);
    const epochs = new Set(follow.events.map((event) => parsePosition(event.position)?.epoch));
    assert.equal(epochs.size, 1);
    for (let i = 1; i < follow.events.length; i++) {
      const [previous, current] = [follow.events[i - 1], follow.events[i]];
      assert.ok(previous && current);
      assert.equal(history.compare(previous.position, current.position), -1);
      assert.equal(history.compare(current.position, previous.position), 1);
    }
    const last = follow.events.at(-1)?.position ?? '';
    assert.equal(history.compare(last, last), 0);
    assert.ok(Number.isNaN(history.compare('nonsense', last)));
  });

  it('follows from the time of the call: what was stored before is not delivered', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    await useTopic(pubsub, topic);
    await pubsub.publish(topic, text('old'));
    const follow = new Follow();
    await historyOf(pubsub).follow(topic, follow.handler);
    await pubsub.publish(topic, text('new'));
    await follow.until(() => follow.has('new'), 'the new event was not followed');
    assert.deepEqual(follow.texts(), ['new']);
  });

  it('stops following once unsubscribed (idempotent)', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    const history = historyOf(pubsub);
    const stopped = new Follow();
    const unsubscribe = await history.follow(topic, stopped.handler);
    const marker = new Follow();
    await history.follow(topic, marker.handler);
    await unsubscribe();
    await unsubscribe();
    await pubsub.publish(topic, text('after'));
    await marker.until(() => marker.has('after'), 'the marker was not followed');
    assert.deepEqual(stopped.texts(), []);
  });

  it('reads exactly the events after since, with their positions and subjects', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    const history = historyOf(pubsub);
    const follow = new Follow();
    await history.follow(topic, follow.handler);
    for (let i = 0; i < 10; i++) await pubsub.publish(`${topic}.t.c`, text(`e${i}`));
    await follow.until(() => follow.events.length === 10, 'not every event was followed');
    const since = follow.events[3]?.position ?? '';
    const read = await history.read(topic, since, 100);
    assert.equal(read.recovered, true);
    assert.equal(read.more, false);
    assert.deepEqual(
      read.entries.map((entry) => dec.decode(entry.payload)),
      follow.texts().slice(4),
    );
    assert.deepEqual(
      read.entries.map((entry) => entry.position),
      follow.events.slice(4).map((event) => event.position),
    );
    assert.ok(read.entries.every((entry) => entry.subject === `${topic}.t.c`));
    assert.equal(read.head, follow.events.at(-1)?.position);

    const atHead = await history.read(topic, read.head, 100);
    assert.deepEqual(atHead, { recovered: true, entries: [], more: false, head: read.head });
    const fromZero = await history.read(topic, `${parsePosition(read.head)?.epoch}:0`, 100);
    assert.equal(fromZero.recovered, true);
    assert.equal(fromZero.entries.length, 10);
  });

  it('stores a publication retried with the same id once (a lost PubAck does not duplicate it)', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    const history = historyOf(pubsub);
    await useTopic(pubsub, topic);
    const { head } = await history.read(topic, '', 1);
    // A retry after an attempt the broker stored, then two publications without an id.
    await pubsub.publish(`${topic}.t.c`, text('once'), { id: 'publication-1' });
    await pubsub.publish(`${topic}.t.c`, text('once'), { id: 'publication-1' });
    await pubsub.publish(`${topic}.t.c`, text('twice'));
    await pubsub.publish(`${topic}.t.c`, text('twice'));
    const read = await history.read(topic, head, 10);
    assert.deepEqual(
      read.entries.map((entry) => dec.decode(entry.payload)),
      ['once', 'twice', 'twice'],
    );
  });

  it('the server gives one id to every retry of one publication', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    await useTopic(pubsub, topic);
    const ids: Array<string | undefined> = [];
    let failures = 1;
    // The first attempt is stored, then "fails" as a timed-out PubAck would; the retry must
    // carry the same id, so that the stream keeps one copy.
    const publish = pubsub.publish.bind(pubsub);
    pubsub.publish = async (subject, payload, options) => {
      ids.push(options?.id);
      await publish(subject, payload, options);
      if (failures-- > 0) throw new Error('PubAck lost');
    };
    const push = pushMiddleware(pubsub, topic, { publishRetryDelay: 1 });
    await push.ready;
    const { head } = await historyOf(pubsub).read(topic, '', 1);
    await push.publish({ identity: 'task', type: 'create', entity: { n: 1 } });
    await push.publish({ identity: 'task', type: 'create', entity: { n: 2 } });
    assert.equal(ids.length, 3);
    assert.equal(ids[0], ids[1], 'a retry carries the id of its first attempt');
    assert.notEqual(ids[1], ids[2], 'another publication has an id of its own');
    assert.equal((await historyOf(pubsub).read(topic, head, 10)).entries.length, 2);
    await push.close();
  });

  it('reads an empty topic as recovered from <epoch>:0, with that head', async () => {
    const topic = freshTopic();
    const history = historyOf(await client());
    const empty = await history.read(topic, 'x:0', 10);
    assert.equal(empty.recovered, false);
    assert.match(empty.head, /^[0-9a-z]+:0$/);
    assert.deepEqual(await history.read(topic, empty.head, 10), {
      recovered: true,
      entries: [],
      more: false,
      head: empty.head,
    });
  });

  it('pages with max and more', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    await useTopic(pubsub, topic);
    const history = historyOf(pubsub);
    for (let i = 0; i < 25; i++) await pubsub.publish(topic, text(`e${i}`));
    const { head } = await history.read(topic, '-', 1);
    let since = `${parsePosition(head)?.epoch}:0`;
    const pages: string[][] = [];
    for (;;) {
      const page = await history.read(topic, since, 10);
      assert.equal(page.recovered, true);
      pages.push(page.entries.map((entry) => dec.decode(entry.payload)));
      const last = page.entries.at(-1);
      if (!page.more || !last) break;
      since = last.position;
    }
    assert.deepEqual(
      pages.map((page) => page.length),
      [10, 10, 5],
    );
    assert.deepEqual(
      pages.flat(),
      Array.from({ length: 25 }, (_, i) => `e${i}`),
    );
    const exact = await history.read(topic, `${parsePosition(head)?.epoch}:15`, 10);
    assert.equal(exact.entries.length, 10);
    assert.equal(exact.more, false, 'no more after the last stored event');
    await assert.rejects(history.read(topic, head, 0), RangeError);
  });

  it('trims to maxEvents: a trimmed position is not recovered, the one before the oldest is', async () => {
    const topic = freshTopic();
    const pubsub = await client({ maxEvents: 5 });
    await useTopic(pubsub, topic);
    const history = historyOf(pubsub);
    for (let i = 1; i <= 12; i++) await pubsub.publish(topic, text(`e${i}`));
    const { head } = await history.read(topic, '-', 1);
    const epoch = parsePosition(head)?.epoch;
    assert.equal(sequenceOf(head), 12);
    for (const trimmed of [0, 1, 6]) {
      const read = await history.read(topic, `${epoch}:${trimmed}`, 100);
      assert.equal(read.recovered, false, `since ${trimmed} is trimmed`);
      assert.deepEqual(read.entries, []);
      assert.equal(read.head, head);
    }
    const kept = await history.read(topic, `${epoch}:7`, 100);
    assert.equal(kept.recovered, true);
    assert.deepEqual(
      kept.entries.map((entry) => dec.decode(entry.payload)),
      ['e8', 'e9', 'e10', 'e11', 'e12'],
    );
  });

  it('answers recovered: false for a malformed since, another epoch, a future position', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    await useTopic(pubsub, topic);
    const history = historyOf(pubsub);
    for (let i = 0; i < 3; i++) await pubsub.publish(topic, text(`e${i}`));
    const { head } = await history.read(topic, '', 1);
    const epoch = parsePosition(head)?.epoch ?? '';
    const otherEpoch = `${epoch.slice(0, -1)}${epoch.endsWith('a') ? 'b' : 'a'}`;
    for (const since of [
      '',
      'garbage',
      ':1',
      `${epoch}:`,
      `${epoch}:-1`,
      `${epoch}:1.5`,
      `${epoch}:01`,
      `${epoch}:99999999999999999999`,
      `${otherEpoch}:1`,
      `${epoch}:4`,
      `${epoch}:1000`,
    ]) {
      const read = await history.read(topic, since, 10);
      assert.deepEqual(
        read,
        { recovered: false, entries: [], more: false, head },
        `since ${since}`,
      );
    }
    assert.ok(Number.isNaN(history.compare(`${otherEpoch}:1`, `${epoch}:1`)));
  });

  it('gives a new epoch when the stream is deleted and made again', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    const history = historyOf(pubsub);
    const follow = new Follow();
    await history.follow(topic, follow.handler);
    await pubsub.publish(topic, text('first'));
    await follow.until(() => follow.has('first'), 'the first event was not followed');
    const oldPosition = follow.events[0]?.position ?? '';

    const jsm = await jetstreamManager(admin);
    await jsm.streams.delete(streamName(topic));
    // The next publish finds no stream, makes it again and is stored in the new one. (The
    // follower makes it again too: a publish racing with that may fail and be retried.)
    await publishWhenBack(pubsub, topic, text('second'));
    await follow.until(() => follow.has('second'), 'the event of the new stream was not followed');
    const newPosition = follow.events.find((event) => event.text === 'second')?.position ?? '';
    assert.notEqual(parsePosition(newPosition)?.epoch, parsePosition(oldPosition)?.epoch);
    assert.equal(sequenceOf(newPosition), 1);

    const stale = await history.read(topic, oldPosition, 10);
    assert.equal(stale.recovered, false);
    assert.equal(stale.head, newPosition);
    const info = await jsm.streams.info(streamName(topic));
    assert.equal(streamEpoch(info.created), parsePosition(newPosition)?.epoch);
    await pubsub.publish(topic, text('third'));
    await follow.until(() => follow.has('third'), 'the follower stopped after the new stream');
    assert.deepEqual(follow.texts(), ['first', 'second', 'third']);
  });

  it('delivers a core NATS publish (as bahamut does) in follow and read', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    const history = historyOf(pubsub);
    const follow = new Follow();
    await history.follow(topic, follow.handler);
    const { head } = await history.read(topic, '', 1);
    admin.publish(`${topic}.task.create`, text('from bahamut'));
    await admin.flush();
    await follow.until(() => follow.has('from bahamut'), 'the core publish was not followed');
    const read = await history.read(topic, head, 10);
    assert.equal(read.recovered, true);
    assert.deepEqual(
      read.entries.map((entry) => [entry.subject, dec.decode(entry.payload), entry.position]),
      [[`${topic}.task.create`, 'from bahamut', follow.events[0]?.position]],
    );
  });

  it('still reaches core subscribers (bahamut servers) when publishing through JetStream', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    await historyOf(pubsub).read(topic, '', 1);
    const got = deferred<string>();
    const sub = admin.subscribe(`${topic}.>`, { callback: (_, msg) => got.resolve(msg.string()) });
    await admin.flush();
    await pubsub.publish(`${topic}.task.create`, text('to bahamut'));
    assert.equal(await withTimeout(got.promise, DELIVERY_MS, 'no core delivery'), 'to bahamut');
    sub.unsubscribe();
  });

  it('makes the stream of the first token for a publish on a topic nobody followed yet', async () => {
    const root = freshTopic();
    const pubsub = await client();
    await pubsub.publish(`${root}.task.create`, text('first'));
    const jsm = await jetstreamManager(admin);
    const info = await jsm.streams.info(streamName(root));
    assert.deepEqual([...(info.config.subjects ?? [])].sort(), [root, `${root}.>`].sort());
    // A topic below the root reads and follows that stream, keeping only its own subjects.
    const history = historyOf(pubsub);
    const follow = new Follow();
    await history.follow(`${root}.task`, follow.handler);
    await pubsub.publish(`${root}.user.update`, text('not mine'));
    await pubsub.publish(`${root}.task.delete`, text('second'));
    await follow.until(() => follow.has('second'), 'the sub-topic follower got nothing');
    assert.deepEqual(follow.texts(), ['second']);
    const read = await history.read(`${root}.task`, `${streamEpoch(info.created)}:0`, 10);
    assert.deepEqual(
      read.entries.map((entry) => dec.decode(entry.payload)),
      ['first', 'second'],
    );
    assert.equal(sequenceOf(read.head), 3, "positions are the stream's, shared by its topics");
    await assert.rejects(jsm.streams.info(streamName(`${root}.task`)), 'no stream of its own');
  });

  it('leaves history off by default: core publish, no stream', async () => {
    const topic = freshTopic();
    const pubsub = await client(null);
    assert.equal(pubsub.history, undefined);
    await pubsub.publish(topic, text('core'));
    const jsm = await jetstreamManager(admin);
    await assert.rejects(jsm.streams.info(streamName(topic)));
  });

  it('follows without a gap or a duplicate across a broker kill and restart', async () => {
    const topic = freshTopic();
    const publisher = await client();
    const follower = await client();
    const follow = new Follow();
    await historyOf(follower).follow(topic, follow.handler);
    const before = Array.from({ length: 1000 }, (_, i) => `b${i}`);
    // One connection sends them in order, so the stream stores them in that order.
    await Promise.all(before.map((value) => publisher.publish(topic, text(value))));
    // Killed while the follower is still receiving: what it had not received must come later.
    await broker.kill();
    assert.ok(follow.events.length < before.length, 'the broker died before the follower was done');
    await broker.restart();
    await reachStatus(publisher, 'connected');
    const afterKill = Array.from({ length: 100 }, (_, i) => `a${i}`);
    for (const value of afterKill) await publishWhenBack(publisher, topic, text(value));
    await publishWhenBack(publisher, topic, text('marker'));
    await follow.until(() => follow.has('marker'), 'the follower did not resume', RECOVERY_MS);
    assert.deepEqual(follow.texts(), [...before, ...afterKill, 'marker']);
    const sequences = follow.events.map((event) => sequenceOf(event.position));
    assert.deepEqual(
      sequences,
      sequences.map((_, i) => i + 1),
    );
  });

  it('keeps every acknowledged publish across a broker kill and restart', async () => {
    const topic = freshTopic();
    const pubsub = await client();
    await useTopic(pubsub, topic);
    const history = historyOf(pubsub);
    const sent = Array.from({ length: 300 }, (_, i) => `e${i}`);
    // Concurrent publishes: each acknowledged one must be stored, whatever the order of the acks.
    await Promise.all(sent.map((value) => pubsub.publish(topic, text(value))));
    const { head } = await history.read(topic, '', 1);
    await broker.kill();
    await broker.restart();
    await reachStatus(pubsub, 'connected');
    const epoch = parsePosition(head)?.epoch;
    let read: Awaited<ReturnType<TopicHistory['read']>> | undefined;
    await waitFor(
      async () => {
        try {
          read = await history.read(topic, `${epoch}:0`, 1000);
          return true;
        } catch (error) {
          if (error instanceof PubSubError && error.code === 'PUSH_PUBSUB_UNREACHABLE')
            return false;
          throw error;
        }
      },
      { timeout: RECOVERY_MS, interval: 50, message: 'the history was not readable again' },
    );
    assert.ok(read);
    assert.equal(read.recovered, true, 'the epoch survives a restart');
    assert.equal(read.head, head);
    assert.deepEqual(
      read.entries.map((entry) => dec.decode(entry.payload)).sort(),
      [...sent].sort(),
    );
  });
});
