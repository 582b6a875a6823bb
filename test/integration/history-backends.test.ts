/**
 * History backends: the shared TopicHistory suite (test/helpers/history-contract.ts)
 * over LocalPubSub and over Redis Streams against a real redis-server, then
 * what only a broker can do to a history: connections cut, the broker
 * killed and restarted (without persistence, as brokers.ts runs it).
 *
 * Nothing sleeps: tests wait for the events or statuses that prove their
 * point, with deadlines.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import { createClient, RESP_TYPES } from 'redis';
import { PubSubError } from '../../lib/errors.js';
import type { HistoryOptions, HistoryPubSubClient } from '../../lib/pubsub/contract.js';
import { LocalPubSub } from '../../lib/pubsub/local.js';
import { historyEpochKey, historyStreamKey } from '../../lib/pubsub/redis-history.js';
import { RedisPubSub } from '../../lib/pubsub/redis.js';
import { startRedis, type Broker } from '../helpers/brokers.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { mb, retainedHeap } from '../helpers/heap.js';
import {
  bytes,
  entryTexts,
  FollowInbox,
  runHistoryContract,
  uniqueTopic,
} from '../helpers/history-contract.js';
import { waitFor } from '../helpers/wait.js';

/** How long a restarted broker may take to be reconnected. */
const RECOVERY_MS = 15_000;

failOnUnhandledRejections();

/** The retained heap plus ArrayBuffer backing stores (where payload copies live). */
async function retainedWithBuffers(): Promise<number> {
  const heap = await retainedHeap();
  return heap + process.memoryUsage().arrayBuffers;
}

runHistoryContract('LocalPubSub', () => ({
  create: (history) => new LocalPubSub({ history }),
  // One instance is the whole bus: a peer is the same object.
  peer: (client) => client,
  maxEventsSlack: 0,
}));

let contractBroker: Broker | undefined;
runHistoryContract('RedisPubSub', () => ({
  start: async () => {
    contractBroker = await startRedis();
  },
  stop: async () => {
    await contractBroker?.stop();
  },
  create: (history) => new RedisPubSub({ url: contractBroker?.url, history }),
  // MAXLEN ~ trims whole stream nodes of up to 100 entries (stream-node-max-entries).
  maxEventsSlack: 200,
}));

describe('LocalPubSub history', () => {
  it('gives every instance its own epoch: a position of another process is not recovered', async () => {
    const first = new LocalPubSub({ history: {} });
    const second = new LocalPubSub({ history: {} });
    await Promise.all([first.connect(), second.connect()]);
    await first.publish('events', bytes('a'));
    const { head } = await first.history!.read('events', 'x', 1);
    assert.notEqual(first.history!.epoch, second.history!.epoch);
    const read = await second.history!.read('events', head, 10);
    assert.equal(read.recovered, false);
    assert.ok(Number.isNaN(second.history!.compare(head, head)));
  });

  it('keeps at most maxEvents per root, and no history at all when the option is absent', async () => {
    const plain = new LocalPubSub();
    assert.equal(plain.history, undefined);
    const bus = new LocalPubSub({ history: { maxEvents: 5 } });
    await bus.connect();
    for (let i = 0; i < 50; i++) await bus.publish(i % 2 ? 'a.x' : 'b', bytes(`${i}`));
    assert.equal(bus.history!.size('a'), 5);
    assert.equal(bus.history!.size('b'), 5);
  });

  it('holds memory bounded by maxEvents: flat when three times more is published', async () => {
    const payload = Buffer.alloc(200, 7);
    const bus = new LocalPubSub({ history: { maxEvents: 10_000 } });
    await bus.connect();
    const publish = async (count: number): Promise<void> => {
      for (let i = 0; i < count; i++) await bus.publish('events.task.create', payload);
    };
    await publish(100);
    const base = await retainedWithBuffers();
    await publish(10_000);
    const full = await retainedWithBuffers();
    await publish(30_000);
    const after = await retainedWithBuffers();
    // bench/history-memory.ts measures about 3.2 MB; the bound leaves room for other runtimes.
    assert.ok(full - base < 6 * 1048576, `10,000 events of 200 B take ${mb(full - base)}`);
    assert.ok(after - full < 1048576, `it grew by ${mb(after - full)} past maxEvents`);
    assert.equal(bus.history!.size('events'), 10_000);
    await bus.disconnect();
  });

  it('rejects bounds that are not positive integers', () => {
    assert.throws(() => new LocalPubSub({ history: { maxEvents: 0 } }), RangeError);
    assert.throws(() => new LocalPubSub({ history: { maxAge: 1.5 } }), RangeError);
    assert.throws(() => new RedisPubSub({ history: { maxEvents: -1 } }), RangeError);
  });

  it('delivers to followers in the microtask of subscribers, after them', async () => {
    const bus = new LocalPubSub({ history: {} });
    await bus.connect();
    const order: string[] = [];
    await bus.subscribe('events', () => order.push('subscriber'));
    await bus.history!.follow('events', () => order.push('follower'));
    const published = bus.publish('events', bytes('x'));
    assert.deepEqual(order, [], 'nothing runs inside publish');
    await published;
    assert.deepEqual(order, ['subscriber', 'follower']);
  });
});

describe('RedisPubSub history against a broker that fails', () => {
  let broker: Broker;
  const open: HistoryPubSubClient[] = [];
  const create = async (history: HistoryOptions = {}): Promise<HistoryPubSubClient> => {
    const client = new RedisPubSub({
      url: broker.url,
      reconnectDelay: 20,
      maxReconnectDelay: 100,
      history,
    }) as HistoryPubSubClient;
    open.push(client);
    await client.connect();
    return client;
  };
  /** An application connection to the broker, for what pushwire does not do (CLIENT KILL, keys). */
  const admin = async () => {
    const client = createClient({ url: broker.url });
    client.on('error', () => undefined);
    await client.connect();
    return client;
  };
  /** Kills the follower's connection (by the name RedisPubSub gives it), as a network cut would. */
  const killFollower = async (redis: Awaited<ReturnType<typeof admin>>): Promise<void> => {
    const list = String(await redis.sendCommand(['CLIENT', 'LIST']));
    const ids = list
      .split('\n')
      .filter((line) => line.includes('name=pushwire-history-follower'))
      .map((line) => /\bid=(\d+)/.exec(line)?.[1]);
    assert.equal(ids.length, 1, 'one follower connection');
    await redis.sendCommand(['CLIENT', 'KILL', 'ID', String(ids[0])]);
  };
  /** Publishes, retrying while the broker is unreachable (as the server's publishRetries would). */
  const publishEventually = async (client: HistoryPubSubClient, topic: string, text: string) => {
    await waitFor(
      async () => {
        try {
          await client.publish(topic, bytes(text));
          return true;
        } catch (error) {
          if (error instanceof PubSubError) return false;
          throw error;
        }
      },
      { timeout: RECOVERY_MS, interval: 20, message: `could not publish ${text}` },
    );
  };

  before(async () => {
    broker = await startRedis();
  });
  after(() => broker.stop());
  afterEach(async () => {
    await Promise.all(open.splice(0).map((client) => client.disconnect()));
    if (!broker.running) await broker.restart();
  });

  it('documents its keys: a stream per root with subject and payload fields, an epoch beside it', async () => {
    const client = await create();
    const topic = uniqueTopic();
    await client.publish(`${topic}.task.create`, Uint8Array.from([0, 255, 10]));
    await client.history.follow(topic, () => undefined); // the epoch is made at first use
    const redis = await admin();
    try {
      const entries =
        (await redis
          .withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer })
          .xRange(historyStreamKey(topic), '-', '+')) ?? [];
      assert.equal(entries.length, 1);
      const message = entries[0]?.message as Record<string, Buffer>;
      assert.equal(message.s?.toString(), `${topic}.task.create`);
      assert.deepEqual(message.p, Buffer.from([0, 255, 10]));
      const epoch = await redis.get(historyEpochKey(topic));
      assert.match(String(epoch), /^[0-9a-f]{12}$/);
      const { head } = await client.history.read(topic, 'x', 1);
      assert.equal(head, `${epoch}:${String(entries[0]?.id)}`);
    } finally {
      redis.destroy();
    }
  });

  it('follows without a gap when its connection is cut while events are published', async () => {
    const client = await create();
    const topic = uniqueTopic();
    const inbox = new FollowInbox();
    await client.history.follow(topic, inbox.handler);
    const texts = Array.from({ length: 200 }, (_, i) => `c${i}`);
    const redis = await admin();
    try {
      for (const [i, text] of texts.entries()) {
        await client.publish(topic, bytes(text));
        if (i === 50 || i === 120) {
          // Cut the follower's connection only: the publisher goes on publishing meanwhile.
          await killFollower(redis);
        }
      }
      await inbox.until(
        () => inbox.events.length >= texts.length,
        'events were missed',
        RECOVERY_MS,
      );
      assert.deepEqual(inbox.texts(), texts, 'every event once, in order');
    } finally {
      redis.destroy();
    }
  });

  it('follows across a broker kill and restart; the epoch changes as the history was lost', async () => {
    const client = await create();
    const topic = uniqueTopic();
    const inbox = new FollowInbox();
    await client.history.follow(topic, inbox.handler);
    for (let i = 0; i < 20; i++) await client.publish(topic, bytes(`before${i}`));
    await inbox.until(() => inbox.events.length === 20, 'events before the kill');
    const { head: oldHead } = await client.history.read(topic, 'x', 1);

    await broker.kill();
    await assert.rejects(
      client.publish(topic, bytes('during')),
      (error) => error instanceof PubSubError && error.code === 'PUSH_PUBSUB_UNREACHABLE',
    );
    await assert.rejects(client.history.read(topic, oldHead, 10), PubSubError);
    await broker.restart();

    const after = Array.from({ length: 20 }, (_, i) => `after${i}`);
    for (const text of after) await publishEventually(client, topic, text);
    await inbox.until(
      () => inbox.events.length === 40,
      'events after the restart were missed',
      RECOVERY_MS,
    );
    assert.deepEqual(
      inbox.texts().slice(20),
      after,
      'every event stored after the restart, in order',
    );
    const oldEpoch = oldHead.slice(0, oldHead.indexOf(':'));
    const newPosition = inbox.events[20]?.position ?? '';
    assert.notEqual(newPosition.slice(0, newPosition.indexOf(':')), oldEpoch);
    const stale = await client.history.read(topic, oldHead, 10);
    assert.equal(stale.recovered, false, 'a position of the lost history is not recovered');
    assert.notEqual(stale.head.slice(0, stale.head.indexOf(':')), oldEpoch);
    const fresh = await client.history.read(topic, inbox.events[25]?.position ?? '', 100);
    assert.deepEqual(entryTexts(fresh.entries), after.slice(6));
  });

  it('reports a gap (PUSH_HISTORY_GAP) when events were trimmed before its follower read them', async () => {
    const errors: unknown[] = [];
    const client = new RedisPubSub({
      url: broker.url,
      reconnectDelay: 20,
      maxReconnectDelay: 100,
      history: { maxEvents: 10 },
      onError: (error) => errors.push(error),
    }) as HistoryPubSubClient;
    open.push(client);
    await client.connect();
    const topic = uniqueTopic();
    const inbox = new FollowInbox();
    await client.history.follow(topic, inbox.handler);
    await client.publish(topic, bytes('first'));
    await inbox.untilText('first');
    const redis = await admin();
    try {
      // A password keeps the follower out once cut (node-redis reconnects at once), while the
      // connections already authenticated, the publisher's and this one, go on.
      await redis.configSet('requirepass', 'keep-out');
      await killFollower(redis);
      for (let i = 0; i < 300; i++) await client.publish(topic, bytes(`lost${i}`));
      await redis.configSet('requirepass', '');
    } finally {
      redis.destroy();
    }
    await inbox.untilText('lost299', RECOVERY_MS);
    assert.ok(
      errors.some((error) => error instanceof PubSubError && error.code === 'PUSH_HISTORY_GAP'),
      `no gap reported: ${errors.map(String).join('; ')} (${inbox.events.length} followed)`,
    );
    assert.ok(
      inbox.events.length < 301,
      `what was trimmed could not be delivered (${inbox.events.length})`,
    );
  });

  it('works on a shared client: follows on a duplicate, which disconnect() closes', async () => {
    const shared = await admin();
    try {
      const client = new RedisPubSub({ client: shared, history: {} }) as HistoryPubSubClient;
      open.push(client);
      await client.connect();
      const topic = uniqueTopic();
      const inbox = new FollowInbox();
      await client.history.follow(topic, inbox.handler);
      await client.publish(topic, bytes('shared'));
      await inbox.untilText('shared');
      const followers = async (): Promise<number> =>
        String(await shared.sendCommand(['CLIENT', 'LIST']))
          .split('\n')
          .filter((line) => line.includes('name=pushwire-history-follower')).length;
      assert.equal(await followers(), 1);
      await client.disconnect();
      assert.equal(shared.isReady, true, "the application's client stays open");
      await waitFor(async () => (await followers()) === 0, {
        timeout: 5_000,
        message: 'the follower connection was not closed',
      });
    } finally {
      shared.destroy();
    }
  });

  it('rejects follow() with PUSH_PUBSUB_UNREACHABLE while the broker is down', async () => {
    const client = await create();
    await broker.kill();
    await assert.rejects(
      client.history.follow(uniqueTopic(), () => undefined),
      (error) => error instanceof PubSubError && error.code === 'PUSH_PUBSUB_UNREACHABLE',
    );
  });
});
