/**
 * pushwire/client against real servers (startPushApp: Express, express-ws,
 * pushwire, real sockets on port 0), through its Node entry (`ws`
 * injected), and through its browser entry with `ws` standing in for the
 * browser's WebSocket (no refusal status: the `checkUrl` path).
 *
 * Nothing sleeps. A test waits for the client event that proves its point,
 * with a deadline. Reconnect timing is tested with a fake scheduler and a
 * fake random source: the test sees every delay the client asks for and
 * fires the timers itself. To prove an event was NOT delivered, a marker is
 * published after it: events of one publisher arrive in order, so the
 * filtered one would have arrived first.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import type { Server } from 'node:http';
import { describe, it } from 'node:test';
import express from 'express';
import expressWs from 'express-ws';
import WebSocket from 'ws';
import { decode as referenceDecode, encode as referenceEncode } from '@msgpack/msgpack';
import {
  authPlugin,
  initPlugin,
  LocalPubSub,
  pushMiddleware,
  ServiceUnavailableError,
  type PushMiddleware,
} from '../../lib/index.js';
import {
  backoffDelay,
  createPushClient,
  PushConfigError,
  PushRefusedError,
  type PushClient,
  type ReceivedEvent,
  type Scheduler,
} from '../../client/node.js';
import { createPushClient as createBrowserClient } from '../../client/index.js';
import { decodeEvent, encodeConfig } from '../../client/protocol.js';
import { PushDecodeError } from '../../client/errors.js';
import { freePort } from '../helpers/brokers.js';
import * as mp from '../helpers/go-msgpack.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import type { PushApp } from '../helpers/push-app.js';
import { clientFixtures, next } from '../helpers/push-client.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

/** How long a socket may take to open, an event to arrive, a reconnect to happen. */
const WAIT_MS = 5_000;

// The client must never leave a rejection unhandled, whatever the server does to it.
failOnUnhandledRejections();

const { app, client, track } = clientFixtures();

/** Records the client's events; `until` waits for one that matches. */
function record(c: PushClient): {
  events: ReceivedEvent[];
  until(match: (event: ReceivedEvent) => boolean, what: string): Promise<ReceivedEvent>;
} {
  const events: ReceivedEvent[] = [];
  c.on('event', (event) => events.push(event));
  return {
    events,
    async until(match, what) {
      await waitFor(() => events.some(match), { timeout: WAIT_MS, message: `no event: ${what}` });
      return events.find(match) as ReceivedEvent;
    },
  };
}

/** Waits until the server holds `config` for one of its sessions: the proof it was applied. */
async function serverHasConfig(push: PushMiddleware, config: unknown): Promise<void> {
  await waitFor(
    () =>
      push.sessions().some((s) => JSON.stringify(s.pushConfig?.input) === JSON.stringify(config)),
    { timeout: WAIT_MS, message: `the server never applied ${JSON.stringify(config)}` },
  );
}

/** A scheduler whose time moves only when the test says so. */
class FakeScheduler implements Scheduler {
  time = 1_000_000;
  #id = 0;
  readonly timers = new Map<number, { at: number; ms: number; callback: () => void }>();
  now(): number {
    return this.time;
  }
  setTimeout(callback: () => void, ms: number): unknown {
    const id = ++this.#id;
    this.timers.set(id, { at: this.time + ms, ms, callback });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }
  /** The delays of the pending timers. */
  get pending(): number[] {
    return [...this.timers.values()].map((t) => t.ms);
  }
  /** Moves time to the earliest timer and runs it. */
  fireNext(): void {
    const [id, timer] = [...this.timers.entries()].sort((a, b) => a[1].at - b[1].at)[0] ?? [];
    assert.ok(id !== undefined && timer !== undefined, 'no pending timer to fire');
    this.timers.delete(id);
    this.time = timer.at;
    timer.callback();
  }
}

/** An app whose auth refuses every token, and the app. */
async function refusingApp(status: 401 | 403 | 503): Promise<PushApp> {
  const plugin =
    status === 401
      ? authPlugin(() => 'ko')
      : status === 403
        ? initPlugin(() => false)
        : authPlugin(() => {
            throw new ServiceUnavailableError('maintenance');
          });
  return app({ plugins: [plugin] });
}

/** A push server on a given port (to restart "the same server"); close() stops it. */
async function serverOn(port: number): Promise<{ push: PushMiddleware; close(): Promise<void> }> {
  const application = express();
  const ews = expressWs(application);
  const push = pushMiddleware(new LocalPubSub(), 'events');
  application.use('/api', push);
  push.attach(ews);
  await push.ready;
  const server = application.listen(port, '127.0.0.1') as Server;
  await once(server, 'listening');
  return {
    push,
    async close() {
      await push.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('events, whatever the encoding', () => {
  const entity = {
    ID: '42',
    name: 'héllo ✓',
    priority: 3,
    ratio: 0.25,
    big: 2 ** 40,
    negative: -70000,
    open: true,
    none: null,
    tags: ['a', 'b'],
    nested: { deep: { list: [1, { x: 'y' }] } },
  };

  for (const encoding of ['json', 'msgpack'] as const) {
    it(`${encoding}: decodes the entity and the timestamp`, async () => {
      const server = await app();
      const c = client(server.wsUrl, { encoding });
      const seen = record(c);
      await next(c, 'open');
      const timestamp = new Date();
      await server.push.publish({ identity: 'task', type: 'create', entity, timestamp });
      const event = await seen.until((e) => e.identity === 'task', 'the task');
      assert.deepEqual(event, { identity: 'task', type: 'create', entity, timestamp });
      assert.equal(server.push.sessions()[0]?.encodings.write, `application/${encoding}`);
    });

    it(`${encoding}: sends the config in its encoding; the server filters with it`, async () => {
      const server = await app();
      const c = client(server.wsUrl, { encoding });
      const seen = record(c);
      const config = { identities: { task: [] }, filters: { task: 'priority >= 3' } };
      c.setConfig(config);
      await next(c, 'open');
      await serverHasConfig(server.push, config);
      await server.push.publish(
        { identity: 'user', type: 'create', entity: { ID: 'u1' } },
        { identity: 'task', type: 'create', entity: { ID: 'low', priority: 1 } },
        { identity: 'task', type: 'create', entity: { ID: 'marker', priority: 5 } },
      );
      await seen.until((e) => (e.entity as { ID: string }).ID === 'marker', 'the marker');
      assert.deepEqual(
        seen.events.map((e) => (e.entity as { ID: string }).ID),
        ['marker'],
      );
    });
  }

  it('passes extra parameters to the session', async () => {
    const server = await app();
    const c = client(server.wsUrl, { parameters: { namespace: '/acme', tag: ['a', 'b'] } });
    await next(c, 'open');
    const session = server.push.sessions()[0];
    assert.equal(session?.parameter('namespace'), '/acme');
    assert.deepEqual(session?.parameters('tag'), ['a', 'b']);
    assert.equal(session?.parameter('encoding'), 'json');
  });

  it('reports an invalid config as a PushConfigError (an error event) and stays connected', async () => {
    const server = await app();
    const c = client(server.wsUrl);
    await next(c, 'open');
    const error = next(c, 'error');
    c.setConfig({ identities: { task: [] }, filters: { user: 'a == 1' } });
    const reported = await error;
    assert.ok(reported instanceof PushConfigError);
    assert.equal(reported.code, 'PUSH_INVALID_CONFIG');
    assert.equal(reported.error?.code, 400);
    assert.equal(c.state, 'open');
  });

  it('setConfig throws for a config that is not an object', () => {
    const c = createPushClient('ws://127.0.0.1:9/api/events', { reconnect: false });
    track(c);
    assert.throws(() => c.setConfig([] as never), TypeError);
    c.close();
  });
});

describe('reconnecting', () => {
  it('resends the config after the server closes the session', async () => {
    const server = await app();
    const c = client(server.wsUrl, { minDelay: 10, maxDelay: 50 });
    const seen = record(c);
    const config = { identities: { task: [] } };
    c.setConfig(config);
    await next(c, 'open');
    await serverHasConfig(server.push, config);
    const first = server.push.sessions()[0];

    const reopened = next(c, 'open');
    const closed = next(c, 'close');
    first?.close(1011, 'test');
    assert.deepEqual(await closed, {
      code: 1011,
      reason: 'test',
      opened: true,
      willReconnect: true,
    });
    await reopened;
    await serverHasConfig(server.push, config);
    assert.notEqual(server.push.sessions()[0]?.id, first?.id);
    await server.push.publish(
      { identity: 'user', type: 'create', entity: { ID: 'filtered' } },
      { identity: 'task', type: 'create', entity: { ID: 'marker' } },
    );
    await seen.until((e) => (e.entity as { ID: string }).ID === 'marker', 'the marker');
    assert.deepEqual(
      seen.events.map((e) => e.identity),
      ['task'],
    );
  });

  it('comes back when the server restarts on the same port, config resent', async () => {
    const port = await freePort();
    let server = await serverOn(port);
    const c = client(`ws://127.0.0.1:${port}/api/events`, { minDelay: 10, maxDelay: 100 });
    const seen = record(c);
    const config = { identities: { task: ['create'] } };
    c.setConfig(config);
    await next(c, 'open');

    // Down: the session ends with 1001, then attempts fail until the server is back.
    const shutdown = next(c, 'close');
    const failed = deferred<void>();
    const off = c.on('close', (info) => {
      if (!info.opened) failed.resolve();
    });
    await server.close();
    assert.equal((await shutdown).code, 1001);
    await withTimeout(failed.promise, WAIT_MS, 'no failed attempt while the server was down');
    off();

    server = await serverOn(port);
    try {
      await next(c, 'open');
      await serverHasConfig(server.push, config);
      await server.push.publish(
        { identity: 'task', type: 'delete', entity: { ID: 'filtered' } },
        { identity: 'task', type: 'create', entity: { ID: 'marker' } },
      );
      await seen.until((e) => (e.entity as { ID: string }).ID === 'marker', 'the marker');
      assert.deepEqual(
        seen.events.map((e) => e.type),
        ['create'],
      );
    } finally {
      c.close();
      await server.close();
    }
  });

  it('with reconnect: false, closes when its socket does and ends its iterators', async () => {
    const server = await app();
    const c = client(server.wsUrl, { reconnect: false });
    await next(c, 'open');
    const iterator = c.events();
    const closed = next(c, 'close');
    server.push.sessions()[0]?.close(1000);
    assert.deepEqual(await closed, { code: 1000, reason: '', opened: true, willReconnect: false });
    assert.equal(c.state, 'closed');
    assert.deepEqual(await iterator.next(), { value: undefined, done: true });
  });

  it('a token function that throws: an error, then a retry that calls it again', async () => {
    const server = await app();
    const scheduler = new FakeScheduler();
    let calls = 0;
    const c = client(server.wsUrl, {
      scheduler,
      token: () => {
        calls++;
        if (calls === 1) throw new Error('the identity provider is down');
        return 'fresh';
      },
    });
    const error = next(c, 'error');
    const reconnecting = next(c, 'reconnecting');
    assert.equal((await error).message, 'the identity provider is down');
    await reconnecting;
    const opened = next(c, 'open');
    scheduler.fireNext();
    await opened;
    assert.equal(calls, 2);
    assert.equal(server.push.sessions()[0]?.token, 'fresh');
  });

  it('connect() skips the wait while reconnecting', async () => {
    const server = await app();
    const scheduler = new FakeScheduler();
    const c = client(server.wsUrl, { scheduler });
    await next(c, 'open');
    const reconnecting = next(c, 'reconnecting');
    server.push.sessions()[0]?.close(1000);
    await reconnecting;
    assert.equal(scheduler.timers.size, 1);
    const reopened = next(c, 'open');
    c.connect();
    assert.equal(scheduler.timers.size, 0, 'the pending retry is cancelled');
    await reopened;
  });
});

describe('backoff', () => {
  it('is uniform between minDelay and min(maxDelay, minDelay * 2^(attempt+1))', () => {
    const bounds = { minDelay: 100, maxDelay: 5_000 };
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(5_000, 100 * 2 ** (attempt + 1));
      assert.equal(
        backoffDelay(attempt, bounds, () => 0),
        100,
      );
      assert.equal(
        backoffDelay(attempt, bounds, () => 0.5),
        Math.round(100 + (ceiling - 100) / 2),
      );
      assert.equal(
        backoffDelay(attempt, bounds, () => 0.999999),
        Math.round(100 + 0.999999 * (ceiling - 100)),
      );
    }
    assert.equal(
      backoffDelay(5_000, bounds, () => 0.999999),
      5_000,
      'a huge attempt stays finite',
    );
    assert.equal(
      backoffDelay(0, { minDelay: 100, maxDelay: 10 }, () => 0.5),
      100,
      'max below min',
    );
    assert.equal(
      backoffDelay(0, {}, () => 0),
      500,
      'default minDelay',
    );
    assert.equal(
      backoffDelay(40, {}, () => 0.999999),
      30_000,
      'default maxDelay',
    );
  });

  it('the client asks for those delays while the server is unreachable, then stops on close()', async () => {
    const port = await freePort(); // nothing listens there
    const scheduler = new FakeScheduler();
    const randoms = [0, 0.5, 0.999999, 0.25, 0.75, 1 - 1e-9, 0.1];
    let draw = 0;
    const c = client(`ws://127.0.0.1:${port}/api/events`, {
      scheduler,
      random: () => randoms[draw++ % randoms.length] as number,
      minDelay: 200,
      maxDelay: 3_000,
    });
    const asked: Array<{ attempt: number; delay: number }> = [];
    c.on('reconnecting', (info) => asked.push(info));
    for (let attempt = 1; attempt <= randoms.length; attempt++) {
      await waitFor(() => asked.length === attempt, {
        timeout: WAIT_MS,
        message: `retry ${attempt} was never scheduled`,
      });
      assert.equal(c.state, 'reconnecting');
      assert.deepEqual(scheduler.pending, [asked[attempt - 1]?.delay], 'one timer, of that delay');
      if (attempt < randoms.length) scheduler.fireNext();
    }
    const expected = randoms.map((r, i) => ({
      attempt: i + 1,
      delay: Math.round(200 + r * (Math.min(3_000, 200 * 2 ** (i + 1)) - 200)),
    }));
    assert.deepEqual(asked, expected);
    for (const { attempt, delay } of asked) {
      assert.ok(delay >= 200 && delay <= Math.min(3_000, 200 * 2 ** attempt), `${delay} in bounds`);
    }
    c.close();
    assert.equal(c.state, 'closed');
    assert.deepEqual(scheduler.pending, [], 'close() cancels the pending retry');
  });

  it('starts again from minDelay after a healthy connection, and keeps growing after short ones', async () => {
    const server = await app();
    const scheduler = new FakeScheduler();
    const c = client(server.wsUrl, {
      scheduler,
      random: () => 0.999999,
      minDelay: 100,
      maxDelay: 10_000,
    });
    const delays: number[] = [];
    c.on('reconnecting', ({ delay }) => delays.push(delay));
    const drop = async (): Promise<void> => {
      const reconnecting = next(c, 'reconnecting');
      server.push.sessions()[0]?.close(1011);
      await reconnecting;
      const reopened = next(c, 'open');
      scheduler.fireNext();
      await reopened;
    };
    await next(c, 'open');
    await drop(); // short-lived: attempt 0
    await drop(); // short-lived again: attempt 1, a longer window
    scheduler.time += 5_000; // this one stays up long enough to count as healthy
    await drop(); // attempt 0 again
    assert.deepEqual(delays, [200, 400, 200]);
  });
});

describe('refusals', () => {
  for (const status of [401, 403] as const) {
    it(`${status}: an error with the status and the body, 'refused', and no reconnect`, async () => {
      const server = await refusingApp(status);
      const scheduler = new FakeScheduler();
      const c = client(server.wsUrl, { scheduler, token: 'secret' });
      const errors: Error[] = [];
      c.on('error', (error) => errors.push(error));
      const reconnects: unknown[] = [];
      c.on('reconnecting', (info) => reconnects.push(info));
      const close = next(c, 'close');
      const refused = await next(c, 'refused');

      assert.ok(refused instanceof PushRefusedError);
      assert.equal(refused.name, 'PushRefusedError');
      assert.equal(refused.code, 'PUSH_REFUSED');
      assert.equal(refused.status, status);
      const title = status === 401 ? 'Unauthorized' : 'Forbidden';
      assert.deepEqual(refused.body, [
        { code: status, title, description: refused.errors[0]?.description, subject: 'pushwire' },
      ]);
      assert.match(refused.message, new RegExp(`${status} ${title}`));
      assert.deepEqual(errors, [refused], 'the refusal is also an error');
      assert.deepEqual(await close, {
        code: 1006,
        reason: '',
        opened: false,
        willReconnect: false,
      });
      assert.equal(c.state, 'refused');
      assert.deepEqual(scheduler.pending, [], 'no retry scheduled');
      assert.deepEqual(reconnects, []);
      assert.equal(server.push.stats().sessionsRefused[status], 1);
    });
  }

  it('503: an error with the status, then a retry', async () => {
    const server = await refusingApp(503);
    const scheduler = new FakeScheduler();
    const c = client(server.wsUrl, { scheduler });
    const error = next(c, 'error');
    const reconnecting = next(c, 'reconnecting');
    const refusal = await error;
    assert.ok(refusal instanceof PushRefusedError);
    assert.equal(refusal.status, 503);
    assert.equal(refusal.errors[0]?.description, 'maintenance');
    await reconnecting;
    assert.equal(c.state, 'reconnecting');
  });

  it('connect() after a refusal calls the token function again', async () => {
    const server = await app({
      plugins: [authPlugin((session) => (session.token === 'good' ? 'ok' : 'ko'))],
    });
    const tokens = ['bad', 'good'];
    const c = client(server.wsUrl, { token: async () => tokens.shift() });
    await next(c, 'refused');
    const opened = next(c, 'open');
    c.connect();
    await opened;
    assert.equal(server.push.sessions()[0]?.token, 'good');
  });

  it('in a browser (no status from the WebSocket), learns the refusal from checkUrl', async () => {
    const seenQueries: string[] = [];
    const server = await app({
      plugins: [authPlugin(() => 'ko')],
      before(application) {
        application.get('/api/events/check', (req, res) => {
          seenQueries.push(new URL(req.url, 'http://x').search);
          res
            .status(401)
            .json([{ code: 401, title: 'Unauthorized', description: 'no', subject: 'pushwire' }]);
        });
      },
    });
    // The browser entry, with ws in place of the browser's WebSocket and nothing reading refusals.
    const c = createBrowserClient(server.wsUrl.replace('ws:', 'http:'), {
      WebSocket,
      token: 't',
      checkUrl: 'events/check',
      scheduler: new FakeScheduler(),
    });
    track(c);
    const refused = await next(c, 'refused');
    assert.equal(refused.status, 401);
    assert.equal(refused.errors[0]?.description, 'no');
    assert.deepEqual(seenQueries, ['?token=t&encoding=json&enableErrors=true']);
  });

  it('in a browser without checkUrl, a refusal looks like a network failure: retried', async () => {
    const server = await refusingApp(401);
    const c = createBrowserClient(server.wsUrl, { WebSocket, scheduler: new FakeScheduler() });
    track(c);
    const close = await next(c, 'close');
    assert.deepEqual(close, { code: 1006, reason: '', opened: false, willReconnect: true });
    assert.equal(c.state, 'reconnecting');
  });
});

describe('request headers (Node only)', () => {
  it('the headers option reaches the session phase; a function is called before every attempt', async () => {
    const server = await app({
      plugins: [
        authPlugin((session) => (session.header('authorization') === 'Bearer good' ? 'ok' : 'ko')),
      ],
    });
    const values = ['Bearer bad', 'Bearer good'];
    const c = client(server.wsUrl, { headers: () => ({ Authorization: values.shift() ?? '' }) });
    const refused = await next(c, 'refused');
    assert.equal(refused.status, 401);
    const opened = next(c, 'open');
    c.connect();
    await opened;
    assert.equal(server.push.sessions()[0]?.header('authorization'), 'Bearer good');
    const fixed = client(server.wsUrl, { headers: { Authorization: 'Bearer good' } });
    await next(fixed, 'open');
  });

  it("the browser entry refuses it: a browser's WebSocket cannot send headers", () => {
    assert.throws(
      () => createBrowserClient('ws://127.0.0.1:1/api/events', { WebSocket, headers: { A: 'b' } }),
      (error: unknown) =>
        error instanceof TypeError && /cannot send request headers/.test(error.message),
    );
  });
});

describe('the WebSocket option of pushwire/client/node', () => {
  // The ws that express-ws depends on (7.x), wherever npm put it: beside ours when not hoisted.
  const expressWsRequire = createRequire(createRequire(import.meta.url).resolve('express-ws'));
  const wsPath = expressWsRequire.resolve('ws');
  const { version } = expressWsRequire('ws/package.json') as { version: string };

  it(`ws ${version} (express-ws's), or a subclass of it, is a TypeError`, (t) => {
    if (Number(version.split('.')[0]) >= 8) {
      t.skip(`express-ws resolves ws ${version} at ${wsPath}: no old ws to test with`);
      return;
    }
    const OldWebSocket = expressWsRequire('ws') as new (url: string) => WebSocket;
    class WithHeaders extends OldWebSocket {}
    for (const WebSocketClass of [OldWebSocket, WithHeaders]) {
      assert.throws(
        () => createPushClient('ws://127.0.0.1:1/api/events', { WebSocket: WebSocketClass }),
        (error: unknown) => error instanceof TypeError && /ws < 8/.test(error.message),
      );
    }
  });

  it('a class that is not ws is a TypeError; ws and its subclasses are accepted', async () => {
    class NotWs {
      binaryType = '';
      readyState = 0;
      onopen = null;
      onmessage = null;
      onclose = null;
      onerror = null;
      send(): void {}
      close(): void {}
    }
    assert.throws(
      () => createPushClient('ws://127.0.0.1:1/api/events', { WebSocket: NotWs }),
      (error: unknown) => error instanceof TypeError && /not the ws package/.test(error.message),
    );
    const server = await app({ plugins: [authPlugin(() => 'ko')] });
    class Subclass extends WebSocket {}
    const c = client(server.wsUrl, { WebSocket: Subclass });
    assert.equal((await next(c, 'refused')).status, 401);
  });
});

describe('the async iterator', () => {
  it('yields events in order and ends on close()', async () => {
    const server = await app();
    const c = client(server.wsUrl, { encoding: 'msgpack' });
    await next(c, 'open');
    const received: unknown[] = [];
    const done = (async () => {
      for await (const event of c) {
        received.push(event.entity);
        if (received.length === 3) c.close();
      }
    })();
    await server.push.publish(
      ...[1, 2, 3].map((n) => ({ identity: 'task', type: 'create', entity: { n } })),
    );
    await withTimeout(done, WAIT_MS, 'the loop did not end');
    assert.deepEqual(received, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    assert.equal(c.state, 'closed');
    assert.deepEqual(await c.events().next(), { value: undefined, done: true });
  });

  it('throws the refusal when the client stops on a 401', async () => {
    const server = await refusingApp(401);
    const c = client(server.wsUrl);
    await assert.rejects(
      withTimeout(
        (async () => {
          for await (const _event of c.events()) assert.fail('no event expected');
        })(),
        WAIT_MS,
        'the loop did not end',
      ),
      (error: unknown) => error instanceof PushRefusedError && error.status === 401,
    );
  });

  it('breaking out of the loop unsubscribes; the client keeps running', async () => {
    const server = await app();
    const c = client(server.wsUrl);
    await next(c, 'open');
    const iterator = c.events();
    await server.push.publish({ identity: 'task', type: 'create', entity: { n: 1 } });
    assert.deepEqual((await iterator.next()).value?.entity, { n: 1 });
    await iterator.return?.();
    assert.deepEqual(await iterator.next(), { value: undefined, done: true });
    assert.equal(c.state, 'open');
  });
});

describe('the client decodes MessagePack with @msgpack/msgpack', () => {
  // Events as a bahamut (Go) server writes them: test/helpers/go-msgpack.ts builds the bytes
  // by hand, so these checks do not lean on the library they check.
  const WHEN_SEC = 1_795_470_000; // 2026-11-23T21:40:00Z
  function goEvent(entity: mp.Packed, timestamp: mp.Packed = mp.goTime(WHEN_SEC, 0)): Buffer {
    return mp.map([
      ['entity', mp.bin(entity)],
      ['identity', mp.str('task')],
      ['type', mp.str('create')],
      ['timestamp', timestamp],
      ['encoding', mp.str('application/msgpack')],
    ]);
  }

  it("decodes a Go server's event: map, bin entity, uncompacted ints, timestamp", () => {
    const entity = mp.map([
      ['ID', mp.str('42')],
      ['name', mp.str('x'.repeat(40))], // str8, as Go writes 32-255 bytes
      ['priority', mp.int32(3)],
      ['size', mp.int64(-(2 ** 40))],
      ['ratio', mp.float64(0.5)],
      ['done', mp.bool(false)],
      ['owner', mp.nil()],
      ['tags', mp.array([mp.str('a'), mp.fixint(7)])],
      ['due', mp.goTime(WHEN_SEC, 123_000_000)],
    ]);
    assert.deepEqual(decodeEvent(goEvent(entity, mp.goTime(WHEN_SEC, 123_456_789))), {
      identity: 'task',
      type: 'create',
      entity: {
        ID: '42',
        name: 'x'.repeat(40),
        priority: 3,
        size: -(2 ** 40),
        ratio: 0.5,
        done: false,
        owner: null,
        tags: ['a', 7],
        due: new Date('2026-11-23T21:40:00.123Z'),
      },
      timestamp: new Date('2026-11-23T21:40:00.123Z'), // nanoseconds cut to milliseconds
    });
  });

  it('reads the integer boundaries of every width as numbers', () => {
    const values = [
      0,
      127,
      128,
      255,
      256,
      65_535,
      65_536,
      2 ** 32 - 1,
      2 ** 32,
      Number.MAX_SAFE_INTEGER,
      -1,
      -32,
      -33,
      -128,
      -129,
      -32_768,
      -32_769,
      -(2 ** 31),
      -(2 ** 31) - 1,
      Number.MIN_SAFE_INTEGER,
    ];
    for (const n of values) {
      // Both the compact form (@msgpack/msgpack's, ours) and Go's uncompacted int64.
      for (const bytes of [referenceEncode(n), mp.int64(n)]) {
        assert.equal(decodeEvent(goEvent(Buffer.from(bytes))).entity, n, `${n}`);
      }
    }
    // Past 2^53 an int64 is a number, as in JSON: precision is lost, nothing throws.
    assert.equal(decodeEvent(goEvent(mp.int64(2n ** 60n))).entity, 2 ** 60);
    const float32 = Buffer.from([0xca, 0x3f, 0xc0, 0, 0]);
    assert.equal(decodeEvent(goEvent(float32)).entity, 1.5);
  });

  it('decodes the timestamp extension in its three sizes', () => {
    for (const [sec, nsec, iso] of [
      [WHEN_SEC, 0, '2026-11-23T21:40:00.000Z'], // 32 bits
      [WHEN_SEC, 123_456_789, '2026-11-23T21:40:00.123Z'], // 64 bits
      [-315_619_200, 500_000_000, '1960-01-01T00:00:00.500Z'], // 96 bits (negative seconds)
      [19_880_899_200, 0, '2600-01-01T00:00:00.000Z'], // 96 bits (beyond 34 bits of seconds)
    ] as const) {
      const event = decodeEvent(goEvent(mp.nil(), mp.goTime(sec, nsec)));
      assert.equal(event.timestamp.toISOString(), iso);
    }
  });

  it('an entity holding __proto__ is refused (the server refuses to publish one), never merged', () => {
    const entity = mp.map([['__proto__', mp.map([['polluted', mp.fixint(1)]])]]);
    assert.throws(() => decodeEvent(goEvent(entity)), PushDecodeError);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  it('bad bytes are a PushDecodeError: unknown type byte, truncated, trailing bytes', () => {
    for (const bytes of [[0xc1], [0xda, 0x00], [0x01, 0x02]]) {
      assert.throws(() => decodeEvent(Uint8Array.from(bytes)), PushDecodeError);
      assert.throws(() => decodeEvent(goEvent(Buffer.from(bytes))), PushDecodeError);
    }
  });

  it('encodes a config as @msgpack/msgpack does, undefined keys left out as in JSON', () => {
    const config = { identities: { task: ['create'], user: [] }, filters: { task: 'n > 2' } };
    assert.deepEqual(encodeConfig(config, 'msgpack'), referenceEncode(config));
    assert.deepEqual(
      referenceDecode(encodeConfig({ ...config, parameters: undefined }, 'msgpack') as Uint8Array),
      config,
    );
    assert.throws(
      () => encodeConfig({ parameters: { n: 1n as never } }, 'msgpack'),
      TypeError,
      'a bigint, as JSON.stringify',
    );
  });
});
