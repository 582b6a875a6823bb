/**
 * The shared backend suite: every PubSubClient (LocalPubSub, NATS, Redis)
 * must pass the same specification (lib/pubsub/contract.ts), the network
 * backends against a real broker process. Then, for the network backends,
 * what happens when the broker dies and comes back, or was never there.
 *
 * Nothing here sleeps: a test waits for the payload or status that proves
 * its point, with a deadline. To prove that something was NOT delivered, it
 * publishes a marker afterwards through the same path and waits for the
 * marker: publications of one publisher arrive in order, so whatever had
 * been delivered would have arrived first.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, afterEach, before, describe, it } from 'node:test';
import { connect as natsConnect } from '@nats-io/transport-node';
import { createClient } from 'redis';
import { NotConnectedError, PubSubError } from '../../lib/errors.js';
import type { PubSubClient, PubSubHandler, PubSubStatus } from '../../lib/pubsub/contract.js';
import { LocalPubSub } from '../../lib/pubsub/local.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { RedisPubSub } from '../../lib/pubsub/redis.js';
import { freePort, startNats, startRedis, type Broker } from '../helpers/brokers.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

/** How long a payload may take to arrive. */
const DELIVERY_MS = 5_000;
/** How long a broker outage may take to be noticed, or a restarted broker to be reconnected. */
const RECOVERY_MS = 15_000;

// A backend must never leave a rejection unhandled, least of all when its broker dies.
failOnUnhandledRejections();

interface ClientOptions {
  onError?: (error: unknown) => void;
}

/** What the shared suite needs of a backend. */
interface Fixture {
  name: string;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** A client that is not connected yet. */
  create(options?: ClientOptions): PubSubClient;
  /**
   * `count` clients that reach each other: distinct connections (as on
   * distinct servers) for a broker, the one bus for LocalPubSub.
   */
  peers(count: number, options?: ClientOptions): PubSubClient[];
}

/** A network backend, for the broker-fault tests: clients of a given URL with fast reconnects. */
interface NetworkFixture {
  name: string;
  startBroker(): Promise<Broker>;
  create(url: string, options?: ClientOptions & { waitOnFirstConnect?: boolean }): PubSubClient;
}

const enc = new TextEncoder();
const text = (value: string): Uint8Array => enc.encode(value);

/** Records what a subscription receives and lets a test wait for it. */
class Inbox {
  readonly messages: Array<{ subject: string; payload: Buffer; isUint8Array: boolean }> = [];
  readonly #waiters = new Set<() => void>();

  readonly handler: PubSubHandler = (payload, subject) => {
    // A copy: the payload may be a view into a driver's buffer.
    this.messages.push({
      subject,
      payload: Buffer.from(payload),
      isUint8Array: payload instanceof Uint8Array,
    });
    for (const waiter of [...this.#waiters]) waiter();
  };

  texts(): string[] {
    return this.messages.map((m) => m.payload.toString());
  }

  subjects(): string[] {
    return this.messages.map((m) => m.subject);
  }

  has(value: string): boolean {
    return this.texts().includes(value);
  }

  /** Resolves when `done` holds; rejects after `ms` saying what arrived instead. */
  async until(done: () => boolean, what: string, ms = DELIVERY_MS): Promise<void> {
    if (done()) return;
    const arrived = deferred();
    const waiter = (): void => {
      if (done()) arrived.resolve();
    };
    this.#waiters.add(waiter);
    try {
      await withTimeout(arrived.promise, ms, what);
    } catch (error) {
      const summary = this.messages
        .slice(0, 10)
        .map((m) => `${m.subject}:${m.payload.length}B`)
        .join(', ');
      throw new Error(`${(error as Error).message}; received ${this.messages.length}: ${summary}`, {
        cause: error,
      });
    } finally {
      this.#waiters.delete(waiter);
    }
  }
}

/** Resolves when `client.status` is (or becomes) one of `wanted`. */
async function reachStatus(
  client: PubSubClient,
  wanted: PubSubStatus[],
  ms = RECOVERY_MS,
): Promise<void> {
  assert.ok(client.onStatus, 'the backend reports status changes');
  const reached = deferred();
  const off = client.onStatus((status) => {
    if (wanted.includes(status)) reached.resolve();
  });
  if (wanted.includes(client.status)) reached.resolve();
  try {
    await withTimeout(reached.promise, ms, `status never became ${wanted.join(' or ')}`);
  } catch (error) {
    throw new Error(`${(error as Error).message} (it is ${client.status})`, { cause: error });
  } finally {
    off();
  }
}

/** Every status a client reports from now on. */
function statusLog(client: PubSubClient): PubSubStatus[] {
  const log: PubSubStatus[] = [];
  client.onStatus?.((status) => log.push(status));
  return log;
}

function isUnreachable(error: unknown): boolean {
  return error instanceof PubSubError && error.code === 'PUSH_PUBSUB_UNREACHABLE';
}

function backendSuite(fixture: Fixture): void {
  describe(`${fixture.name}: the PubSubClient contract`, () => {
    const open: PubSubClient[] = [];
    const peers = async (count: number, options?: ClientOptions): Promise<PubSubClient[]> => {
      const clients = fixture.peers(count, options);
      open.push(...clients);
      await Promise.all(clients.map((client) => client.connect()));
      return clients;
    };
    const create = (options?: ClientOptions): PubSubClient => {
      const client = fixture.create(options);
      open.push(client);
      return client;
    };

    before(() => fixture.start());
    after(() => fixture.stop());
    afterEach(async () => {
      await Promise.all(open.splice(0).map((client) => client.disconnect()));
    });

    it('delivers a publication to a subscriber, with its subject', async () => {
      const [publisher, subscriber] = await peers(2);
      assert.ok(publisher && subscriber);
      const inbox = new Inbox();
      await subscriber.subscribe('events', inbox.handler);
      await publisher.publish('events', text('hello'));
      await inbox.until(() => inbox.messages.length === 1, 'the publication did not arrive');
      assert.deepEqual(inbox.texts(), ['hello']);
      assert.deepEqual(inbox.subjects(), ['events']);
    });

    it('keeps the order of 1,000 publications from one publisher', async () => {
      const [publisher, subscriber] = await peers(2);
      assert.ok(publisher && subscriber);
      const inbox = new Inbox();
      await subscriber.subscribe('events.order', inbox.handler);
      const sequence = Array.from({ length: 1000 }, (_, i) => i);
      await Promise.all(
        sequence.map((i) => {
          const payload = Buffer.alloc(4);
          payload.writeUInt32BE(i);
          return publisher.publish('events.order', payload);
        }),
      );
      await inbox.until(() => inbox.messages.length >= 1000, 'not all 1,000 publications arrived');
      assert.deepEqual(
        inbox.messages.map((m) => m.payload.readUInt32BE(0)),
        sequence,
      );
    });

    it('delivers payloads of 0 B, 1 B, 64 KiB and 1 MiB byte for byte', async () => {
      const [publisher, subscriber] = await peers(2);
      assert.ok(publisher && subscriber);
      const inbox = new Inbox();
      await subscriber.subscribe('events.bytes', inbox.handler);
      const sizes = [0, 1, 64 * 1024, 1024 * 1024];
      // Plain Uint8Arrays, not Buffers: what a backend gets from the envelope encoder.
      const payloads = sizes.map((size) => new Uint8Array(randomBytes(size)));
      for (const payload of payloads) await publisher.publish('events.bytes', payload);
      await inbox.until(() => inbox.messages.length >= sizes.length, 'not every payload arrived');
      assert.equal(inbox.messages.length, sizes.length);
      payloads.forEach((sent, i) => {
        const received = inbox.messages[i];
        assert.ok(received, `payload ${i}`);
        assert.ok(received.isUint8Array, `payload ${i} is a Uint8Array`);
        assert.equal(received.payload.length, sent.length, `length of payload ${i}`);
        assert.ok(received.payload.equals(sent), `payload ${i} (${sent.length} B) differs`);
      });
    });

    it('matches `topic.>` with every subject under topic, and nothing else', async () => {
      const [publisher, subscriber] = await peers(2);
      assert.ok(publisher && subscriber);
      const inbox = new Inbox();
      await subscriber.subscribe('topic.>', inbox.handler);
      for (const subject of ['other.a', 'topic', 'topic.a', 'topic.a.b']) {
        await publisher.publish(subject, text(subject));
      }
      await inbox.until(() => inbox.has('topic.a.b'), 'topic.a.b did not arrive');
      assert.deepEqual(inbox.subjects(), ['topic.a', 'topic.a.b']);
    });

    it('matches `*` with exactly one token', async () => {
      const [publisher, subscriber] = await peers(2);
      assert.ok(publisher && subscriber);
      const inbox = new Inbox();
      await subscriber.subscribe('topic.*.b', inbox.handler);
      for (const subject of ['topic.a.c', 'topic.x.y.b', 'topic.a.b.c', 'topic.a.b']) {
        await publisher.publish(subject, text(subject));
      }
      await inbox.until(() => inbox.has('topic.a.b'), 'topic.a.b did not arrive');
      assert.deepEqual(inbox.subjects(), ['topic.a.b']);
    });

    it('takes glob characters of a wildcard subject literally', async () => {
      const [publisher, subscriber] = await peers(2);
      assert.ok(publisher && subscriber);
      const inbox = new Inbox();
      await subscriber.subscribe('glob?.[x].>', inbox.handler);
      for (const subject of ['globA.x.1', 'globA.[x].1', 'glob?.[x].1']) {
        await publisher.publish(subject, text(subject));
      }
      await inbox.until(() => inbox.has('glob?.[x].1'), 'glob?.[x].1 did not arrive');
      assert.deepEqual(inbox.subjects(), ['glob?.[x].1']);
    });

    it('delivers to every subscriber, on one client and on several', async () => {
      const [publisher, first, second] = await peers(3);
      assert.ok(publisher && first && second);
      const inboxes = [new Inbox(), new Inbox(), new Inbox()] as const;
      await first.subscribe('events.fan', inboxes[0].handler);
      await first.subscribe('events.fan', inboxes[1].handler);
      await second.subscribe('events.fan', inboxes[2].handler);
      await publisher.publish('events.fan', text('to all'));
      for (const [i, inbox] of inboxes.entries()) {
        await inbox.until(() => inbox.messages.length === 1, `subscriber ${i} got nothing`);
        assert.deepEqual(inbox.texts(), ['to all']);
      }
    });

    it('stops delivery once unsubscribe() resolved; unsubscribe is idempotent', async () => {
      const [publisher, subscriber] = await peers(2);
      assert.ok(publisher && subscriber);
      const gone = new Inbox();
      // The witness shares the subscriber's connection, so the marker reaches it by the same path.
      const witness = new Inbox();
      const unsubscribe = await subscriber.subscribe('unsub.sole', gone.handler);
      await subscriber.subscribe('unsub.>', witness.handler);
      await publisher.publish('unsub.sole', text('before'));
      await gone.until(() => gone.has('before'), 'the first publication did not arrive');
      await unsubscribe();
      await unsubscribe();
      await publisher.publish('unsub.sole', text('after'));
      await publisher.publish('unsub.sole', text('marker'));
      await witness.until(() => witness.has('marker'), 'the marker did not arrive');
      assert.deepEqual(witness.texts(), ['before', 'after', 'marker']);
      assert.deepEqual(gone.texts(), ['before']);
    });

    it('keeps the other handlers of a subject when one unsubscribes', async () => {
      const [publisher, subscriber] = await peers(2);
      assert.ok(publisher && subscriber);
      const gone = new Inbox();
      const stays = new Inbox();
      const unsubscribe = await subscriber.subscribe('unsub.shared', gone.handler);
      await subscriber.subscribe('unsub.shared', stays.handler);
      await unsubscribe();
      await publisher.publish('unsub.shared', text('marker'));
      await stays.until(() => stays.has('marker'), 'the marker did not arrive');
      assert.deepEqual(gone.texts(), []);
    });

    it('goes on after a handler throws, and reports the throw to onError', async () => {
      const errors: unknown[] = [];
      const [publisher, subscriber] = await peers(2, { onError: (error) => errors.push(error) });
      assert.ok(publisher && subscriber);
      const inbox = new Inbox();
      const boom = new Error('boom');
      let calls = 0;
      await subscriber.subscribe('events.throw', (payload, subject) => {
        calls += 1;
        if (calls === 1) throw boom;
        inbox.handler(payload, subject);
      });
      await publisher.publish('events.throw', text('first'));
      await publisher.publish('events.throw', text('second'));
      await inbox.until(() => inbox.has('second'), 'the payload after the throw did not arrive');
      assert.deepEqual(inbox.texts(), ['second']);
      assert.ok(errors.includes(boom), 'onError got the thrown error');
    });

    it('rejects publish() before connect() with NotConnectedError', async () => {
      const client = create();
      await assert.rejects(client.publish('events', text('early')), NotConnectedError);
    });

    it('connects idempotently and reports the status', async () => {
      const client = create();
      assert.equal(client.status, 'disconnected');
      const log = statusLog(client);
      await Promise.all([client.connect(), client.connect()]);
      await client.connect();
      assert.equal(client.status, 'connected');
      assert.equal(log.filter((s) => s === 'connected').length, 1, `statuses: ${log.join(', ')}`);
    });

    it('disconnects idempotently: closed, and publish() rejects with NotConnectedError', async () => {
      const [client] = await peers(1);
      assert.ok(client);
      const log = statusLog(client);
      await Promise.all([client.disconnect(), client.disconnect()]);
      await client.disconnect();
      assert.equal(client.status, 'closed');
      assert.deepEqual(log, ['closed']);
      await assert.rejects(client.publish('events', text('late')), NotConnectedError);
    });

    it('stops calling a status listener once it is removed', async () => {
      const client = create();
      assert.ok(client.onStatus);
      const seen: PubSubStatus[] = [];
      const off = client.onStatus((status) => seen.push(status));
      await client.connect();
      off();
      await client.disconnect();
      assert.ok(seen.includes('connected'), `statuses: ${seen.join(', ')}`);
      assert.ok(!seen.includes('closed'), `statuses: ${seen.join(', ')}`);
    });
  });
}

function faultSuite(fixture: NetworkFixture): void {
  describe(`${fixture.name}: broker faults`, () => {
    let broker: Broker;
    const open: PubSubClient[] = [];
    const create = (options?: Parameters<NetworkFixture['create']>[1]): PubSubClient => {
      const client = fixture.create(broker.url, options);
      open.push(client);
      return client;
    };

    before(async () => {
      broker = await fixture.startBroker();
    });
    after(() => broker.stop());
    afterEach(async () => {
      await Promise.all(open.splice(0).map((client) => client.disconnect()));
      // Each test starts with a broker up, whatever the previous one did to it.
      if (!broker.running) await broker.restart();
    });

    it('survives a broker crash: publish rejects during the outage, the subscription resumes', async () => {
      const errors: unknown[] = [];
      const publisher = create({ onError: (error) => errors.push(error) });
      const subscriber = create({ onError: (error) => errors.push(error) });
      await Promise.all([publisher.connect(), subscriber.connect()]);
      const publisherLog = statusLog(publisher);
      const subscriberLog = statusLog(subscriber);
      const inbox = new Inbox();
      await subscriber.subscribe('events', inbox.handler);
      await publisher.publish('events', text('before'));
      await inbox.until(() => inbox.has('before'), 'the first publication did not arrive');

      await broker.kill();
      await reachStatus(publisher, ['disconnected', 'reconnecting']);
      await reachStatus(subscriber, ['disconnected', 'reconnecting']);
      // The documented behaviour: no buffering, an immediate rejection the server can retry.
      await assert.rejects(publisher.publish('events', text('during')), isUnreachable);
      await assert.rejects(
        subscriber.subscribe('events.more', () => undefined),
        isUnreachable,
      );

      await broker.restart();
      await reachStatus(publisher, ['connected']);
      await reachStatus(subscriber, ['connected']);
      // 'connected' means this client is back; the other's subscription may reach the broker
      // a moment later, hence publishing until one arrives.
      await waitFor(
        async () => {
          if (inbox.has('after')) return true;
          await publisher.publish('events', text('after'));
          return inbox.has('after');
        },
        {
          timeout: RECOVERY_MS,
          interval: 50,
          message: 'no publication reached the subscription after recovery',
        },
      );
      const texts = inbox.texts();
      assert.equal(texts[0], 'before');
      assert.ok(
        texts.slice(1).every((t) => t === 'after'),
        `the outage publication was not buffered: ${texts.join(', ')}`,
      );
      for (const log of [publisherLog, subscriberLog]) {
        assert.equal(log[0], 'disconnected', `statuses: ${log.join(', ')}`);
        assert.equal(log.at(-1), 'connected', `statuses: ${log.join(', ')}`);
      }
      assert.ok(
        errors.every((error) => error instanceof PubSubError),
        `errors reported: ${errors.map(String).join('; ')}`,
      );
    });

    it('disconnects promptly while reconnecting', async () => {
      const client = create();
      await client.connect();
      await broker.kill();
      await reachStatus(client, ['reconnecting']);
      await withTimeout(client.disconnect(), 5_000, 'disconnect() hung while reconnecting');
      assert.equal(client.status, 'closed');
      await assert.rejects(client.publish('events', text('late')), NotConnectedError);
    });

    it('rejects connect() with PUSH_PUBSUB_UNREACHABLE when nothing listens', async () => {
      const port = await freePort();
      const client = fixture.create(`${broker.kind}://127.0.0.1:${port}`);
      open.push(client);
      await withTimeout(
        assert.rejects(client.connect(), (error: unknown) => {
          assert.ok(
            isUnreachable(error),
            `a PubSubError PUSH_PUBSUB_UNREACHABLE: ${String(error)}`,
          );
          assert.match((error as Error).message, new RegExp(String(port)));
          return true;
        }),
        5_000,
        'connect() did not give up',
      );
      assert.equal(client.status, 'disconnected');
      // A failed connect() can be retried; it fails the same way.
      await assert.rejects(client.connect(), isUnreachable);
    });

    it('with waitOnFirstConnect, connect() waits for a broker that starts later', async () => {
      await broker.kill();
      const client = create({ waitOnFirstConnect: true });
      const connecting = client.connect();
      assert.equal(client.status, 'connecting');
      await broker.restart();
      await withTimeout(
        connecting,
        RECOVERY_MS,
        'connect() did not resolve after the broker started',
      );
      assert.equal(client.status, 'connected');
      const inbox = new Inbox();
      await client.subscribe('events', inbox.handler);
      await client.publish('events', text('up'));
      await inbox.until(() => inbox.has('up'), 'the publication did not arrive');
    });

    it('with waitOnFirstConnect, disconnect() ends a waiting connect() with NotConnectedError', async () => {
      await broker.kill();
      const client = create({ waitOnFirstConnect: true });
      const connecting = client.connect();
      await client.disconnect();
      await withTimeout(
        assert.rejects(connecting, NotConnectedError),
        5_000,
        'connect() still waiting after disconnect()',
      );
      assert.equal(client.status, 'closed');
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The backends.

backendSuite({
  name: 'LocalPubSub',
  async start() {},
  async stop() {},
  create: (options) => new LocalPubSub(options),
  peers(count, options) {
    // LocalPubSub is the bus: peers of one process share the instance.
    const bus = new LocalPubSub(options);
    return Array.from({ length: count }, () => bus);
  },
});

const natsFixture: NetworkFixture = {
  name: 'NatsPubSub',
  startBroker: () => startNats(),
  create: (url, options) =>
    new NatsPubSub({ servers: url, reconnectTimeWait: 50, reconnectJitter: 0, ...options }),
};

const redisFixture: NetworkFixture = {
  name: 'RedisPubSub',
  startBroker: () => startRedis(),
  create: (url, options) =>
    new RedisPubSub({ url, reconnectDelay: 20, maxReconnectDelay: 100, ...options }),
};

for (const network of [natsFixture, redisFixture]) {
  let broker: Broker | undefined;
  const url = (): string => {
    assert.ok(broker, 'the broker is started');
    return broker.url;
  };
  backendSuite({
    name: network.name,
    async start() {
      broker = await network.startBroker();
    },
    async stop() {
      await broker?.stop();
    },
    create: (options) => network.create(url(), options),
    peers: (count, options) => Array.from({ length: count }, () => network.create(url(), options)),
  });
  faultSuite(network);
}

describe('shared driver connections', () => {
  let nats: Broker;
  let redisBroker: Broker;
  before(async () => {
    [nats, redisBroker] = await Promise.all([startNats(), startRedis()]);
  });
  after(() => Promise.all([nats.stop(), redisBroker.stop()]));

  it('NatsPubSub({ connection }) uses the connection and leaves it open', async () => {
    const connection = await natsConnect({ servers: nats.url });
    try {
      const client = new NatsPubSub({ connection });
      await client.connect();
      const inbox = new Inbox();
      await client.subscribe('shared', inbox.handler);
      await client.publish('shared', text('one'));
      await inbox.until(() => inbox.has('one'), 'the publication did not arrive');
      await client.disconnect();
      assert.equal(client.status, 'closed');
      assert.equal(connection.isClosed(), false);
      // The connection still works, and the client's subscription is gone from it.
      const witness = deferred();
      connection.subscribe('shared', { callback: () => witness.resolve() });
      await connection.flush();
      connection.publish('shared', text('two'));
      await withTimeout(witness.promise, DELIVERY_MS, 'the shared connection stopped working');
      assert.deepEqual(inbox.texts(), ['one']);
    } finally {
      await connection.close();
    }
  });

  it('NatsPubSub reports a shared connection closed by the application', async () => {
    const connection = await natsConnect({ servers: nats.url });
    const errors: unknown[] = [];
    const client = new NatsPubSub({ connection, onError: (error) => errors.push(error) });
    await client.connect();
    await connection.close();
    await reachStatus(client, ['closed'], DELIVERY_MS);
    assert.ok(isUnreachable(errors[0]), `onError was told: ${errors.map(String).join('; ')}`);
    await assert.rejects(client.publish('shared', text('late')), NotConnectedError);
    await client.disconnect();
    assert.equal(client.status, 'closed');
  });

  it('RedisPubSub reports a shared client closed by the application', async () => {
    const redis = createClient({ url: redisBroker.url });
    redis.on('error', () => undefined);
    await redis.connect();
    const errors: unknown[] = [];
    const client = new RedisPubSub({ client: redis, onError: (error) => errors.push(error) });
    await client.connect();
    await redis.close();
    await reachStatus(client, ['closed'], DELIVERY_MS);
    assert.ok(isUnreachable(errors[0]), `onError was told: ${errors.map(String).join('; ')}`);
    await assert.rejects(client.publish('shared', text('late')), NotConnectedError);
    await client.disconnect();
    assert.equal(client.status, 'closed');
  });

  it('RedisPubSub({ client }) publishes with the client, subscribes on a duplicate, leaves the client open', async () => {
    const redis = createClient({ url: redisBroker.url });
    redis.on('error', () => undefined);
    await redis.connect();
    try {
      const client = new RedisPubSub({ client: redis });
      await client.connect();
      const inbox = new Inbox();
      await client.subscribe('shared', inbox.handler);
      await client.publish('shared', text('one'));
      await inbox.until(() => inbox.has('one'), 'the publication did not arrive');
      await client.disconnect();
      assert.equal(client.status, 'closed');
      assert.equal(redis.isReady, true);
      // The duplicate is closed: soon nobody listens on the channel (Redis notices a closed
      // connection in its own time, so a PUBLISH right away may still count it).
      await waitFor(async () => (await redis.publish('shared', 'probe')) === 0, {
        timeout: DELIVERY_MS,
        message: 'the duplicate connection is still subscribed',
      });
      assert.deepEqual(inbox.texts(), ['one']);
    } finally {
      await redis.close();
    }
  });
});

describe('the broker harness', () => {
  it('fails, with how to install it, when a broker binary is missing', async () => {
    const saved = process.env.NATS_SERVER_BIN;
    process.env.NATS_SERVER_BIN = '/nonexistent/nats-server';
    try {
      await assert.rejects(startNats(), (error: unknown) => {
        assert.ok(error instanceof Error);
        assert.match(error.message, /apt-get install -y nats-server/);
        assert.doesNotMatch(error.message, /\n/);
        return true;
      });
    } finally {
      if (saved === undefined) delete process.env.NATS_SERVER_BIN;
      else process.env.NATS_SERVER_BIN = saved;
    }
  });
});
