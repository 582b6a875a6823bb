/**
 * Proof under faults (issue 9, item 6): plugin hooks that throw or hang, a
 * client that leaves mid-handshake, a socket that fails while events are
 * written to it, an event loop blocked for a second. After each, the server
 * keeps accepting sessions and delivering events, and what happened is
 * counted in stats() and in the Prometheus metrics.
 */
import assert from 'node:assert/strict';
import { connect as tcpConnect, type Socket } from 'node:net';
import { after, afterEach, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import WebSocket from 'ws';
import { authPlugin, definePlugin, initPlugin, TooManyRequestsError } from '../../lib/index.js';
import { registerMetrics } from '../../plugins/metrics/index.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { memoryLogger } from '../helpers/logger.js';
import {
  connectClient,
  expectRefusal,
  startPushApp,
  type PushApp,
  type TestClient,
} from '../helpers/push-app.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

// Fail the file on anything that escaped: the server must contain every fault.
failOnUnhandledRejections();

/** One sample of the registry's text output (`name{labels} value`), as a number. */
async function metric(registry: Registry, line: string): Promise<number | undefined> {
  const text = await registry.metrics();
  const found = text.split('\n').find((l) => l.startsWith(line + ' '));
  return found === undefined ? undefined : Number(found.slice(line.length + 1));
}

/** Proves the server still works end to end: a new session receives a new event. */
async function stillServes(app: PushApp, identity = 'probe'): Promise<void> {
  const client = await connectClient(app.wsUrl);
  client.sendConfig({ identities: { [identity]: [] } });
  await waitFor(() => app.push.sessions().some((s) => s.pushConfig?.identities?.has(identity)), {
    timeout: 5000,
    message: 'the probe session did not apply its config',
  });
  await app.push.publish({ identity, type: 'create', entity: { ok: true } });
  await client.waitForEvents(1);
  client.close();
  await client.closed;
}

describe('faults: plugin hooks that throw or hang', () => {
  const { logger, lines } = memoryLogger();
  const registry = new Registry();
  let app: PushApp;
  const neverAnswers = new Promise<never>(() => undefined);

  before(async () => {
    app = await startPushApp({
      options: { logger, sessionTimeout: 300, dispatchTimeout: 300 },
      plugins: [
        authPlugin((s) => {
          switch (s.parameter('fault')) {
            case 'auth-throws':
              throw new Error('auth backend down');
            case 'auth-hangs':
              return neverAnswers;
            default:
              return 'continue';
          }
        }),
        initPlugin((s) => {
          if (s.parameter('fault') === 'init-throws') throw new Error('init bug');
          if (s.parameter('fault') === 'init-rejects')
            return Promise.reject(new Error('async init bug'));
          return true;
        }),
        definePlugin({
          name: 'faulty',
          session(ctx, next) {
            if (ctx.session.parameter('fault') === 'session-429') throw new TooManyRequestsError();
            if (ctx.session.parameter('fault') === 'session-plain-throw')
              throw new TypeError('bug');
            return next();
          },
          onSessionStart(session) {
            if (session.parameter('fault') === 'start-throws') throw new Error('start hook bug');
            if (session.parameter('fault') === 'start-rejects')
              return Promise.reject(new Error('start hook async bug'));
            if (session.parameter('fault') === 'start-hangs') return neverAnswers;
            return undefined;
          },
          onSessionStop() {
            throw new Error('stop hook bug');
          },
          async dispatch(ctx, next) {
            if (ctx.event.identity === 'dispatch-throws') throw new Error('summarize bug');
            if (ctx.event.identity === 'dispatch-hangs') await neverAnswers;
            ctx.predicates.push((session) => {
              if (session.parameter('fault') === 'predicate-throws')
                throw new Error('predicate bug');
              return true;
            });
            await next();
          },
          publish(ctx, next) {
            if (ctx.event.identity === 'publish-throws') throw new Error('publish hook bug');
            return next();
          },
        }),
      ],
    });
    registerMetrics(app.push, { registry });
  });

  after(async () => {
    await app?.close();
  });

  it('refuses attempts whose session plugins throw, with the documented statuses', async () => {
    assert.equal((await expectRefusal(app.wsUrl, { query: { fault: 'auth-throws' } })).status, 401);
    assert.equal((await expectRefusal(app.wsUrl, { query: { fault: 'init-throws' } })).status, 403);
    assert.equal(
      (await expectRefusal(app.wsUrl, { query: { fault: 'init-rejects' } })).status,
      403,
    );
    assert.equal((await expectRefusal(app.wsUrl, { query: { fault: 'session-429' } })).status, 429);
    assert.equal(
      (await expectRefusal(app.wsUrl, { query: { fault: 'session-plain-throw' } })).status,
      403,
    );
    await stillServes(app);
  });

  it('bounds a hanging auth plugin by sessionTimeout: 503, and the server goes on', async (t) => {
    const started = performance.now();
    const refusal = await expectRefusal(app.wsUrl, { query: { fault: 'auth-hangs' } });
    const took = performance.now() - started;
    assert.equal(refusal.status, 503);
    assert.ok(took >= 250 && took < 3000, `answered after ${took.toFixed(0)} ms`);
    t.diagnostic(`hanging auth plugin (sessionTimeout 300 ms): 503 after ${took.toFixed(0)} ms`);
    await stillServes(app);
    assert.equal(app.push.stats().sessionsRefused[503], 1);
    assert.equal(await metric(registry, 'pushwire_sessions_refused_total{status="503"}'), 1);
  });

  it('logs and ignores lifecycle hooks that throw, reject or hang', async () => {
    const clients: TestClient[] = [];
    for (const fault of ['start-throws', 'start-rejects', 'start-hangs']) {
      clients.push(await connectClient(app.wsUrl, { query: { fault } }));
    }
    await app.push.publish({ identity: 'task', type: 'create', entity: {} });
    await Promise.all(clients.map((c) => c.waitForEvents(1)));
    for (const c of clients) c.close();
    await Promise.all(clients.map((c) => c.closed));
    await waitFor(() => lines.filter((l) => l.msg === 'pushwire: hook failed').length >= 5, {
      timeout: 5000,
      message: 'the failing hooks were not logged',
    });
    assert.ok(
      lines.filter((l) => l.msg === 'pushwire: hook failed').every((l) => l.level === 'warn'),
    );
    await stillServes(app);
  });

  it('drops an event whose dispatch plugin throws or hangs (dispatchTimeout), not the next ones', async () => {
    const client = await connectClient(app.wsUrl);
    const victim = await connectClient(app.wsUrl, { query: { fault: 'predicate-throws' } });
    const errorsBefore = app.push.stats().dispatchErrors;
    await app.push.publish(
      { identity: 'dispatch-throws', type: 'create', entity: {} },
      { identity: 'dispatch-hangs', type: 'create', entity: {} },
      { identity: 'task', type: 'create', entity: { n: 1 } },
    );
    const [event] = await client.waitForEvents(1, 5000);
    assert.equal(event?.identity, 'task');
    assert.equal(app.push.stats().dispatchErrors - errorsBefore, 2);
    assert.ok(((await metric(registry, 'pushwire_dispatch_errors_total')) ?? 0) >= 2);
    // The throwing predicate counted as false for its session only.
    await app.push.publish({ identity: 'task', type: 'create', entity: { n: 2 } });
    await client.waitForEvents(2);
    assert.equal(victim.events.length, 0);
    client.close();
    victim.close();
    await Promise.all([client.closed, victim.closed]);
  });

  it('rejects a publish whose publish plugin throws; the next publish goes through', async () => {
    await assert.rejects(
      app.push.publish({ identity: 'publish-throws', type: 'create', entity: {} }),
      /publish hook bug/,
    );
    await stillServes(app);
  });
});

describe('faults: connections that fail', () => {
  const { logger, lines } = memoryLogger();
  const registry = new Registry();
  let app: PushApp;
  let release = deferred<void>();
  let entered = deferred<void>();

  before(async () => {
    app = await startPushApp({
      options: { logger, maxBufferedBytes: 8 * 1024 * 1024 },
      plugins: [
        authPlugin(async (s) => {
          if (s.parameters('slow').length > 0) {
            entered.resolve();
            await release.promise;
          }
          return 'ok' as const;
        }),
      ],
    });
    registerMetrics(app.push, { registry });
  });

  after(async () => {
    release.resolve();
    await app?.close();
  });

  afterEach(() => {
    release.resolve();
    release = deferred<void>();
    entered = deferred<void>();
  });

  /** A raw TCP connection to the server. */
  function rawSocket(): Promise<Socket> {
    const url = new URL(app.url);
    return new Promise((resolve, reject) => {
      const socket = tcpConnect(Number(url.port), url.hostname, () => resolve(socket));
      socket.once('error', reject);
    });
  }

  const upgradeRequest = (path: string): string =>
    `GET ${path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n';

  it('survives clients that leave mid-handshake, and counts them', async () => {
    const path = new URL(app.wsUrl).pathname;
    // 1. Half a request line and headers, then gone: the HTTP parser never sees an upgrade.
    const partial = await rawSocket();
    partial.write(upgradeRequest(path).slice(0, 60));
    partial.destroy();
    // 2. A complete upgrade request, gone while the auth plugin decides.
    const leaving = await rawSocket();
    leaving.on('error', () => undefined);
    leaving.write(upgradeRequest(`${path}?slow=1`));
    await entered.promise;
    leaving.resetAndDestroy();
    await waitFor(() => app.push.stats().sessionsAbandoned === 1, {
      timeout: 5000,
      message: 'the abandoned handshake was not counted',
    });
    release.resolve(); // the plugin accepts a client that is gone: nothing must happen
    // 3. Gone right after the request, racing the handshake (no plugin wait).
    for (let i = 0; i < 20; i++) {
      const racer = await rawSocket();
      racer.on('error', () => undefined);
      racer.write(upgradeRequest(path));
      racer.resetAndDestroy();
    }
    await stillServes(app);
    await waitFor(() => app.push.stats().sessionsOpen === 0, {
      timeout: 5000,
      message: 'racing handshakes left sessions registered',
    });
    assert.equal(
      await metric(registry, 'pushwire_sessions_abandoned_total'),
      app.push.stats().sessionsAbandoned,
    );
    assert.ok(
      !lines.some((l) => l.level === 'error'),
      JSON.stringify(lines.filter((l) => l.level === 'error')),
    );
  });

  it('survives sockets reset while events are written to them', async () => {
    const healthy = await connectClient(app.wsUrl);
    const victims = await Promise.all(Array.from({ length: 5 }, () => connectClient(app.wsUrl)));
    const closedBefore = app.push.stats().sessionsClosed[1006] ?? 0;
    const N = 200;
    // Each victim resets its TCP connection (RST) after its 10th event, mid-stream.
    for (const victim of victims) {
      victim.ws.on('message', () => {
        if (victim.events.length === 10) {
          (victim.ws as unknown as { _socket: Socket })._socket.resetAndDestroy();
        }
      });
    }
    await app.push.publish(
      ...Array.from({ length: N }, (_, seq) => ({
        identity: 'stream',
        type: 'create',
        entity: { seq, pad: 'y'.repeat(8 * 1024) },
      })),
    );
    await healthy.waitForEvents(N, 15_000);
    assert.deepEqual(
      healthy.events.map((e) => (e.entity as { seq: number }).seq),
      Array.from({ length: N }, (_, i) => i),
    );
    await waitFor(
      () => (app.push.stats().sessionsClosed[1006] ?? 0) - closedBefore === victims.length,
      {
        timeout: 10_000,
        message: 'the reset sessions were not unregistered with 1006',
      },
    );
    assert.equal(
      await metric(registry, 'pushwire_sessions_closed_total{code="1006"}'),
      app.push.stats().sessionsClosed[1006],
    );
    healthy.close();
    await healthy.closed;
    await stillServes(app);
  });
});

describe('faults: an event loop blocked for a second', () => {
  let app: PushApp;
  const registry = new Registry();
  const pingInterval = 300;
  const { logger, lines } = memoryLogger();

  before(async () => {
    app = await startPushApp({ options: { pingInterval, logger } });
    registerMetrics(app.push, { registry });
  });

  after(async () => {
    await app?.close();
  });

  it('keeps sessions alive through the stall, then pings and delivers again', async (t) => {
    const clients = await Promise.all(Array.from({ length: 10 }, () => connectClient(app.wsUrl)));
    const pings = clients.map(() => 0);
    clients.forEach((c, i) => c.ws.on('ping', () => pings[i]!++));
    // Wait for a ping round so that a ping is in flight somewhere around the stall.
    await waitFor(() => pings.every((p) => p >= 1), { timeout: 5000, message: 'no first ping' });
    await app.push.publish({ identity: 'before', type: 'create', entity: {} });
    await Promise.all(clients.map((c) => c.waitForEvents(1)));
    // The worst moment: right after the server sent a round of pings, before it could read the
    // pongs (they wait in the socket buffers), and with an event published but not yet received.
    const stalled = deferred<Promise<void>>();
    clients[0]!.ws.once('ping', () => {
      const during = app.push.publish({ identity: 'during', type: 'create', entity: {} });
      const blockedUntil = Date.now() + 1000;
      while (Date.now() < blockedUntil) {
        // busy: no timer, no I/O, no microtask runs
      }
      stalled.resolve(during);
    });
    await await stalled.promise;
    const stallEnded = performance.now();
    await Promise.all(clients.map((c) => c.waitForEvents(2)));
    const delivered = performance.now() - stallEnded;
    const pingsAfterStall = [...pings];
    await waitFor(() => pings.every((p, i) => p >= pingsAfterStall[i]! + 2), {
      timeout: 5000,
      message: 'pings did not resume after the stall',
    });
    const pinged = performance.now() - stallEnded;
    await app.push.publish({ identity: 'after', type: 'create', entity: {} });
    await Promise.all(clients.map((c) => c.waitForEvents(3)));
    // No healthy session was judged dead because this process stalled; the stall is in the log.
    assert.deepEqual(app.push.stats().sessionsClosed, {});
    assert.ok(lines.some((l) => l.level === 'warn' && l.msg.includes('keepalive round ran late')));
    t.diagnostic(
      `1 s stall (pingInterval ${pingInterval} ms): 0 of 10 sessions lost; the event published before it reached all 10 ${delivered.toFixed(0)} ms after; 2 ping rounds ${pinged.toFixed(0)} ms after`,
    );
    assert.equal(app.push.stats().sessionsOpen, clients.length);
    assert.equal(await metric(registry, 'pushwire_sessions_open{encoding="application/json"}'), 10);
    await stillServes(app);
    for (const c of clients) c.close();
    await Promise.all(clients.map((c) => withTimeout(c.closed, 5000, 'client close')));
  });

  it('still terminates a client that really stopped answering pings', async () => {
    const terminatedBefore = app.push.stats().sessionsClosed[1006] ?? 0;
    const silent = new WebSocket(app.wsUrl, { autoPong: false });
    silent.on('error', () => undefined);
    const closed = deferred<number>();
    silent.on('close', (code) => closed.resolve(code));
    await new Promise<void>((resolve) => silent.once('open', () => resolve()));
    assert.equal(
      await withTimeout(closed.promise, 5000, 'a silent client was not terminated'),
      1006,
    );
    await waitFor(() => (app.push.stats().sessionsClosed[1006] ?? 0) === terminatedBefore + 1, {
      timeout: 5000,
      message: 'the terminated session was not counted',
    });
  });
});
