/**
 * pushwire/client over Server-Sent Events (PROTOCOL.md section 10) against
 * real servers: Express, express-ws and pushwire on port 0 (or on a fixed
 * free port, to restart on it), real sockets, the client's `fetch`. The
 * `auto` transport is tested behind small real HTTP proxies that break the
 * WebSocket upgrade the two ways proxies do: by dropping it, and by
 * stripping `Upgrade` and forwarding a plain GET.
 *
 * Nothing sleeps. A test waits for the client event that proves its point,
 * with a deadline. To prove an event was NOT delivered, a marker is
 * published after it: events of one publisher arrive in order, so the
 * filtered one would have arrived first. To prove an event was replayed
 * rather than delivered live, it is published while no server listens.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http, { type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { describe, it } from 'node:test';
import express from 'express';
import expressWs from 'express-ws';
import {
  authPlugin,
  initPlugin,
  LocalPubSub,
  pushMiddleware,
  type Plugin,
  type PushMiddleware,
} from '../../lib/index.js';
import {
  createPushClient,
  PushConfigError,
  PushRefusedError,
  type PushClient,
  type PushClientEventMap,
  type ReceivedEvent,
  type Scheduler,
} from '../../client/node.js';
import { createPushClient as createBrowserClient } from '../../client/index.js';
import { sseParser } from '../../client/sse.js';
import { freePort } from '../helpers/brokers.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { clientFixtures, next } from '../helpers/push-client.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

/** How long a stream may take to open, an event to arrive, a reconnect to happen. */
const WAIT_MS = 5_000;
const HISTORY = { maxEvents: 1_000 };

// The client must never leave a rejection unhandled, whatever the server does to it.
failOnUnhandledRejections();

const { app, client, track, onClose } = clientFixtures({ transport: 'sse' });

/** Everything the client emits, in order, as `type` or `type:ID` for events. */
function record(c: PushClient): {
  log: string[];
  events: ReceivedEvent[];
  until(item: string): Promise<void>;
} {
  const log: string[] = [];
  const events: ReceivedEvent[] = [];
  c.on('event', (event) => {
    events.push(event);
    log.push(`event:${(event.entity as { ID: string }).ID}`);
  });
  c.on('recovery', (info) => log.push(`recovery:${String(info.recovered)}`));
  return {
    log,
    events,
    until: (item) =>
      waitFor(() => log.includes(item), {
        timeout: WAIT_MS,
        message: `never got ${item}; got ${log.join(', ')}`,
      }),
  };
}

const task = (ID: string, type = 'create') => ({ identity: 'task', type, entity: { ID } });

/** Waits until the server holds one session, over `transport`, with `config`. */
async function serverHas(
  push: PushMiddleware,
  transport: 'sse' | 'websocket',
  config: unknown,
): Promise<void> {
  await waitFor(
    () => {
      const sessions = push.sessions();
      return (
        sessions.length === 1 &&
        sessions[0]?.transportName === transport &&
        JSON.stringify(sessions[0].pushConfig?.input ?? null) === JSON.stringify(config)
      );
    },
    {
      timeout: WAIT_MS,
      message: `the server never held one ${transport} session with ${JSON.stringify(config)}`,
    },
  );
}

/** A push server on `port` over `pubsub`; `beforeListen` runs once it is subscribed. */
async function serverOn(
  port: number,
  pubsub: LocalPubSub,
  beforeListen?: (push: PushMiddleware) => Promise<void>,
): Promise<{ push: PushMiddleware; close(): Promise<void> }> {
  const application = express();
  const ews = expressWs(application);
  const push = pushMiddleware(pubsub, 'events');
  application.use('/api', push);
  push.attach(ews);
  await push.ready;
  await beforeListen?.(push);
  const server = application.listen(port, '127.0.0.1') as Server;
  await once(server, 'listening');
  const close = async (): Promise<void> => {
    await push.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  onClose(close);
  return { push, close };
}

/**
 * A reverse proxy to `target` that forwards plain requests (streaming the
 * answer, as an SSE-friendly proxy does) and breaks upgrades: `drop`
 * destroys the connection of an upgrade request, `strip` forwards it as a
 * plain GET without `Upgrade`/`Connection` and relays the answer.
 */
async function proxy(target: string, upgrades: 'drop' | 'strip'): Promise<string> {
  const { hostname, port } = new URL(target);
  const forward = (req: IncomingMessage, answer: (res: IncomingMessage) => void) => {
    const headers = { ...req.headers };
    delete headers.upgrade;
    delete headers.connection;
    const upstream = http.request({ hostname, port, path: req.url, method: req.method, headers });
    upstream.on('response', answer);
    upstream.on('error', () => req.destroy());
    req.pipe(upstream);
  };
  const server = http.createServer((req, res) => {
    forward(req, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      res.flushHeaders();
      up.pipe(res);
      res.on('close', () => up.destroy());
    });
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    socket.on('error', () => undefined);
    if (upgrades === 'drop') return socket.destroy();
    forward(req, (up) => {
      const lines = [`HTTP/1.1 ${up.statusCode ?? 502} ${up.statusMessage ?? ''}`];
      for (const [name, value] of Object.entries(up.headers)) {
        if (name !== 'transfer-encoding' && name !== 'connection') lines.push(`${name}: ${value}`);
      }
      socket.write(`${lines.join('\r\n')}\r\nConnection: close\r\n\r\n`);
      up.pipe(socket);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onClose(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe('the event-stream parser (WHATWG server-sent events)', () => {
  /** Feeds `chunks` to a parser and returns what it dispatched, as `type|data`. */
  function parse(...chunks: string[]): string[] {
    const out: string[] = [];
    const feed = sseParser((type, data) => out.push(`${type}|${data}`));
    for (const chunk of chunks) feed(chunk);
    return out;
  }

  it('joins data lines with \n, takes the event type, skips comments and ids', () => {
    assert.deepEqual(parse(':\n\nid: 1\ndata: {"a":\ndata:1}\n\nevent: close\ndata: x\n\n'), [
      'message|{"a":\n1}',
      'close|x',
    ]);
  });

  it('ends lines at CRLF, LF or CR, a CRLF split across chunks included', () => {
    assert.deepEqual(parse('data: a\r', '\n\r', '\ndata: b\r\r', 'data: c\n', '\n'), [
      'message|a',
      'message|b',
      'message|c',
    ]);
  });

  it('keeps a field cut across chunks, and strips only one leading space', () => {
    assert.deepEqual(parse('da', 'ta:  two', ' spaces\n', '\n'), ['message| two spaces']);
  });

  it('does not dispatch an event without data, nor one not yet ended by a blank line', () => {
    assert.deepEqual(parse('event: recovery\n\n', 'data: pending\n'), []);
    // A field without a colon is the field with an empty value: `data` alone is an empty line.
    assert.deepEqual(parse('data\n\n'), ['message|']);
  });
});

describe('events over SSE', () => {
  it('decodes events, with their position when the server keeps history', async () => {
    const server = await app({ pubsub: new LocalPubSub({ history: HISTORY }) });
    const c = client(server.wsUrl);
    const open = await next(c, 'open');
    assert.deepEqual(open, { retries: 0, transport: 'sse' });
    assert.equal(c.transport, 'sse');
    await serverHas(server.push, 'sse', null);
    const seen = record(c);
    // Later than the session's start, or the server would not send it (section 5, step 2).
    const timestamp = new Date(Date.now() + 60_000);
    await server.push.publish({
      identity: 'task',
      type: 'create',
      entity: { ID: 'a', text: 'two\nlines', n: 3.5 },
      timestamp,
    });
    await seen.until('event:a');
    const [event] = seen.events;
    assert.deepEqual(event?.entity, { ID: 'a', text: 'two\nlines', n: 3.5 });
    assert.equal(event?.timestamp.toISOString(), timestamp.toISOString());
    assert.match(event?.position ?? '', /^.+:\d+$/);
    assert.equal(c.position, event?.position);
  });

  it('the config travels in the URL: the server filters with it', async () => {
    const server = await app();
    const c = client(server.wsUrl);
    const config = { identities: { task: ['create'] }, filters: { task: 'ID != "filtered"' } };
    c.setConfig(config);
    await next(c, 'open');
    await serverHas(server.push, 'sse', config);
    const seen = record(c);
    await server.push.publish(
      task('filtered'),
      task('deleted', 'delete'),
      { identity: 'user', type: 'create', entity: { ID: 'user' } },
      task('marker'),
    );
    await seen.until('event:marker');
    assert.deepEqual(seen.log, ['event:marker']);
  });

  it('passes the headers option, in the browser entry too (fetch sends them)', async () => {
    const tokens: string[] = [];
    const server = await app({
      plugins: [
        authPlugin((session) => {
          tokens.push(session.header('authorization') ?? '');
          return session.header('authorization') === 'Bearer good' ? 'ok' : 'ko';
        }),
      ],
    });
    // Node 20 has no global WebSocket: the browser entry needs none for SSE.
    const c = createBrowserClient(server.url + '/api/events', {
      transport: 'sse',
      headers: () => ({ Authorization: 'Bearer good' }),
    });
    track(c);
    await next(c, 'open');
    assert.deepEqual(tokens, ['Bearer good']);
  });

  it('close() ends the stream: the server ends the session', async () => {
    const server = await app();
    const c = client(server.wsUrl);
    await next(c, 'open');
    await serverHas(server.push, 'sse', null);
    const closed = next(c, 'close');
    c.close();
    assert.deepEqual(await closed, { code: 1000, reason: '', opened: true, willReconnect: false });
    assert.equal(c.state, 'closed');
    await waitFor(() => server.push.sessions().length === 0, {
      timeout: WAIT_MS,
      message: 'the server kept the session of a closed stream',
    });
  });
});

describe('creation', () => {
  it('msgpack over SSE (or auto) is a TypeError: event streams carry JSON only', () => {
    for (const transport of ['sse', 'auto'] as const) {
      assert.throws(
        () => createPushClient('ws://127.0.0.1:1/api/events', { transport, encoding: 'msgpack' }),
        (error: unknown) => error instanceof TypeError && /JSON only/.test(error.message),
      );
    }
    assert.throws(
      () => createPushClient('ws://127.0.0.1:1/api/events', { transport: 'udp' as never }),
      TypeError,
    );
  });

  it("the browser entry still refuses headers over 'websocket' and 'auto'", () => {
    for (const transport of ['websocket', 'auto'] as const) {
      assert.throws(
        () =>
          createBrowserClient('ws://127.0.0.1:1/api/events', {
            transport,
            headers: {},
            WebSocket: class {} as never,
          }),
        TypeError,
      );
    }
  });
});

describe('refusals over SSE: the status and the body, as over a WebSocket', () => {
  for (const [status, plugin] of [
    [401, authPlugin(() => 'ko')],
    [403, initPlugin(() => false)],
  ] as Array<[number, Plugin]>) {
    it(`${status}: an error and 'refused' with the status and the JSON body, no reconnect`, async () => {
      const server = await app({ plugins: [plugin] });
      const c = client(server.wsUrl);
      const errors: Error[] = [];
      c.on('error', (error) => errors.push(error));
      c.on('reconnecting', () => assert.fail('reconnected after a refusal'));
      const close = next(c, 'close');
      const refused = await next(c, 'refused');
      assert.equal(refused.status, status);
      assert.equal(refused.errors[0]?.code, status);
      assert.equal(refused.errors[0]?.title, status === 401 ? 'Unauthorized' : 'Forbidden');
      assert.deepEqual(refused.body, refused.errors);
      assert.deepEqual(await close, {
        code: 1006,
        reason: '',
        opened: false,
        willReconnect: false,
      });
      assert.deepEqual(errors, [refused]);
      assert.equal(c.state, 'refused');
      await assert.rejects(c.events().next(), PushRefusedError);
    });
  }

  it("an invalid config is a 400: a PushConfigError with the server's error; setConfig fixes it at once", async () => {
    const server = await app();
    const c = client(server.wsUrl, { minDelay: 60_000, maxDelay: 60_000 });
    c.setConfig({ identities: { task: [] }, filters: { task: 'ID ==' } });
    const retry = next(c, 'reconnecting');
    const error = await next(c, 'error');
    assert.ok(error instanceof PushConfigError, String(error));
    assert.equal(error.error?.code, 400);
    assert.match(error.error?.description ?? '', /filters\.task/);
    await retry;
    // The retry waits a minute; a valid config does not.
    const config = { identities: { task: [] } };
    c.setConfig(config);
    await next(c, 'open');
    await serverHas(server.push, 'sse', config);
  });
});

describe('setConfig over SSE', () => {
  it('opens a new stream with the new config and since the last position; the old one ends', async () => {
    const server = await app({ pubsub: new LocalPubSub({ history: HISTORY }) });
    const c = client(server.wsUrl);
    const seen = record(c);
    const first = { identities: { task: [] } };
    c.setConfig(first);
    await next(c, 'open');
    await serverHas(server.push, 'sse', first);
    await server.push.publish(task('before'));
    await seen.until('event:before');

    const second = { identities: { user: [] } };
    const closed = next(c, 'close');
    const reopened = next(c, 'open');
    c.setConfig(second);
    assert.deepEqual(await closed, { code: 1000, reason: '', opened: true, willReconnect: true });
    await reopened;
    await serverHas(server.push, 'sse', second);
    // The new stream resumed after `before`: nothing replayed, and the seam is announced.
    await seen.until('recovery:true');
    await server.push.publish(task('filtered'), {
      identity: 'user',
      type: 'create',
      entity: { ID: 'user' },
    });
    await seen.until('event:user');
    assert.deepEqual(seen.log, ['event:before', 'recovery:true', 'event:user']);
  });
});

describe('reconnecting over SSE', () => {
  it('after the server restarts (event: close 1001), resumes: what was published meanwhile is replayed', async () => {
    // One bus for both servers of this process, so that its history outlives the first one.
    const bus = new LocalPubSub({ history: HISTORY });
    const port = await freePort();
    const down = await serverOn(port, bus);
    const c = client(`http://127.0.0.1:${port}/api/events`, { minDelay: 10, maxDelay: 50 });
    const seen = record(c);
    const config = { identities: { task: ['create'] } };
    c.setConfig(config);
    await next(c, 'open');
    await serverHas(down.push, 'sse', config);
    await down.push.publish(task('live'));
    await seen.until('event:live');

    const shutdown = next(c, 'close');
    const failed = deferred<void>();
    const off = c.on('close', (info) => {
      if (!info.opened) failed.resolve();
    });
    await down.close();
    // The close the server sent in the stream, as a WebSocket session gets it.
    assert.deepEqual(await shutdown, {
      code: 1001,
      reason: 'server shutting down',
      opened: true,
      willReconnect: true,
    });
    await withTimeout(failed.promise, WAIT_MS, 'no failed attempt while the server was down');
    off();

    // Published while no server listens: only a replay can deliver them.
    const up = await serverOn(port, bus, (push) =>
      push.publish(task('missed-1'), task('filtered', 'delete'), task('missed-2')),
    );
    await seen.until('recovery:true');
    await up.push.publish(task('after'));
    await seen.until('event:after');
    assert.deepEqual(seen.log, [
      'event:live',
      'event:missed-1',
      'event:missed-2',
      'recovery:true',
      'event:after',
    ]);
    await serverHas(up.push, 'sse', config);
  });
});

describe('the close a server sends in the stream', () => {
  it('1008 by policy reaches the client as the close code; it reconnects, calling the token function again', async () => {
    const tokens: string[] = [];
    const server = await app({
      plugins: [
        authPlugin((session) => {
          tokens.push(session.token);
          return 'ok';
        }),
      ],
    });
    let issued = 0;
    const c = client(server.wsUrl, { token: () => `t${++issued}`, minDelay: 10, maxDelay: 50 });
    await next(c, 'open');
    await serverHas(server.push, 'sse', null);
    const closed = next(c, 'close');
    const reopened = next(c, 'open');
    server.push.sessions()[0]?.close(1008, 'slow consumer');
    assert.deepEqual(await closed, {
      code: 1008,
      reason: 'slow consumer',
      opened: true,
      willReconnect: true,
    });
    await reopened;
    assert.deepEqual(tokens, ['t1', 't2']);
  });
});

describe("transport 'auto'", () => {
  it('stays on the WebSocket when one opens', async () => {
    const server = await app();
    const c = client(server.wsUrl, { transport: 'auto' });
    assert.equal((await next(c, 'open')).transport, 'websocket');
    assert.equal(c.transport, 'websocket');
    await serverHas(server.push, 'websocket', null);
  });

  for (const upgrades of ['drop', 'strip'] as const) {
    it(`falls back to SSE behind a proxy that ${upgrades === 'drop' ? 'drops upgrades' : 'strips Upgrade (the server answers 426)'}; stays there`, async () => {
      const server = await app({ pubsub: new LocalPubSub({ history: HISTORY }) });
      const front = await proxy(server.url, upgrades);
      const c = client(`${front}/api/events`, { transport: 'auto', minDelay: 10, maxDelay: 50 });
      const closes: PushClientEventMap['close'][] = [];
      c.on('close', (info) => closes.push(info));
      c.on('error', (error) => assert.fail(`an error while falling back: ${error.message}`));
      const seen = record(c);
      const config = { identities: { task: [] } };
      c.setConfig(config);
      assert.equal((await next(c, 'open')).transport, 'sse');
      assert.deepEqual(closes, [{ code: 1006, reason: '', opened: false, willReconnect: true }]);
      await serverHas(server.push, 'sse', config);
      await server.push.publish(task('through-the-proxy'));
      await seen.until('event:through-the-proxy');

      // A drop the server caused: the client comes back over SSE, without trying WebSocket again.
      const reopened = next(c, 'open');
      for (const session of server.push.sessions()) session.close(1001, 'go away');
      assert.equal((await reopened).transport, 'sse');
      assert.equal(closes.length, 2);
      assert.equal(closes[1]?.code, 1001);
      await serverHas(server.push, 'sse', config);
    });
  }

  it('a server down: WebSocket, then SSE, fail; the next attempt starts with WebSocket again', async () => {
    // Timers run when the test says, so that the server comes up between two attempts.
    const timers: Array<() => void> = [];
    const scheduler: Scheduler = {
      now: () => Date.now(),
      setTimeout: (callback) => timers.push(callback),
      clearTimeout: () => undefined,
    };
    const port = await freePort();
    const c = client(`http://127.0.0.1:${port}/api/events`, { transport: 'auto', scheduler });
    const closes: string[] = [];
    c.on('close', (info) => closes.push(`${c.transport}:${info.code}:${String(info.opened)}`));
    await next(c, 'reconnecting');
    // The WebSocket failed and was followed at once by a stream, which failed too; `transport`
    // already names the next attempt's when `close` is emitted.
    assert.deepEqual(closes, ['sse:1006:false', 'websocket:1006:false']);
    assert.equal(c.transport, 'websocket', 'the next attempt is a WebSocket');
    const up = await serverOn(port, new LocalPubSub());
    const open = next(c, 'open');
    timers.shift()?.();
    assert.equal((await open).transport, 'websocket');
    await serverHas(up.push, 'websocket', null);
  });

  it('a refusal the WebSocket could see is a refusal, not a reason to fall back', async () => {
    const server = await app({ plugins: [authPlugin(() => 'ko')] });
    const c = client(server.wsUrl, { transport: 'auto' });
    const refused = await next(c, 'refused');
    assert.equal(refused.status, 401);
    assert.equal(c.transport, 'websocket');
  });
});
