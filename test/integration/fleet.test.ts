/**
 * A fleet, for real: a broker process and three server processes
 * (test/fixtures/fleet-server.ts, each an Express app with pushwire on its
 * own port), with clients connected to each — on NATS and on Redis.
 *
 * - An event published on any server reaches every client on every server,
 *   exactly once, in the order its server published it.
 * - The broker dies while clients are connected: sessions stay open, the
 *   server processes keep running, a publish during the outage fails after
 *   the retries with an error the caller sees (both backends reject rather
 *   than buffer); once the broker is back, events reach every session.
 * - The broker is unreachable at start-up: `push.ready` rejects with a
 *   PubSubError, or, with `waitOnFirstConnect`, the server waits for it.
 *
 * No sleeps: every wait is for a line, a status or an event, with a
 * deadline. Every child process is killed in `after`, even when a test
 * failed (and on exit, should `after` not run).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { pushMiddleware, PubSubError, type PubSubClient } from '../../lib/index.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { RedisPubSub } from '../../lib/pubsub/redis.js';
import {
  freePort,
  startNats,
  startRedis,
  type Broker,
  type BrokerKind,
} from '../helpers/brokers.js';
import {
  connectClient,
  startPushApp,
  type PushApp,
  type ReceivedEvent,
  type TestClient,
} from '../helpers/push-app.js';
import { deferred, waitFor, withTimeout, type Deferred } from '../helpers/wait.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/fleet-server.ts', import.meta.url));
/**
 * A server process starts (tsx, Express, the driver: about 1.5 s of CPU) and subscribes within
 * this. Generous, since it only matters when something is broken: three starting at once on a
 * busy two-core machine have been seen to take over 20 s.
 */
const START_MS = 60_000;
const DELIVERY_MS = 10_000;
/** A dead broker noticed, or a restarted one reconnected to. */
const RECOVERY_MS = 15_000;
/** The servers' reconnect delay: short, so that recovery is quick. */
const RECONNECT_MS = '50';

// ---------------------------------------------------------------------------------------------
// Server processes.

/** A line the fixture prints on stdout. */
interface FixtureLine {
  event: 'connecting' | 'listening' | 'error';
  port?: number;
  pid?: number;
  error?: { name: string; code?: string; message: string };
}

/** What GET /status answers. */
interface FixtureStatus {
  backend: string;
  stats: {
    sessionsOpen: number;
    published: number;
    publishRetries: number;
    publishFailures: number;
    eventsReceived: number;
  };
}

/** One fleet-server process. */
class ServerProcess {
  readonly child: ChildProcess;
  readonly lines: FixtureLine[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  port = 0;
  #stderr = '';
  #waiters = new Set<() => void>();

  constructor(args: string[]) {
    // stdin stays a pipe: the fixture exits when it closes, should this process die first.
    this.child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    live.add(this);
    const exited = deferred<{ code: number | null; signal: NodeJS.Signals | null }>();
    this.exited = exited.promise;
    this.child.once('exit', (code, signal) => {
      live.delete(this);
      exited.resolve({ code, signal });
      this.#notify();
    });
    this.child.once('error', () => exited.resolve({ code: null, signal: null }));
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.#stderr = (this.#stderr + chunk.toString()).slice(-8192);
    });
    createInterface({ input: this.child.stdout! }).on('line', (text) => {
      try {
        this.lines.push(JSON.parse(text) as FixtureLine);
      } catch {
        this.#stderr += `\n(stdout) ${text}`;
      }
      this.#notify();
    });
  }

  /** True while the process runs: it neither exited nor crashed. */
  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/api/events`;
  }

  /** Its recent stderr: the logs to show when a test fails. */
  get stderr(): string {
    return this.#stderr;
  }

  /** Resolves with the first line of that kind; rejects if the process exits first or after `ms`. */
  async line(event: FixtureLine['event'], ms: number): Promise<FixtureLine> {
    const found = deferred<FixtureLine>();
    const check = (): void => {
      const line = this.lines.find((l) => l.event === event);
      if (line) found.resolve(line);
      else if (!this.alive)
        found.reject(new Error(`the server exited before "${event}": ${this.#stderr}`));
    };
    this.#waiters.add(check);
    check();
    try {
      return await withTimeout(found.promise, ms, `no "${event}" line from the server`);
    } catch (error) {
      throw new Error(`${(error as Error).message}; its stderr: ${this.#stderr || '(empty)'}`, {
        cause: error,
      });
    } finally {
      this.#waiters.delete(check);
    }
  }

  /** Waits for `listening` and remembers the port. */
  async listening(ms = START_MS): Promise<this> {
    const line = await this.line('listening', ms);
    assert.ok(typeof line.port === 'number' && line.port > 0, 'the server printed its port');
    this.port = line.port;
    return this;
  }

  /** POST /publish. */
  async publish(events: unknown[]): Promise<{ status: number; body: Record<string, unknown> }> {
    const response = await fetch(`${this.url}/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ events }),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  }

  /** POST /publish, which must succeed. */
  async publishOk(events: unknown[]): Promise<void> {
    const { status, body } = await this.publish(events);
    assert.equal(status, 202, `publish failed: ${JSON.stringify(body)}`);
  }

  /** GET /status. */
  async status(): Promise<FixtureStatus> {
    const response = await fetch(`${this.url}/status`);
    assert.equal(response.status, 200);
    return (await response.json()) as FixtureStatus;
  }

  /** SIGTERM, then SIGKILL if it lingers; resolves once it exited. */
  async stop(): Promise<void> {
    if (!this.alive) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3_000);
    await this.exited;
    clearTimeout(timer);
  }

  #notify(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }
}

// Whatever happens to the test (a failed `after`, a crash), no server outlives this process.
const live = new Set<ServerProcess>();
process.once('exit', () => {
  for (const server of live) server.child.kill('SIGKILL');
});

function serverArgs(kind: BrokerKind, url: string, extra: string[] = []): string[] {
  return ['--backend', kind, '--url', url, '--reconnect-ms', RECONNECT_MS, ...extra];
}

// ---------------------------------------------------------------------------------------------
// Clients and events.

/** The entity of every event of these tests: who published it, and its number there. */
interface Mark {
  origin: string;
  seq: number;
}

function events(origin: string, from: number, count: number, identity = 'task'): unknown[] {
  return Array.from({ length: count }, (_, i) => ({
    identity,
    type: 'create',
    entity: { origin, seq: from + i },
  }));
}

function markOf(event: ReceivedEvent): Mark {
  return event.entity as Mark;
}

/** A client connected to one server, and whether its session ever closed. */
interface FleetClient {
  server: number;
  client: TestClient;
  closed: Deferred<void>;
}

async function connectFleetClient(
  server: ServerProcess,
  index: number,
  msgpack: boolean,
): Promise<FleetClient> {
  const client = await connectClient(
    server.wsUrl,
    msgpack ? { query: { encoding: 'msgpack' } } : {},
  );
  const closed = deferred();
  void client.closed.then(() => closed.resolve());
  return { server: index, client, closed };
}

/** Received events, the probes of recovery left out. */
function received(client: FleetClient): Mark[] {
  return client.client.events.filter((e) => e.identity !== 'probe').map(markOf);
}

/** Waits until every client has received `n` events (probes left out). */
async function everyClientHas(clients: FleetClient[], n: number, what: string): Promise<void> {
  await waitFor(() => clients.every((c) => received(c).length >= n), {
    timeout: DELIVERY_MS,
    message: `${what}: ${clients.map((c) => received(c).length).join(', ')} events of ${n}`,
  });
}

/**
 * Checks that `marks` holds each of `expected` exactly once, and for each
 * origin in the order that origin published them.
 */
function assertExactlyOnceInOrder(
  marks: Mark[],
  expected: Record<string, number>,
  who: string,
): void {
  const keys = marks.map((m) => `${m.origin}#${m.seq}`);
  assert.equal(new Set(keys).size, keys.length, `${who}: an event arrived twice`);
  for (const [origin, count] of Object.entries(expected)) {
    const seqs = marks.filter((m) => m.origin === origin).map((m) => m.seq);
    assert.deepEqual(
      seqs,
      Array.from({ length: count }, (_, i) => i),
      `${who}: the events of ${origin}, in order`,
    );
  }
  const total = Object.values(expected).reduce((a, b) => a + b, 0);
  assert.equal(marks.length, total, `${who}: nothing else arrived`);
}

// ---------------------------------------------------------------------------------------------
// The fleet, per backend.

const brokers: Record<BrokerKind, () => Promise<Broker>> = { nats: startNats, redis: startRedis };

for (const kind of ['nats', 'redis'] as const) {
  describe(`a fleet of three servers on ${kind}`, () => {
    let broker: Broker;
    let servers: ServerProcess[] = [];
    let clients: FleetClient[] = [];
    /** Events each origin has published so far (the next seq). */
    const published: Record<string, number> = {};

    /** Publishes `count` numbered events on a server, in one request. */
    async function publishFrom(
      server: number,
      count: number,
      origin = `server${server}`,
    ): Promise<void> {
      const from = published[origin] ?? 0;
      published[origin] = from + count;
      const target = servers[server];
      assert.ok(target);
      await target.publishOk(events(origin, from, count));
    }

    /**
     * Publishes a marker from `server` and waits until every client has it: with exactly-once
     * checks after it, a late duplicate of what came before would have been noticed.
     */
    async function settle(server: number, what: string): Promise<void> {
      await publishFrom(server, 1, 'marker');
      const seq = (published.marker ?? 0) - 1;
      await waitFor(
        () => clients.every((c) => received(c).some((m) => m.origin === 'marker' && m.seq === seq)),
        { timeout: DELIVERY_MS, message: `${what}: the marker did not reach every client` },
      );
    }

    function assertFleetHealthy(): void {
      for (const [i, server] of servers.entries()) {
        assert.ok(server.alive, `server ${i} is running (stderr: ${server.stderr})`);
      }
      for (const [i, c] of clients.entries()) {
        assert.equal(c.closed.settled, false, `client ${i} (server ${c.server}) was disconnected`);
        assert.equal(c.client.ws.readyState, c.client.ws.OPEN, `client ${i} is open`);
      }
    }

    before(async () => {
      broker = await brokers[kind]();
      servers = [0, 1, 2].map(() => new ServerProcess(serverArgs(kind, broker.url)));
      await Promise.all(servers.map((s) => s.listening()));
      // Two clients per server, one per encoding.
      clients = await Promise.all(
        servers.flatMap((server, i) => [
          connectFleetClient(server, i, false),
          connectFleetClient(server, i, true),
        ]),
      );
    });

    after(async () => {
      for (const c of clients) c.client.ws.terminate();
      await Promise.all(servers.map((s) => s.stop()));
      await broker?.stop();
    });

    it('delivers every event published on one server to every client on every server, exactly once, in order', async () => {
      await publishFrom(0, 100);
      await everyClientHas(clients, 100, 'events of server 0');
      // Then every server publishes at once, in several requests each.
      await Promise.all(
        [0, 1, 2].map(async (server) => {
          for (let batch = 0; batch < 5; batch++) await publishFrom(server, 10);
        }),
      );
      await everyClientHas(clients, 250, 'events of every server');
      await settle(1, 'after the events of every server');
      for (const [i, c] of clients.entries()) {
        assertExactlyOnceInOrder(received(c), published, `client ${i} (server ${c.server})`);
      }
      for (const [i, server] of servers.entries()) {
        const { stats } = await server.status();
        assert.equal(stats.sessionsOpen, 2, `server ${i} sessions`);
        assert.equal(stats.eventsReceived, 251, `server ${i} received every publication once`);
      }
      assertFleetHealthy();
    });

    it('survives a broker crash: sessions stay open, publish fails after the retries, delivery resumes', async () => {
      const origin = servers[0];
      assert.ok(origin);
      const before = await origin.status();

      await broker.kill();
      await waitFor(
        async () =>
          (await Promise.all(servers.map((s) => s.status()))).every(
            (s) => s.backend !== 'connected',
          ),
        {
          timeout: RECOVERY_MS,
          interval: 25,
          message: 'the servers did not notice the broker died',
        },
      );

      // The documented behaviour of both backends: no buffering; the server retries, then the
      // caller gets the error.
      const { status, body } = await origin.publish(events('outage', 0, 1));
      assert.equal(status, 503, `the failed publish: ${JSON.stringify(body)}`);
      const error = body.error as { name: string; code: string; message: string };
      assert.equal(error.name, 'PubSubError');
      assert.equal(error.code, 'PUSH_PUBLISH_FAILED');
      assert.match(error.message, /after 4 attempts/);
      assert.match(error.message, kind === 'nats' ? /NatsPubSub/ : /RedisPubSub/);
      const during = await origin.status();
      assert.equal(during.stats.publishRetries - before.stats.publishRetries, 3, 'three retries');
      assert.equal(during.stats.publishFailures - before.stats.publishFailures, 1, 'one failure');
      assertFleetHealthy();

      await broker.restart();
      await waitFor(
        async () =>
          (await Promise.all(servers.map((s) => s.status()))).every(
            (s) => s.backend === 'connected',
          ),
        { timeout: RECOVERY_MS, interval: 25, message: 'the servers did not reconnect' },
      );
      // 'connected' says each server is back; a resubscription may reach the broker a moment
      // later than another server's publish. Probe until every session has one, then count.
      await waitFor(
        async () => {
          if (clients.every((c) => c.client.events.some((e) => e.identity === 'probe')))
            return true;
          await origin.publishOk(events('probe', 0, 1, 'probe'));
          return false;
        },
        {
          timeout: RECOVERY_MS,
          interval: 100,
          message: 'no probe reached every session after recovery',
        },
      );
      await publishFrom(2, 50);
      await publishFrom(0, 50);
      await settle(1, 'after recovery');
      for (const [i, c] of clients.entries()) {
        // Also proves that the publish which failed during the outage was never delivered.
        assertExactlyOnceInOrder(received(c), published, `client ${i} (server ${c.server})`);
      }
      assertFleetHealthy();
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The broker unreachable at start-up.

describe('the broker unreachable at start-up', () => {
  const spawned: ServerProcess[] = [];
  after(() => Promise.all(spawned.map((s) => s.stop())));

  /** A client of `url` with quick retries, as the fleet's servers have. */
  function pubsubFor(kind: BrokerKind, url: string, waitOnFirstConnect = false): PubSubClient {
    return kind === 'nats'
      ? new NatsPubSub({ servers: url, waitOnFirstConnect, reconnectTimeWait: 50 })
      : new RedisPubSub({ url, waitOnFirstConnect, reconnectDelay: 20, maxReconnectDelay: 100 });
  }

  for (const kind of ['nats', 'redis'] as const) {
    it(`${kind}: push.ready rejects with a PubSubError PUSH_PUBSUB_UNREACHABLE`, async () => {
      const port = await freePort();
      const url = `${kind}://127.0.0.1:${port}`;
      // A server process too (one backend is enough: the path is the same): it says why and
      // exits non-zero rather than serving without a subscription. Started first, to overlap.
      const server = kind === 'nats' ? new ServerProcess(serverArgs(kind, url)) : undefined;
      if (server) spawned.push(server);

      const pubsub = pubsubFor(kind, url);
      const push = pushMiddleware(pubsub, 'events');
      try {
        await withTimeout(
          assert.rejects(push.ready, (error: unknown) => {
            assert.ok(error instanceof PubSubError, `a PubSubError: ${String(error)}`);
            assert.equal(error.code, 'PUSH_PUBSUB_UNREACHABLE');
            assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
            return true;
          }),
          DELIVERY_MS,
          'push.ready did not settle',
        );
        assert.equal(pubsub.status, 'disconnected');
      } finally {
        await push.close();
        await pubsub.disconnect();
      }

      if (server) {
        const line = await server.line('error', START_MS);
        assert.equal(line.error?.name, 'PubSubError');
        assert.equal(line.error?.code, 'PUSH_PUBSUB_UNREACHABLE');
        assert.match(line.error?.message ?? '', new RegExp(String(port)));
        assert.deepEqual(await withTimeout(server.exited, START_MS, 'the server did not exit'), {
          code: 1,
          signal: null,
        });
      }
    });

    it(`${kind}: with waitOnFirstConnect, push.ready waits for the broker, then the server serves`, async () => {
      const broker = await brokers[kind]();
      let app: PushApp | undefined;
      try {
        await broker.kill();
        const pubsub = pubsubFor(kind, broker.url, true);
        // startPushApp listens only once push.ready resolved.
        const starting = startPushApp({ pubsub });
        starting.catch(() => undefined); // awaited below; a rejection must not be reported twice
        await waitFor(() => pubsub.status === 'connecting', {
          timeout: DELIVERY_MS,
          message: 'the backend is not trying to connect',
        });
        await broker.restart();
        app = await withTimeout(
          starting,
          RECOVERY_MS,
          'push.ready did not resolve once the broker was up',
        );
        assert.equal(pubsub.status, 'connected');
        const client = await connectClient(app.wsUrl);
        await app.push.publish({
          identity: 'task',
          type: 'create',
          entity: { origin: 'late', seq: 0 },
        });
        await client.waitForEvents(1, DELIVERY_MS);
        const first = client.events[0];
        assert.ok(first);
        assert.deepEqual(markOf(first), { origin: 'late', seq: 0 });
        client.ws.terminate();
      } finally {
        await app?.close();
        await app?.pubsub.disconnect();
        await broker.stop();
      }
    });
  }
});
