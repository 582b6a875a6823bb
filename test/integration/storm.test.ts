/**
 * The reconnect storm, small (issue 15 item 3; bench/storm.ts is the large
 * one): 300 sessions of `pushwire/client/node` on a pushwire server process
 * with history on JetStream.
 *
 * - The server is SIGKILLed while events are published through another
 *   server of the fleet, and started again on the same port: every client
 *   reconnects by itself (its backoff), the server has every session back
 *   with its push config applied, every client gets `recovered: true`, and
 *   every event reaches every client exactly once, in order — none of those
 *   published while it was away missing, none of an identity its push config
 *   excludes (which the replay would carry had it run without the config).
 * - The broker is SIGKILLed and restarted under the same sessions: none is
 *   closed, the server does not crash, and the events published after the
 *   restart reach every client with no gap.
 *
 * No sleeps: every wait is for an event of every client, or for a sample of
 * the server process, with a deadline.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createPushClient, type PushClient } from '../../client/node.js';
import { pushMiddleware, type PushMiddleware } from '../../lib/index.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { EXCLUDED_IDENTITY, STORM_CONFIG, STORM_IDENTITY } from '../../bench/storm/common.js';
import { StormServer } from '../../bench/storm/processes.js';
import { freePort, startNats, type Broker } from '../helpers/brokers.js';
import { deferred, waitFor, withTimeout, type Deferred } from '../helpers/wait.js';

const SESSIONS = 300;
/** A server process start (tsx, Express, JetStream) on a busy two-core machine, with margin. */
const START_MS = 60_000;
/** Every client back: their backoff is short here (50–1000 ms), the machine may be loaded. */
const STORM_MS = 60_000;

/** One client and what it saw. */
interface Watched {
  client: PushClient;
  seqs: number[];
  excluded: number;
  recoveries: boolean[];
  /** Settled by the next `open`, `close`, `recovery`, or event of sequence `awaited`. */
  opened: Deferred<void>;
  closed: Deferred<void>;
  recovered: Deferred<boolean>;
  awaited: number;
  received: Deferred<void>;
}

function watch(url: string): Watched {
  const w: Watched = {
    client: createPushClient(url, { minDelay: 50, maxDelay: 1000 }),
    seqs: [],
    excluded: 0,
    recoveries: [],
    opened: deferred(),
    closed: deferred(),
    recovered: deferred<boolean>(),
    awaited: -1,
    received: deferred(),
  };
  w.client.setConfig(STORM_CONFIG);
  w.client.on('open', () => w.opened.resolve());
  w.client.on('close', () => w.closed.resolve());
  w.client.on('recovery', ({ recovered }) => {
    w.recoveries.push(recovered);
    w.recovered.resolve(recovered);
  });
  w.client.on('event', (event) => {
    if (event.identity === EXCLUDED_IDENTITY) {
      w.excluded++;
      return;
    }
    const seq = (event.entity as { seq: number }).seq;
    w.seqs.push(seq);
    if (seq === w.awaited) w.received.resolve();
  });
  return w;
}

/** Waits until every client has received the event of sequence `seq`. */
async function everyoneReceives(clients: Watched[], seq: number, what: string): Promise<void> {
  for (const w of clients) {
    if (!w.seqs.includes(seq)) {
      w.awaited = seq;
      w.received = deferred();
    }
  }
  await withTimeout(
    Promise.all(clients.map((w) => (w.seqs.includes(seq) ? undefined : w.received.promise))),
    STORM_MS,
    `every client received ${what} (seq ${seq})`,
  );
}

describe('reconnect storm: 300 sessions, history on JetStream', () => {
  let broker: Broker;
  let server: StormServer;
  let publisherPubSub: NatsPubSub;
  let publisher: PushMiddleware;
  let clients: Watched[] = [];
  let seq = -1;

  /** Publishes the next sequence, with an event the clients' config excludes beside it. */
  async function publishNext(): Promise<number> {
    seq++;
    await publisher.publish(
      { identity: STORM_IDENTITY, type: 'tick', entity: { seq } },
      { identity: EXCLUDED_IDENTITY, type: 'tick', entity: { seq } },
    );
    return seq;
  }

  before(async () => {
    broker = await startNats({ jetstream: true });
    server = new StormServer({
      port: await freePort(),
      backend: 'jetstream',
      url: broker.url,
      topic: 'storm',
      maxEvents: 10_000,
      sampleMs: 100,
    });
    await server.start(START_MS);
    publisherPubSub = new NatsPubSub({
      servers: broker.url,
      history: { maxEvents: 10_000 },
      onError: () => undefined, // the broker is killed on purpose below
    });
    publisher = pushMiddleware(publisherPubSub, 'storm', { plugins: [] });
    await publisher.ready;
    const url = `ws://127.0.0.1:${server.config.port}/api/events`;
    clients = Array.from({ length: SESSIONS }, () => watch(url));
    await withTimeout(
      Promise.all(clients.map((w) => w.opened.promise)),
      STORM_MS,
      'every client opened',
    );
    await waitFor(() => server.last?.configured === SESSIONS, {
      timeout: STORM_MS,
      message: `the server has ${SESSIONS} sessions with their push config`,
    });
    // A position for every client, so that each resumes with `since` after the kill.
    await everyoneReceives(clients, await publishNext(), 'a first event');
  });

  after(async () => {
    for (const w of clients) w.client.close();
    await server?.stop();
    await publisher?.close();
    await publisherPubSub?.disconnect();
    await broker?.stop();
  });

  it('the server SIGKILLed and restarted: every session back, configured, recovered, nothing lost', async () => {
    for (const w of clients) {
      w.closed = deferred();
      w.opened = deferred();
      w.recovered = deferred<boolean>();
    }
    const before = seq;
    await server.kill();
    await withTimeout(
      Promise.all(clients.map((w) => w.closed.promise)),
      STORM_MS,
      'every client saw its socket close',
    );
    // Published through another server of the fleet while this one is down: stored by JetStream.
    for (let i = 0; i < 20; i++) await publishNext();
    await server.start(START_MS);

    const verdicts = await withTimeout(
      Promise.all(clients.map((w) => w.recovered.promise)),
      STORM_MS,
      'every client got its recovery frame',
    );
    assert.equal(verdicts.filter((v) => v).length, SESSIONS, 'every recovery says recovered: true');
    await waitFor(() => server.last?.sessions === SESSIONS && server.last.configured === SESSIONS, {
      timeout: STORM_MS,
      message: 'every session back on the server with its push config',
    });
    const last = await publishNext();
    await everyoneReceives(clients, last, 'an event published after the restart');

    const expected = Array.from({ length: last + 1 }, (_, i) => i);
    for (const [i, w] of clients.entries()) {
      assert.deepEqual(w.seqs, expected, `client ${i}: every event once, in order`);
      assert.equal(w.excluded, 0, `client ${i}: no event its push config excludes`);
    }
    assert.ok(last - before > 20, 'events were published while the server was down');
    assert.deepEqual(server.crashes, [], 'the server never crashed');
  });

  it('the broker SIGKILLed and restarted: no session closed, no event lost', async () => {
    const from = Date.now();
    for (const w of clients) w.closed = deferred();
    await broker.kill();
    await broker.restart();
    // A publish fails while the publisher's connection is away: retried until stored.
    let stored: number | undefined;
    await waitFor(
      async () => {
        try {
          stored = await publishNext();
          return true;
        } catch {
          seq--; // not stored: the same sequence again
          return false;
        }
      },
      { timeout: STORM_MS, interval: 100, message: 'a publish stored after the broker restart' },
    );
    await everyoneReceives(
      clients,
      stored as number,
      'an event published after the broker restart',
    );
    const last = await publishNext();
    await everyoneReceives(clients, last, 'the next event');

    const expected = Array.from({ length: last + 1 }, (_, i) => i);
    for (const [i, w] of clients.entries()) {
      assert.deepEqual(w.seqs, expected, `client ${i}: every event once, in order`);
      assert.equal(w.closed.settled, false, `client ${i}: its session stayed open`);
    }
    const during = server.samples.filter((s) => s.t >= from);
    assert.ok(during.length > 0, 'the server kept sampling');
    assert.equal(
      Math.min(...during.map((s) => s.sessions)),
      SESSIONS,
      'no session left the server',
    );
    assert.deepEqual(server.crashes, [], 'the server never crashed');
  });
});
