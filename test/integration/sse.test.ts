/**
 * Server-Sent Events on the push endpoint (docs/PROTOCOL.md section 10),
 * read by Node's fetch (undici) from a real Express server on port 0: the
 * same session chain and refusals as a WebSocket, the config from the
 * query, events byte for byte as the WebSocket JSON frame, resume by
 * Last-Event-ID, the slow-consumer bound, keepalive, shutdown, stats, and
 * a compression middleware that must not buffer the stream.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import compression from 'compression';
import WebSocket from 'ws';
import { LocalPubSub, UnauthorizedError, type Plugin, type PushEvent } from '../../lib/index.js';
import { sessionLimitPlugin } from '../../plugins/limits/index.js';
import {
  connectClient,
  expectRefusal,
  startPushApp,
  withPushApp,
  type PushApp,
} from '../helpers/push-app.js';
import { httpUrl, openEventStream, pushEvents, type EventStream } from '../helpers/sse.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

/** Accepts the token `good` from the query, a `Bearer` header or the `tok` cookie. */
const tokenAuth: Plugin = {
  name: 'token-auth',
  async session(ctx, next) {
    const s = ctx.session;
    const token =
      s.token || s.cookie('tok') || (s.header('authorization') ?? '').replace(/^Bearer /, '');
    if (token !== 'good') throw new UnauthorizedError('bad token');
    s.setClaims(['sub=alice']);
    ctx.authenticated = true;
    await next();
  },
};

const task = (n: number, extra: Record<string, unknown> = {}): PushEvent => ({
  identity: 'task',
  type: 'create',
  entity: { n, ...extra },
});

/** Publishes events one turn after the call (so that the caller can wait first). */
async function publish(app: PushApp, ...events: PushEvent[]): Promise<void> {
  await app.push.publish(...events);
}

/** Streams opened in a test, aborted whatever happens. */
async function withStreams(
  app: PushApp,
  fn: (open: typeof openEventStream) => Promise<void>,
): Promise<void> {
  const streams: EventStream[] = [];
  try {
    await fn(async (url, opts) => {
      const stream = await openEventStream(url, opts);
      streams.push(stream);
      return stream;
    });
  } finally {
    for (const stream of streams) stream.close();
  }
}

/** Waits until the server counts `n` open sessions (a stream's head arrives before its registration settles nothing else). */
async function sessionsOpen(app: PushApp, n: number): Promise<void> {
  await waitFor(() => app.push.stats().sessionsOpen === n, {
    timeout: 5000,
    message: `${n} open sessions (have ${app.push.stats().sessionsOpen})`,
  });
}

describe('SSE: the stream', () => {
  it('answers 200 text/event-stream with the headers of section 10, then events as the WebSocket JSON frames', async () => {
    await withPushApp({}, async (app, track) =>
      withStreams(app, async (open) => {
        const stream = await open(app.wsUrl);
        assert.equal(stream.status, 200);
        assert.equal(stream.headers.get('content-type'), 'text/event-stream; charset=utf-8');
        assert.equal(stream.headers.get('cache-control'), 'no-cache, no-transform');
        assert.equal(stream.headers.get('x-accel-buffering'), 'no');
        assert.equal(stream.headers.get('transfer-encoding'), null);
        const ws = track(await connectClient(app.wsUrl));
        const texts: string[] = [];
        ws.ws.on('message', (data) => texts.push(String(data)));
        await sessionsOpen(app, 2);
        assert.deepEqual(app.push.stats().sessionsByTransport, { sse: 1, websocket: 1 });
        assert.deepEqual(
          app.push
            .sessions()
            .map((s) => s.transportName)
            .sort(),
          ['sse', 'websocket'],
        );
        // A line break held in an entity string is escaped; one of the publisher's raw JSON
        // would be whitespace: both must come out as one JSON value.
        await publish(app, task(1, { text: 'line\nbreak' }), task(2));
        await stream.waitForEvents(2);
        await waitFor(() => texts.length === 2, { timeout: 5000, message: 'WebSocket events' });
        assert.deepEqual(
          stream.events.map((e) => e.data),
          texts,
          'the data of each SSE event is the WebSocket JSON frame',
        );
        assert.equal(stream.events[0]?.type, 'message');
        assert.equal(stream.events[0]?.id, undefined, 'no id without history');
        assert.equal(
          pushEvents(stream)[0]?.entity && (pushEvents(stream)[0]?.entity as { text: string }).text,
          'line\nbreak',
        );
      }),
    );
  });

  it('works the same on Express 4, mounted on a nested router', async () => {
    await withPushApp({ express: 4, nested: '/push', plugins: [tokenAuth] }, async (app) =>
      withStreams(app, async (open) => {
        assert.equal((await open(app.wsUrl)).status, 401);
        const stream = await open(app.wsUrl, { query: { token: 'good' } });
        assert.equal(stream.status, 200);
        await sessionsOpen(app, 1);
        await publish(app, task(7));
        await stream.waitForEvents(1);
        assert.deepEqual(pushEvents(stream)[0]?.entity, { n: 7 });
      }),
    );
  });

  it('WebSocket JSON, WebSocket MessagePack and SSE sessions receive the same events in the same order', async () => {
    await withPushApp({}, async (app, track) =>
      withStreams(app, async (open) => {
        const sse = await open(app.wsUrl, { config: { identities: { task: [] } } });
        const json = track(await connectClient(app.wsUrl));
        const msgpack = track(await connectClient(app.wsUrl, { query: { encoding: 'msgpack' } }));
        await sessionsOpen(app, 3);
        const events: PushEvent[] = [];
        for (let n = 0; n < 200; n++) {
          events.push(n % 3 === 0 ? { identity: 'user', type: 'update', entity: { n } } : task(n));
        }
        // Several publishes, interleaved with the fan-out's turns.
        for (let i = 0; i < events.length; i += 20) await publish(app, ...events.slice(i, i + 20));
        const tasks = events
          .filter((e) => e.identity === 'task')
          .map((e) => (e.entity as { n: number }).n);
        await sse.waitForEvents(tasks.length);
        await json.waitForEvents(events.length);
        await msgpack.waitForEvents(events.length);
        const ns = (list: Array<{ identity: unknown; entity: unknown }>) =>
          list.filter((e) => e.identity === 'task').map((e) => (e.entity as { n: number }).n);
        assert.deepEqual(ns(pushEvents(sse) as never), tasks);
        assert.deepEqual(ns(json.events), tasks);
        assert.deepEqual(ns(msgpack.events), tasks);
        assert.equal(pushEvents(sse).length, tasks.length, 'the config kept user events out');
      }),
    );
  });

  it('sends a keepalive comment every pingInterval', async () => {
    await withPushApp({ options: { pingInterval: 40 } }, async (app) =>
      withStreams(app, async (open) => {
        const stream = await open(app.wsUrl);
        const first = stream.comments;
        await stream.waitUntil(() => stream.comments >= first + 3, 'three keepalive comments');
        assert.equal(app.push.stats().sessionsOpen, 1, 'a reading client is kept');
      }),
    );
  });

  it('does not go through a compression middleware mounted before the endpoint', async () => {
    await withPushApp({ before: (app) => app.use(compression({ threshold: 0 })) }, async (app) =>
      withStreams(app, async (open) => {
        const stream = await open(app.wsUrl, { headers: { 'accept-encoding': 'gzip' } });
        assert.equal(stream.status, 200);
        assert.equal(stream.headers.get('content-encoding'), null);
        await sessionsOpen(app, 1);
        // One small event reaches the reader while the stream stays open: nothing buffered it.
        await publish(app, task(1));
        await stream.waitForEvents(1);
        assert.deepEqual(pushEvents(stream)[0]?.entity, { n: 1 });
      }),
    );
  });

  it('keeps headers set by middleware before the endpoint (CORS for an EventSource of another origin)', async () => {
    await withPushApp(
      {
        before: (app) =>
          app.use((_req, res, next) => {
            res.setHeader('Access-Control-Allow-Origin', 'https://app.example');
            res.setHeader('Access-Control-Allow-Credentials', 'true');
            next();
          }),
      },
      async (app) =>
        withStreams(app, async (open) => {
          const stream = await open(app.wsUrl);
          assert.equal(stream.headers.get('access-control-allow-origin'), 'https://app.example');
          assert.equal(stream.headers.get('access-control-allow-credentials'), 'true');
          assert.equal(stream.headers.get('content-type'), 'text/event-stream; charset=utf-8');
        }),
    );
  });

  it('without history, a Last-Event-ID is ignored: no recovery event, live events as usual', async () => {
    await withPushApp({}, async (app) =>
      withStreams(app, async (open) => {
        const stream = await open(app.wsUrl, { headers: { 'last-event-id': 'x:1' } });
        await sessionsOpen(app, 1);
        await publish(app, task(1));
        await stream.waitForEvents(1);
        assert.deepEqual(
          stream.events.map((e) => e.type),
          ['message'],
        );
        assert.equal(app.push.stats().recoveries, 0);
      }),
    );
  });

  it('a plain GET that asks for neither still gets 426, naming both', async () => {
    await withPushApp({}, async (app) => {
      const response = await fetch(httpUrl(app.wsUrl));
      assert.equal(response.status, 426);
      const body = (await response.json()) as Array<{ description: string }>;
      assert.match(body[0]?.description ?? '', /text\/event-stream/);
    });
  });
});

describe('SSE: the session phase and its refusals', () => {
  it('takes the token from the query, an Authorization header or a cookie', async () => {
    await withPushApp({ plugins: [tokenAuth] }, async (app) =>
      withStreams(app, async (open) => {
        const byQuery = await open(app.wsUrl, { query: { token: 'good' } });
        const byHeader = await open(app.wsUrl, { headers: { authorization: 'Bearer good' } });
        const byCookie = await open(app.wsUrl, { headers: { cookie: 'tok=good' } });
        assert.deepEqual([byQuery.status, byHeader.status, byCookie.status], [200, 200, 200]);
        await sessionsOpen(app, 3);
        for (const session of app.push.sessions()) assert.deepEqual(session.claims, ['sub=alice']);
      }),
    );
  });

  it('refuses with the same statuses and bodies as a WebSocket handshake, before any stream byte', async () => {
    const limits = sessionLimitPlugin({ maxPerIP: 1 });
    await withPushApp(
      {
        plugins: [tokenAuth, limits],
        options: { allowedOrigins: ['https://ok.example'] },
      },
      async (app) =>
        withStreams(app, async (open) => {
          const cases: Array<{
            query?: Record<string, string>;
            headers?: Record<string, string>;
            status: number;
          }> = [
            { status: 401 },
            { query: { token: 'bad' }, status: 401 },
            { query: { token: 'good' }, headers: { origin: 'https://evil.example' }, status: 403 },
            { query: { token: 'good', encoding: 'application/msgpack' }, status: 415 },
          ];
          for (const c of cases) {
            const stream = await open(app.wsUrl, c);
            assert.equal(stream.status, c.status, JSON.stringify(c));
            assert.match(stream.headers.get('content-type') ?? '', /^application\/json/);
            assert.equal(stream.events.length, 0);
            // MessagePack is a WebSocket's to ask for: only SSE refuses it.
            if (c.status === 415) continue;
            const ws = await expectRefusal(app.wsUrl, c);
            assert.equal(ws.status, c.status);
            assert.deepEqual(stream.body, ws.body, 'the same error body');
          }
          // A session limit counts SSE sessions as any other.
          const first = await open(app.wsUrl, { query: { token: 'good' } });
          assert.equal(first.status, 200);
          await sessionsOpen(app, 1);
          const second = await open(app.wsUrl, { query: { token: 'good' } });
          assert.equal(second.status, 429);
          const refused = app.push.stats().sessionsRefused;
          assert.equal(refused[429], 1);
          assert.equal(refused[401], 4);
        }),
    );
  });

  it('an invalid config is a 400 with the invalid-config error body; a valid one filters', async () => {
    await withPushApp({ options: { maxPushConfigBytes: 8192 } }, async (app) =>
      withStreams(app, async (open) => {
        for (const config of [
          'not json',
          JSON.stringify({ identities: 3 }),
          JSON.stringify({ identities: { task: [] }, filters: { task: 'n ==' } }),
          JSON.stringify({ identities: { ['x'.repeat(9000)]: [] } }),
        ]) {
          const stream = await open(app.wsUrl, { query: { config } });
          assert.equal(stream.status, 400, config.slice(0, 40));
          const [error] = stream.body as Array<{ code: number; title: string }>;
          assert.equal(error?.code, 400);
          assert.equal(error?.title, 'Bad Request');
        }
        assert.equal(app.push.stats().invalidConfigs, 4);
        const stream = await open(app.wsUrl, {
          config: { identities: { task: [] }, filters: { task: 'n > 1' } },
        });
        assert.equal(stream.status, 200);
        await sessionsOpen(app, 1);
        await publish(
          app,
          task(1),
          { identity: 'user', type: 'create', entity: { n: 5 } },
          task(2),
        );
        await stream.waitForEvents(1);
        await publish(app, task(3));
        await stream.waitForEvents(2);
        assert.deepEqual(
          pushEvents(stream).map((e) => (e.entity as { n: number }).n),
          [2, 3],
        );
      }),
    );
  });

  it('a session phase past sessionTimeout is refused with 503, as a handshake is', async () => {
    const stuck: Plugin = {
      session: () => new Promise<void>(() => undefined),
    };
    await withPushApp({ plugins: [stuck], options: { sessionTimeout: 100 } }, async (app) => {
      const stream = await openEventStream(app.wsUrl);
      assert.equal(stream.status, 503);
      const [error] = stream.body as Array<{ code: number; description: string }>;
      assert.equal(error?.code, 503);
      assert.match(error?.description ?? '', /timed out/);
      assert.equal(app.push.stats().sessionsRefused[503], 1);
    });
  });

  it('a client that leaves during a slow session phase is counted as abandoned, not as a session', async () => {
    const entered = deferred<void>();
    const release = deferred<void>();
    const slow: Plugin = {
      async session(_ctx, next) {
        entered.resolve();
        await release.promise;
        await next();
      },
    };
    await withPushApp({ plugins: [slow] }, async (app) => {
      const socket = connect(Number(new URL(app.url).port), '127.0.0.1');
      await once(socket, 'connect');
      socket.write(`GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n`);
      await withTimeout(entered.promise, 5000, 'session phase entered');
      socket.destroy();
      await waitFor(() => app.push.stats().sessionsAbandoned === 1, {
        timeout: 5000,
        message: 'abandoned',
      });
      release.resolve();
      assert.equal(app.push.stats().sessionsAccepted, 0);
      assert.equal(app.push.stats().sessionsOpen, 0);
    });
  });
});

describe('SSE: recovery', () => {
  const history = (): LocalPubSub => new LocalPubSub({ history: { maxEvents: 1000 } });

  it('sets id to the position and resumes by Last-Event-ID, exactly once and in order', async () => {
    await withPushApp({ pubsub: history() }, async (app) =>
      withStreams(app, async (open) => {
        const first = await open(app.wsUrl);
        await sessionsOpen(app, 1);
        await publish(app, ...Array.from({ length: 10 }, (_, n) => task(n)));
        await first.waitForEvents(10);
        for (const event of first.events) {
          assert.equal(event.id, (JSON.parse(event.data) as { position: string }).position);
        }
        const cut = first.events[4]?.id as string;
        first.close();
        await sessionsOpen(app, 0);
        await publish(app, ...Array.from({ length: 5 }, (_, n) => task(10 + n)));
        // The browser resends its original URL (whose `since` is older) with the header: the header wins.
        const resumed = await open(app.wsUrl, {
          headers: { 'last-event-id': cut },
          query: { since: first.events[0]?.id as string },
        });
        await resumed.waitUntil(
          () => resumed.events.some((e) => e.type === 'recovery'),
          'the recovery event',
        );
        const recovery = resumed.events.find((e) => e.type === 'recovery');
        const report = (
          JSON.parse(recovery?.data ?? '{}') as {
            recovery: { recovered: boolean; position: string };
          }
        ).recovery;
        assert.equal(report.recovered, true);
        assert.equal(recovery?.id, report.position);
        await publish(app, task(99));
        await resumed.waitForEvents(12);
        assert.deepEqual(
          pushEvents(resumed).map((e) => (e.entity as { n: number }).n),
          [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 99],
        );
        assert.equal(app.push.stats().recoveries, 1);
      }),
    );
  });

  it('lastEventId in the query resumes as the header does; an unknown position answers recovered: false with the head as id', async () => {
    await withPushApp({ pubsub: history() }, async (app) =>
      withStreams(app, async (open) => {
        const first = await open(app.wsUrl);
        await sessionsOpen(app, 1);
        await publish(app, task(1), task(2));
        await first.waitForEvents(2);
        const byQuery = await open(app.wsUrl, {
          query: { lastEventId: first.events[0]?.id as string },
        });
        await byQuery.waitForEvents(2);
        assert.equal(byQuery.events[1]?.type, 'recovery');
        assert.deepEqual(
          pushEvents(byQuery).map((e) => (e.entity as { n: number }).n),
          [2],
        );
        const unknown = await open(app.wsUrl, { headers: { 'last-event-id': 'otherepoch:7' } });
        await unknown.waitForEvents(1);
        const [event] = unknown.events;
        assert.equal(event?.type, 'recovery');
        const report = (
          JSON.parse(event?.data ?? '{}') as { recovery: { recovered: boolean; position: string } }
        ).recovery;
        assert.equal(report.recovered, false);
        assert.equal(event?.id, first.events[1]?.id, 'the id is where the session stands now');
      }),
    );
  });

  it('a WebSocket and an SSE session resumed from the same position get the same events', async () => {
    await withPushApp({ pubsub: history() }, async (app, track) =>
      withStreams(app, async (open) => {
        const first = await open(app.wsUrl);
        await sessionsOpen(app, 1);
        await publish(app, ...Array.from({ length: 20 }, (_, n) => task(n)));
        await first.waitForEvents(20);
        const since = first.events[9]?.id as string;
        const sse = await open(app.wsUrl, { headers: { 'last-event-id': since } });
        const ws = track(await connectClient(app.wsUrl, { query: { since } }));
        ws.sendConfig({});
        await sse.waitForEvents(11);
        await ws.waitForEvents(11);
        assert.deepEqual(
          pushEvents(sse).map((e) => (e.entity as { n: number }).n),
          ws.events.filter((e) => e.identity === 'task').map((e) => (e.entity as { n: number }).n),
        );
      }),
    );
  });
});

describe('SSE: bounds and shutdown', () => {
  /** A client that sends the request and never reads: its socket's receive buffer fills. */
  async function stalledReader(app: PushApp): Promise<Socket> {
    const socket = connect({ port: Number(new URL(app.url).port), host: '127.0.0.1' });
    await once(socket, 'connect');
    socket.pause();
    socket.write(`GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n`);
    return socket;
  }
  const big = (n: number): PushEvent => task(n, { pad: 'x'.repeat(64 * 1024) });

  it('drops events for a slow SSE consumer (default policy) while a reading one gets everything', async () => {
    await withPushApp({ options: { maxBufferedBytes: 256 * 1024 } }, async (app) =>
      withStreams(app, async (open) => {
        const stalled = await stalledReader(app);
        const reader = await open(app.wsUrl);
        await sessionsOpen(app, 2);
        let sent = 0;
        // Until the stalled session's buffers (the kernel's, then ours) are full and it drops.
        while (app.push.stats().dropped === 0) {
          await publish(app, big(sent++), big(sent++));
          await reader.waitForEvents(sent, 10_000);
          if (sent > 2000) assert.fail('no drop after 2000 events of 64 KiB');
        }
        const slow = app.push.sessions().find((s) => s.droppedEvents > 0);
        assert.ok(slow, 'the stalled session dropped events');
        assert.equal(app.push.stats().sessionsOpen, 2, 'drop policy: the slow session stays');
        stalled.destroy();
      }),
    );
  });

  it("closes a slow SSE consumer with policy 'close', recorded as 1008", async () => {
    await withPushApp(
      { options: { maxBufferedBytes: 256 * 1024, slowConsumerPolicy: 'close' } },
      async (app) => {
        const stalled = await stalledReader(app);
        await sessionsOpen(app, 1);
        let sent = 0;
        while (app.push.stats().sessionsOpen === 1) {
          await publish(app, big(sent++));
          await new Promise<void>((resolve) => setImmediate(resolve));
          if (sent > 2000) assert.fail('still open after 2000 events of 64 KiB');
        }
        await waitFor(() => app.push.stats().sessionsClosed[1008] === 1, {
          timeout: 5000,
          message: 'closed with 1008',
        });
        stalled.destroy();
      },
    );
  });

  it('ends a stream whose keepalive cannot leave the buffer (a peer that stopped reading)', async () => {
    await withPushApp(
      { options: { maxBufferedBytes: 64 * 1024, pingInterval: 50 } },
      async (app) => {
        const stalled = await stalledReader(app);
        await sessionsOpen(app, 1);
        let sent = 0;
        // Fill the kernel's buffers and ours, so that the next keepalive waits in ours.
        while (app.push.stats().dropped === 0 && app.push.stats().sessionsOpen === 1) {
          await publish(app, big(sent++));
          await new Promise<void>((resolve) => setImmediate(resolve));
          if (sent > 2000) assert.fail('no drop after 2000 events of 64 KiB');
        }
        await sessionsOpen(app, 0);
        assert.equal(app.push.stats().sessionsClosed[1006], 1);
        stalled.destroy();
      },
    );
  });

  it('close() ends every stream with a close event 1001 and refuses new ones with 503', async () => {
    const app = await startPushApp();
    const stream = await openEventStream(app.wsUrl);
    const ws = new WebSocket(app.wsUrl);
    await once(ws, 'open');
    await sessionsOpen(app, 2);
    const closing = app.push.close();
    const [code] = (await once(ws, 'close')) as [number];
    await withTimeout(stream.ended, 5000, 'the stream ended');
    const last = stream.events.at(-1);
    assert.equal(last?.type, 'close');
    assert.deepEqual(JSON.parse(last?.data ?? '{}'), {
      code: 1001,
      reason: 'server shutting down',
    });
    assert.equal(code, 1001);
    await closing;
    const refused = await openEventStream(app.wsUrl);
    assert.equal(refused.status, 503);
    assert.deepEqual(app.push.stats().sessionsByTransport, { sse: 0, websocket: 0 });
    assert.equal(app.push.stats().sessionsClosed[1001], 2);
    await app.close();
  });

  it('a client that aborts its stream is unregistered; session.close() from a plugin sends the close event', async () => {
    let started: ((s: import('../../lib/index.js').PushSession) => void) | undefined;
    const closer: Plugin = {
      onSessionStart(session) {
        started?.(session);
      },
    };
    await withPushApp({ plugins: [closer] }, async (app) =>
      withStreams(app, async (open) => {
        const aborted = await open(app.wsUrl);
        await sessionsOpen(app, 1);
        aborted.close();
        await sessionsOpen(app, 0);
        const got = deferred<import('../../lib/index.js').PushSession>();
        started = (s) => got.resolve(s);
        const stream = await open(app.wsUrl);
        const session = await withTimeout(got.promise, 5000, 'session started');
        assert.equal(session.transportName, 'sse');
        session.close(4001, 'go away');
        await withTimeout(stream.ended, 5000, 'the stream ended');
        assert.deepEqual(JSON.parse(stream.events.at(-1)?.data ?? '{}'), {
          code: 4001,
          reason: 'go away',
        });
        await waitFor(() => app.push.stats().sessionsClosed[4001] === 1, {
          timeout: 5000,
          message: 'closed 4001',
        });
      }),
    );
  });
});
