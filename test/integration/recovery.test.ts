/**
 * Recovery across reconnects (docs/PROTOCOL.md, "Recovery"), end to end on
 * every history backend — LocalPubSub's ring, JetStream on a real
 * `nats-server -js`, Redis Streams on a real `redis-server`:
 *
 * - a client cut (socket destroyed) in the middle of 1,000 events
 *   published at a steady rate reconnects with `since` and has every event
 *   exactly once, in order — on the same server and on another server of a
 *   fleet of three;
 * - the server restarted: JetStream and Redis keep the history (recovered),
 *   a new LocalPubSub does not (`recovered: false`);
 * - a malformed `since`, one from another epoch, one past retention:
 *   `recovered: false` with the head's position, then live events;
 * - filters, claims-based tenant isolation and `shouldDispatch` hold on
 *   replay exactly as live;
 * - frames carry `position` in JSON and MessagePack only with history on.
 *
 * No sleeps: every wait is for a frame or a count, with a deadline.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { decode, encode } from '@msgpack/msgpack';
import WebSocket from 'ws';
import {
  authPlugin,
  dispatchPlugin,
  type HistoryOptions,
  type PubSubClient,
  type PushEvent,
} from '../../lib/index.js';
import { LocalPubSub } from '../../lib/pubsub/local.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { RedisPubSub } from '../../lib/pubsub/redis.js';
import { tenantIsolationPlugin } from '../../plugins/tenant/index.js';
import {
  createPushClient,
  type PushClient,
  type PushClientOptions,
  type PushConfig,
  type RecoveryInfo,
} from '../../client/node.js';
import { startNats, startRedis, type Broker } from '../helpers/brokers.js';
import { startPushApp, type PushApp, type PushAppOptions } from '../helpers/push-app.js';
import { waitFor } from '../helpers/wait.js';

const DEADLINE_MS = 20_000;
const EVENTS = 1_000;

/** A frame as the recovery client saw it. */
interface Frame {
  n?: number;
  identity?: string;
  position?: string;
  recovery?: { recovered: boolean; position: string };
  raw: Record<string, unknown>;
}

/** A client that records events and recovery frames, in either encoding. */
class RecoveryClient {
  readonly frames: Frame[] = [];
  readonly ws: WebSocket;
  readonly opened: Promise<void>;

  constructor(
    wsUrl: string,
    readonly msgpack = false,
    query: Record<string, string> = {},
  ) {
    const url = new URL(wsUrl);
    if (msgpack) url.searchParams.set('encoding', 'msgpack');
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    this.ws = new WebSocket(url);
    this.ws.on('error', () => undefined);
    this.ws.on('message', (data: Buffer, isBinary) => {
      const raw = (isBinary ? decode(data) : JSON.parse(data.toString('utf8'))) as Record<
        string,
        unknown
      >;
      let entity = raw.entity;
      if (entity instanceof Uint8Array) entity = decode(entity);
      this.frames.push({
        n: (entity as { n?: number } | undefined)?.n,
        identity: raw.identity as string | undefined,
        position: raw.position as string | undefined,
        recovery: raw.recovery as Frame['recovery'],
        raw,
      });
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
    });
  }

  send(config: Record<string, unknown>): void {
    this.ws.send(this.msgpack ? encode(config) : JSON.stringify(config));
  }

  get events(): Frame[] {
    return this.frames.filter((f) => f.recovery === undefined);
  }

  get recoveries(): NonNullable<Frame['recovery']>[] {
    return this.frames.flatMap((f) => (f.recovery ? [f.recovery] : []));
  }

  /** The last position received, from an event or a recovery frame. */
  get lastPosition(): string | undefined {
    for (let i = this.frames.length - 1; i >= 0; i--) {
      const f = this.frames[i] as Frame;
      const p = f.recovery?.position ?? f.position;
      if (p !== undefined) return p;
    }
    return undefined;
  }

  async until(what: string, ok: () => boolean): Promise<void> {
    try {
      await waitFor(ok, { timeout: DEADLINE_MS, message: what });
    } catch (error) {
      const ns = this.events.map((f) => f.n);
      const summary = `${ns.length} events, first ${String(ns[0])}, last ${String(ns.at(-1))}`;
      throw new Error(
        `${(error as Error).message}; ${summary}; recoveries ${JSON.stringify(this.recoveries)}`,
        { cause: error },
      );
    }
  }

  /**
   * A cut: the socket destroyed under the client, no close handshake (a network drop).
   * Resolves once the client closed: frames already read before the drop are still handed
   * over until then, and the position to resume from is that of the last of them.
   */
  async cut(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.ws.once('close', () => resolve()));
    (this.ws as unknown as { _socket: { destroy(): void } })._socket.destroy();
    await closed;
  }
}

/** Connects, sends a config (with `since` when given) and waits for the socket to be open. */
async function connect(
  app: PushApp,
  config: Record<string, unknown> = {},
  opts: { msgpack?: boolean; query?: Record<string, string> } = {},
): Promise<RecoveryClient> {
  const client = new RecoveryClient(app.wsUrl, opts.msgpack, opts.query);
  await client.opened;
  const configured = app.push.sessions().filter((s) => s.pushConfig !== undefined).length;
  client.send(config);
  // Applied once the server read it: events published before that would not be filtered by it.
  await waitFor(
    () => app.push.sessions().filter((s) => s.pushConfig !== undefined).length > configured,
    { timeout: DEADLINE_MS, message: 'the push config applied' },
  );
  return client;
}

/** Publishes `count` events `{ n }` from `from` on, a few per turn: a steady stream. */
async function publishSteadily(app: PushApp, from: number, count: number): Promise<void> {
  for (let i = from; i < from + count; i++) {
    await app.push.publish({ identity: 'task', type: 'create', entity: { n: i } });
  }
}

/** Asserts the events hold 0..count-1 exactly once, in order, with increasing positions. */
function assertExactlyOnce(events: Frame[], count: number, history: PubSubClient): void {
  const ns = events.map((f) => f.n);
  const expected = Array.from({ length: count }, (_, i) => i);
  assert.deepEqual(ns, expected, 'every event exactly once, in order');
  const positions = events.map((f) => f.position as string);
  for (let i = 1; i < positions.length; i++) {
    assert.ok(
      (history.history?.compare(positions[i - 1] as string, positions[i] as string) ?? 0) < 0,
      `positions increase (${positions[i - 1]} < ${positions[i]})`,
    );
  }
}

/** A backend under test: how to make a history client on it, and its broker. */
interface Backend {
  name: string;
  start(): Promise<void>;
  stop(): Promise<void>;
  make(history?: HistoryOptions): PubSubClient;
  /** True when a new client (a restarted server) still sees the history. */
  durable: boolean;
}

let nats: Broker | undefined;
let redis: Broker | undefined;
/** One in-process "broker" for the LocalPubSub fleet: servers in one process share it. */
let local: LocalPubSub | undefined;

const backends: Backend[] = [
  {
    name: 'LocalPubSub',
    async start() {
      local = new LocalPubSub({ history: { maxEvents: 5_000 } });
    },
    async stop() {
      await local?.disconnect();
    },
    make(history) {
      // The servers of one process share one bus; a new history is a restarted process.
      return history === undefined ? (local as LocalPubSub) : new LocalPubSub({ history });
    },
    durable: false,
  },
  {
    name: 'NATS JetStream',
    async start() {
      nats = await startNats({ jetstream: true });
    },
    async stop() {
      await nats?.stop();
    },
    make(history) {
      return new NatsPubSub({
        servers: (nats as Broker).url,
        history: history ?? { maxEvents: 5_000 },
      });
    },
    durable: true,
  },
  {
    name: 'Redis Streams',
    async start() {
      redis = await startRedis();
    },
    async stop() {
      await redis?.stop();
    },
    make(history) {
      return new RedisPubSub({
        url: (redis as Broker).url,
        history: history ?? { maxEvents: 5_000 },
      });
    },
    durable: true,
  },
];

for (const backend of backends) {
  describe(`recovery on ${backend.name}`, () => {
    const apps: PushApp[] = [];
    const clients: RecoveryClient[] = [];
    let topicSeq = 0;
    const nextTopic = (): string => `rec${++topicSeq}${Date.now().toString(36)}`;

    async function app(
      topic: string,
      opts: PushAppOptions = {},
      pubsub?: PubSubClient,
    ): Promise<PushApp> {
      const started = await startPushApp({ ...opts, topic, pubsub: pubsub ?? backend.make() });
      apps.push(started);
      return started;
    }
    async function client(
      target: PushApp,
      config: Record<string, unknown> = {},
      opts: { msgpack?: boolean; query?: Record<string, string> } = {},
    ): Promise<RecoveryClient> {
      const c = await connect(target, config, opts);
      clients.push(c);
      return c;
    }

    before(() => backend.start());
    after(async () => {
      for (const c of clients) c.ws.terminate();
      await Promise.all(apps.map((a) => a.close()));
      if (backend.name !== 'LocalPubSub') {
        await Promise.all(apps.map((a) => a.pubsub.disconnect()));
      }
      await backend.stop();
    });

    it('a client cut mid-stream resumes with since: every event once, in order', async () => {
      const server = await app(nextTopic());
      const first = await client(server);
      const publishing = publishSteadily(server, 0, EVENTS);
      await first.until('300 events before the cut', () => first.events.length >= 300);
      await first.cut();
      const since = first.lastPosition as string;
      assert.ok(since, 'events carry positions');
      // `since` in the URL: the server holds live events from the handshake on, so none can be
      // written before the replay (with `since` only in the config, they could).
      const second = await client(server, {}, { query: { since } });
      await publishing;
      await second.until(
        'the rest of the events',
        () => first.events.length + second.events.length >= EVENTS,
      );
      await second.until('the recovery frame', () => second.recoveries.length === 1);
      assert.deepEqual(second.recoveries[0]?.recovered, true);
      assertExactlyOnce([...first.events, ...second.events], EVENTS, server.pubsub);
      // The recovery frame comes after the replayed events and before live ones: its position
      // is that of the event just before it.
      const at = second.frames.findIndex((f) => f.recovery !== undefined);
      const before = at > 0 ? second.frames[at - 1]?.position : since;
      assert.equal(second.recoveries[0]?.position, before);
      const stats = server.push.stats();
      assert.equal(stats.recoveries, 1);
      assert.equal(stats.recoveriesFailed, 0);
      assert.equal(stats.eventsReplayed, at, 'the events before the recovery frame were replayed');
    });

    it('a client resumes on another server of a fleet of three (MessagePack)', async () => {
      const topic = nextTopic();
      const fleet = [await app(topic), await app(topic), await app(topic)];
      const [a, b, c] = fleet as [PushApp, PushApp, PushApp];
      const first = await client(a, {}, { msgpack: true });
      const publishing = publishSteadily(c, 0, EVENTS);
      await first.until('200 events before the cut', () => first.events.length >= 200);
      await first.cut();
      const second = await client(
        b,
        {},
        { msgpack: true, query: { since: first.lastPosition as string } },
      );
      await publishing;
      await second.until(
        'the rest of the events on server b',
        () => first.events.length + second.events.length >= EVENTS,
      );
      await second.until('the recovery frame', () => second.recoveries.length === 1);
      assert.deepEqual(second.recoveries[0]?.recovered, true);
      assertExactlyOnce([...first.events, ...second.events], EVENTS, a.pubsub);
    });

    it(`a restarted server ${backend.durable ? 'recovers' : 'answers recovered: false'}`, async () => {
      const topic = nextTopic();
      const history = { maxEvents: 5_000 };
      const firstServer = await app(topic, {}, backend.make(history));
      const first = await client(firstServer);
      await publishSteadily(firstServer, 0, 10);
      await first.until('10 events', () => first.events.length === 10);
      const since = first.lastPosition as string;
      await firstServer.close();
      // The events published while no server ran (another server of the fleet, say).
      const publisher = backend.make(history);
      const publisherApp = await app(topic, {}, publisher);
      await publishSteadily(publisherApp, 10, 5);
      const restarted = await app(topic, {}, backend.durable ? backend.make(history) : publisher);
      const second = await client(restarted, { since });
      await second.until('the recovery frame', () => second.recoveries.length === 1);
      if (backend.durable) {
        assert.equal(second.recoveries[0]?.recovered, true);
        assert.deepEqual(
          second.events.map((f) => f.n),
          [10, 11, 12, 13, 14],
        );
      } else {
        // A new LocalPubSub is a new epoch: the old position is not one of its positions.
        assert.equal(second.recoveries[0]?.recovered, false);
        assert.equal(second.events.length, 0);
      }
      await publishSteadily(restarted, 15, 1);
      await second.until('a live event after the recovery', () =>
        second.events.some((f) => f.n === 15),
      );
    });

    if (backend.name === 'NATS JetStream') {
      it('the broker killed and restarted mid-stream: no acknowledged event lost, none twice', async () => {
        const server = await app(nextTopic());
        const c = await client(server);
        await publishSteadily(server, 0, 300);
        // Acknowledged, maybe not all delivered yet: the kill lands in the middle of delivery.
        await (nats as Broker).kill();
        await (nats as Broker).restart();
        await waitFor(() => server.pubsub.status === 'connected', {
          timeout: DEADLINE_MS,
          message: 'the backend reconnected',
        });
        for (let n = 300; n < 400; n++) {
          // The stream may still be coming back: publish() retries, then rejects; try again.
          for (let attempt = 1; ; attempt++) {
            try {
              await server.push.publish({ identity: 'task', type: 'create', entity: { n } });
              break;
            } catch (error) {
              if (attempt >= 20) throw error;
            }
          }
        }
        await c.until('every acknowledged event', () => c.events.length >= 400);
        assertExactlyOnce(c.events, 400, server.pubsub);
      });
    }

    it('a bad since is recovered: false, then live events, never an error', async () => {
      const topic = nextTopic();
      const server = await app(topic, {}, backend.make({ maxEvents: 20 }));
      const probe = await client(server);
      await publishSteadily(server, 0, 50);
      await probe.until('50 events', () => probe.events.length === 50);
      const head = probe.lastPosition as string;
      const first = probe.events[0]?.position as string; // trimmed by maxEvents: 20
      const epoch = head.slice(0, head.indexOf(':'));
      const cases = [
        'not a position',
        '',
        `x${epoch}:${head.slice(head.indexOf(':') + 1)}`,
        first,
        `${epoch}:999999999`,
      ];
      for (const since of cases) {
        const c = await client(server, { since });
        await c.until(
          `the recovery frame for ${JSON.stringify(since)}`,
          () => c.recoveries.length === 1,
        );
        assert.equal(c.recoveries[0]?.recovered, false, `since ${JSON.stringify(since)}`);
        assert.equal(c.recoveries[0]?.position, head, 'the head, where the client now stands');
        assert.equal(c.events.length, 0);
      }
      assert.equal(server.push.stats().recoveriesFailed, cases.length);
      await publishSteadily(server, 50, 1);
      for (const c of clients.slice(-cases.length)) {
        await c.until('a live event', () => c.events.some((f) => f.n === 50));
        assert.equal(c.ws.readyState, WebSocket.OPEN);
      }
    });

    it('filters, tenant isolation and shouldDispatch hold on replay', async () => {
      const topic = nextTopic();
      const namespaceAuth = authPlugin((session) => {
        const ns = session.parameter('ns');
        session.setClaims(ns === '' ? [] : [`namespace=${ns}`]);
        return 'ok';
      });
      const noOdd = dispatchPlugin({
        shouldDispatch: (_session, event) => (event.entity as { n: number }).n % 5 !== 4,
      });
      const server = await app(topic, {
        plugins: [namespaceAuth, tenantIsolationPlugin(), noOdd],
      });
      const config = { identities: { task: [] }, filters: { task: 'n < 30' } };
      const probe = await client(server, config, { query: { ns: '/acme' } });
      const events: PushEvent[] = [];
      for (let n = 0; n < 40; n++) {
        const namespace = n % 2 === 0 ? '/acme' : '/beta';
        events.push({ identity: 'task', type: 'create', entity: { n, namespace } });
        events.push({ identity: 'user', type: 'create', entity: { n: 100 + n, namespace } });
      }
      const expected = events
        .map((e) => e.entity as { n: number; namespace: string })
        .filter((e) => e.namespace === '/acme' && e.n < 30 && e.n % 5 !== 4)
        .map((e) => e.n);
      const head = probe; // the live view, for comparison
      for (const e of events) await server.push.publish(e);
      await head.until('the live events', () => head.events.length === expected.length);
      assert.deepEqual(
        head.events.map((f) => f.n),
        expected,
      );
      // A session of /acme resuming from before everything: the same events, no more.
      const start = head.events[0]?.position as string;
      const resumed = await client(server, { ...config, since: start }, { query: { ns: '/acme' } });
      await resumed.until('the recovery frame', () => resumed.recoveries.length === 1);
      assert.equal(resumed.recoveries[0]?.recovered, true);
      assert.deepEqual(
        resumed.events.map((f) => f.n),
        expected.slice(1),
      );
      // /beta replaying the same range never sees /acme's events.
      const beta = await client(server, { since: start }, { query: { ns: '/beta' } });
      await beta.until('the recovery frame', () => beta.recoveries.length === 1);
      assert.ok(beta.events.length > 0, '/beta replays its own events');
      for (const f of beta.events) {
        assert.equal(
          (f.raw.entity as { namespace?: string } | undefined)?.namespace ?? '/beta',
          '/beta',
        );
      }
    });
  });
}

describe('the push config in the handshake URL', () => {
  it('a resume with since and config in the URL replays by that config, with no frame sent', async () => {
    const server = await startPushApp({
      pubsub: new LocalPubSub({ history: { maxEvents: 5_000 } }),
    });
    try {
      const probe = await connect(server);
      await publishSteadily(server, 0, 40);
      await probe.until('the 40 events', () => probe.events.length === 40);
      const since = probe.events[9]?.position as string;
      // A client that never sends a frame (as one starved in a reconnect storm would send it
      // too late): the URL's config must be the replay's, not "everything" after a wait.
      const config = JSON.stringify({ identities: { task: [] }, filters: { task: 'n >= 30' } });
      const resumed = new RecoveryClient(server.wsUrl, true, { since, config });
      await resumed.opened;
      await resumed.until('the recovery frame', () => resumed.recoveries.length === 1);
      assert.equal(resumed.recoveries[0]?.recovered, true);
      assert.deepEqual(
        resumed.events.map((f) => f.n),
        Array.from({ length: 10 }, (_, i) => 30 + i),
      );
      // Live events follow the same config.
      await publishSteadily(server, 40, 4);
      await server.push.publish({ identity: 'task', type: 'create', entity: { n: 1 } });
      await resumed.until('the live events', () => resumed.events.length === 14);
      await publishSteadily(server, 44, 1);
      await resumed.until('the last live event', () => resumed.events.length === 15);
      assert.deepEqual(
        resumed.events.slice(10).map((f) => f.n),
        [40, 41, 42, 43, 44],
        'n = 1 is left out live too',
      );
      assert.equal(server.push.stats().recoveries, 1);
      probe.ws.terminate();
      resumed.ws.terminate();
    } finally {
      await server.close();
    }
  });

  it('a WebSocket with an invalid config in its URL is refused with 400 before the upgrade', async () => {
    const server = await startPushApp({ pubsub: new LocalPubSub() });
    try {
      const url = new URL(server.wsUrl);
      url.searchParams.set('config', '{"filters":{"task":"n >"}}');
      const ws = new WebSocket(url);
      const refused = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        ws.once('open', () => reject(new Error('the upgrade was accepted')));
        ws.once('unexpected-response', (_req, res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (body += chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        ws.once('error', () => undefined);
      });
      assert.equal(refused.status, 400);
      const [error] = JSON.parse(refused.body) as { code: number; title: string }[];
      assert.equal(error?.code, 400);
      assert.equal(server.push.stats().invalidConfigs, 1);
      assert.equal(server.push.sessions().length, 0);
    } finally {
      await server.close();
    }
  });
});

describe('replays share their history reads', () => {
  it('100 sessions resuming from one position read it once; under live publishing none misses or repeats', async () => {
    const pubsub = new LocalPubSub({ history: { maxEvents: 5_000 } });
    const history = pubsub.history as NonNullable<typeof pubsub.history>;
    let reads = 0;
    const read = history.read.bind(history);
    history.read = (...args) => {
      reads++;
      return read(...args);
    };
    const server = await startPushApp({ pubsub });
    const clients: RecoveryClient[] = [];
    try {
      const probe = await connect(server);
      clients.push(probe);
      await publishSteadily(server, 0, 30);
      await probe.until('the 30 events', () => probe.events.length === 30);
      const since = probe.events[9]?.position as string;
      const config = JSON.stringify({ identities: { task: [] } });
      // A quiet topic: every session's hold began with the last event live, which the first
      // read reached, so that one read serves all of them.
      const quiet = Array.from(
        { length: 100 },
        (_, i) => new RecoveryClient(server.wsUrl, i % 2 === 1, { since, config }),
      );
      clients.push(...quiet);
      await Promise.all(quiet.map((c) => c.opened));
      for (const c of quiet) {
        await c.until('the recovery frame', () => c.recoveries.length === 1);
        assert.equal(c.recoveries[0]?.recovered, true);
        assert.deepEqual(
          c.events.map((f) => f.n),
          Array.from({ length: 20 }, (_, i) => 10 + i),
        );
      }
      assert.ok(reads <= 3, `100 replays from one position made ${reads} history reads`);
      // Resuming while events are published: pages shared or not, each session gets every
      // event after its position exactly once, in order.
      const publishing = publishSteadily(server, 30, 300);
      const busy = Array.from(
        { length: 50 },
        (_, i) => new RecoveryClient(server.wsUrl, i % 2 === 0, { since, config }),
      );
      clients.push(...busy);
      await publishing;
      for (const c of busy) {
        await c.until('every event', () => c.events.at(-1)?.n === 329);
        assert.deepEqual(
          c.events.map((f) => f.n),
          Array.from({ length: 320 }, (_, i) => 10 + i),
        );
        assert.equal(c.recoveries[0]?.recovered, true);
      }
    } finally {
      for (const c of clients) c.ws.terminate();
      await server.close();
    }
  });
});

describe('positions in frames', () => {
  it('without history, events carry no position and no recovery frame answers since', async () => {
    const server = await startPushApp({ pubsub: new LocalPubSub() });
    try {
      const c = await connect(server, { since: 'abc:1' });
      await server.push.publish({ identity: 'task', type: 'create', entity: { n: 1 } });
      await c.until('the event', () => c.frames.length === 1);
      assert.equal(c.frames[0]?.recovery, undefined);
      assert.equal('position' in (c.frames[0]?.raw ?? {}), false);
      c.ws.terminate();
    } finally {
      await server.close();
    }
  });
});

/** A pushwire/client with `config`, recording the `n` of its events and its recoveries. */
function configuredClient(
  server: PushApp,
  options: PushClientOptions,
  config: PushConfig,
): { client: PushClient; received: number[]; recoveries: RecoveryInfo[] } {
  const received: number[] = [];
  const recoveries: RecoveryInfo[] = [];
  const client = createPushClient(server.wsUrl, { minDelay: 10, ...options });
  client.setConfig(config);
  client.on('event', (e) => received.push((e.entity as { n: number }).n));
  client.on('recovery', (info) => recoveries.push(info));
  return { client, received, recoveries };
}

/** Resolves once a session of `server` applied a push config. */
async function configured(server: PushApp): Promise<void> {
  await waitFor(() => server.push.sessions().some((s) => s.pushConfig !== undefined), {
    timeout: DEADLINE_MS,
    message: 'the client configured',
  });
}

describe('pushwire/client resumes by itself', () => {
  it('a dropped connection reconnects with since: every event once, then a recovery event', async () => {
    const pubsub = new LocalPubSub({ history: { maxEvents: 5_000 } });
    const server = await startPushApp({ pubsub });
    const { client, received, recoveries } = configuredClient(server, {}, {});
    try {
      await configured(server);
      const publishing = publishSteadily(server, 0, EVENTS);
      await waitFor(() => received.length >= 250, { timeout: DEADLINE_MS, message: '250 events' });
      // A network drop under the server: the socket destroyed, no close frame.
      const [session] = server.push.sessions();
      (
        session as unknown as { transport: { socket: { destroy(): void } } }
      ).transport.socket.destroy();
      await publishing;
      await waitFor(() => received.length >= EVENTS && recoveries.length === 1, {
        timeout: DEADLINE_MS,
        message: `every event and one recovery (got ${received.length})`,
      });
      assert.deepEqual(
        received,
        Array.from({ length: EVENTS }, (_, i) => i),
      );
      assert.equal(recoveries[0]?.recovered, true);
      assert.equal(client.position, recoveries[0]?.position ?? client.position);
    } finally {
      client.close();
      await server.close();
    }
  });
  it('a resume carries the config in the URL: a client whose frames never leave still replays by it', async () => {
    const urls: string[] = [];
    const server = await startPushApp({
      pubsub: new LocalPubSub({ history: { maxEvents: 5_000 } }),
      // Every handshake's URL, as the server saw it.
      before: (app) =>
        app.use((req, _res, next) => {
          if (req.url.includes('/events')) urls.push(req.url);
          next();
        }),
    });
    /** ws, but once `mute` is set nothing it sends leaves: a client starved past the wait. */
    class MutedWebSocket extends WebSocket {
      static mute = false;
      override send(data: Parameters<WebSocket['send']>[0]): void {
        if (!MutedWebSocket.mute) super.send(data);
      }
    }
    const { client, received, recoveries } = configuredClient(
      server,
      { encoding: 'msgpack', WebSocket: MutedWebSocket as never },
      { identities: { task: [] }, filters: { task: 'n >= 20' } },
    );
    try {
      await configured(server);
      await publishSteadily(server, 20, 5);
      await waitFor(() => received.length === 5, { timeout: DEADLINE_MS, message: '5 events' });
      MutedWebSocket.mute = true;
      const [session] = server.push.sessions();
      (
        session as unknown as { transport: { socket: { destroy(): void } } }
      ).transport.socket.destroy();
      await waitFor(() => server.push.sessions().length === 0, {
        timeout: DEADLINE_MS,
        message: 'the session closed',
      });
      await publishSteadily(server, 0, 40);
      await waitFor(() => recoveries.length === 1, {
        timeout: DEADLINE_MS,
        message: 'the recovery',
      });
      assert.equal(recoveries[0]?.recovered, true);
      assert.deepEqual(received, [
        20,
        21,
        22,
        23,
        24,
        ...Array.from({ length: 20 }, (_, i) => 20 + i),
      ]);
      const resumeUrl = new URL(urls.at(-1) as string, 'http://x');
      assert.ok(resumeUrl.searchParams.get('since'), 'the resume carries since');
      assert.deepEqual(JSON.parse(resumeUrl.searchParams.get('config') as string), {
        identities: { task: [] },
        filters: { task: 'n >= 20' },
      });
      assert.equal(new URL(urls[0] as string, 'http://x').searchParams.has('config'), false);
    } finally {
      client.close();
      await server.close();
    }
  });
});
