/**
 * Server-Sent Events (PROTOCOL.md section 10) in a real browser: headless
 * Chromium (/usr/bin/chromium, driven by playwright-core) against a push
 * server in this process, on a free port, serving a blank page and the
 * client bundle. The page uses the browser's own `EventSource`, `fetch`,
 * and pushwire/client's SSE transport.
 *
 * The server is restarted on the same port over the same LocalPubSub: the
 * bus, and so its history, outlives the HTTP server and the push
 * middleware, as a Redis or JetStream history outlives a process. Events
 * published while no server listens can only reach the page by a replay.
 *
 * Nothing sleeps: every wait is on the page's state or a server's, with a
 * deadline. Console errors fail the tests, except the browser's own lines
 * for the failures a test causes on purpose, which each test names.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import express from 'express';
import expressWs from 'express-ws';
import type { BrowserContext, Page } from 'playwright-core';
import {
  authPlugin,
  initPlugin,
  LocalPubSub,
  pushMiddleware,
  type PushMiddleware,
} from '../../lib/index.js';
import { bundleClient } from '../../scripts/build-client.js';
import {
  assertConsole,
  launchChromium,
  openPage as openBlankPage,
  RESULTS,
  type Chromium,
  type ConsoleError,
} from '../helpers/browser.js';
import { freePort } from '../helpers/brokers.js';
import { waitFor } from '../helpers/wait.js';

/** How long the page may take to connect, or an event to show. */
const UI_MS = 10_000;
/** How long an EventSource may take to come back: Chromium retries every 3 s by default. */
const RECONNECT_MS = 20_000;

/** A push server on a fixed port, restartable, over a bus that outlives it. */
class SseServer {
  readonly port: number;
  readonly url: string;
  readonly bus = new LocalPubSub({ history: { maxEvents: 1_000 } });
  /** The `Last-Event-ID` header of every session request, in order (`''` when absent). */
  readonly lastEventIds: string[] = [];
  push: PushMiddleware | undefined;
  #server: Server | undefined;
  #bundle: Awaited<ReturnType<typeof bundleClient>> | undefined;

  /** Destroy every upgrade request's connection, as a proxy that cannot carry WebSockets does. */
  readonly #dropUpgrades: boolean;

  constructor(port: number, options: { dropUpgrades?: boolean } = {}) {
    this.port = port;
    this.#dropUpgrades = options.dropUpgrades ?? false;
    this.url = `http://127.0.0.1:${port}`;
  }

  /** Starts serving; `beforeListen` runs once the new middleware is subscribed, before any request. */
  async start(beforeListen?: (push: PushMiddleware) => Promise<void>): Promise<void> {
    this.#bundle ??= await bundleClient();
    const bundle = this.#bundle;
    const app = express();
    const ews = expressWs(app);
    const push = pushMiddleware(this.bus, 'events', [
      authPlugin((session) => (session.token === 'bad' ? 'ko' : 'ok')),
      initPlugin((session) => {
        this.lastEventIds.push(session.header('last-event-id') ?? '');
        return true;
      }),
    ]);
    app.get('/', (_req, res) => {
      res
        .type('html')
        .send(
          '<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>sse</title>',
        );
    });
    app.get('/pushwire-client.min.js', (_req, res) => {
      res.type('text/javascript').send(Buffer.from(bundle.code));
    });
    app.use('/api', push);
    push.attach(ews);
    await push.ready;
    await beforeListen?.(push);
    this.push = push;
    const server = app.listen(this.port, '127.0.0.1') as Server;
    await once(server, 'listening');
    if (this.#dropUpgrades) {
      server.removeAllListeners('upgrade');
      server.on('upgrade', (_req, socket: Socket) => socket.destroy());
    }
    this.#server = server;
  }

  /** Ends the sessions with 1001 (an `event: close` on each stream), then stops listening. */
  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    await this.push?.close();
    if (server === undefined) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** The pages a test opened, closed after it whatever happened: a stream left open would be a session the next test counts. */
const pages: Page[] = [];

/** A page at `url`, with its console errors; closed after the test. */
async function openPage(
  context: BrowserContext,
  url: string,
): Promise<{ page: Page; errors: ConsoleError[] }> {
  const opened = await openBlankPage(context);
  pages.push(opened.page);
  await opened.page.goto(url);
  return opened;
}

/** The page's log (window.seen). */
function pageLog(page: Page): Promise<string[]> {
  return page.evaluate(() => (window as unknown as { seen: string[] }).seen);
}

/** The page's log (window.seen) once it holds `item`. */
async function pageSaw(page: Page, item: string, timeout = UI_MS): Promise<string[]> {
  await page
    .waitForFunction(
      (wanted) => (window as unknown as { seen: string[] }).seen.includes(wanted),
      item,
      {
        timeout,
      },
    )
    .catch(async (error: unknown) => {
      const seen = await pageLog(page);
      throw new Error(`the page never saw ${item}; it saw ${seen.join(', ')}`, { cause: error });
    });
  return pageLog(page);
}

const task = (ID: string, type = 'create') => ({ identity: 'task', type, entity: { ID } });

describe('Server-Sent Events in Chromium', () => {
  let server: SseServer;
  let browser: Chromium;
  let context: BrowserContext;

  before(async () => {
    browser = await launchChromium();
    context = browser.context;
    server = new SseServer(await freePort());
    await server.start();
  });

  afterEach(async () => {
    for (const page of pages.splice(0)) if (!page.isClosed()) await page.close();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  it('an EventSource receives events, and after the server restarts resumes from Last-Event-ID', async () => {
    const { page, errors } = await openPage(context, server.url);
    await page.evaluate(() => {
      const seen: string[] = [];
      (window as unknown as { seen: string[] }).seen = seen;
      const config = JSON.stringify({ identities: { task: ['create'] } });
      const source = new EventSource(`/api/events?config=${encodeURIComponent(config)}`);
      source.onopen = () => seen.push('open');
      source.onmessage = (message: MessageEvent<string>) => {
        const event = JSON.parse(message.data) as { entity: { ID: string }; position: string };
        // The SSE id is the event's position: what the browser sends back as Last-Event-ID.
        (window as unknown as { lastId: string }).lastId = message.lastEventId;
        seen.push(
          `event:${event.entity.ID}`,
          `id:${String(message.lastEventId === event.position)}`,
        );
      };
      source.addEventListener('recovery', (message) => {
        const frame = JSON.parse((message as MessageEvent<string>).data) as {
          recovery: { recovered: boolean };
        };
        seen.push(`recovery:${String(frame.recovery.recovered)}`);
      });
      source.addEventListener('close', (message) => {
        seen.push(
          `close:${(JSON.parse((message as MessageEvent<string>).data) as { code: number }).code}`,
        );
      });
    });
    await pageSaw(page, 'open');
    await server.push?.publish(task('live'), task('filtered', 'delete'));
    await pageSaw(page, 'event:live');

    const lastId = await page.evaluate(() => (window as unknown as { lastId: string }).lastId);
    await server.stop();
    await pageSaw(page, 'close:1001');
    // Published while no server listens: only a replay can bring them to the page.
    await server.start((push) => push.publish(task('missed-1'), task('missed-2')));
    await pageSaw(page, 'recovery:true', RECONNECT_MS);
    await server.push?.publish(task('after'));
    const seen = await pageSaw(page, 'event:after');
    assert.deepEqual(seen, [
      'open',
      'event:live',
      'id:true',
      'close:1001',
      'open',
      'event:missed-1',
      'id:true',
      'event:missed-2',
      'id:true',
      'recovery:true',
      'event:after',
      'id:true',
    ]);
    // The browser resumed by itself, from the position of the last event it had.
    assert.equal(server.lastEventIds[0], '');
    assert.match(lastId, /^.+:\d+$/);
    assert.equal(server.lastEventIds.at(-1), lastId, 'Last-Event-ID: the position of live');
    await page.screenshot({ path: join(RESULTS, 'sse-1-eventsource-resumed.png') });
    // While the server was down, Chromium logged its failed reconnections; nothing else.
    assertConsole(errors, [/^Failed to load resource: net::ERR_CONNECTION_REFUSED$/]);
    await page.close();
  });

  it("a refusal: EventSource sees no status; fetch and pushwire/client's SSE transport see 401 and the body", async () => {
    const { page, errors } = await openPage(context, server.url);
    const result = await page.evaluate(async () => {
      const source = new EventSource('/api/events?token=bad');
      const eventSource = await new Promise<{ type: string; readyState: number }>((resolve) => {
        source.onerror = (event) => resolve({ type: event.type, readyState: source.readyState });
      });
      const response = await fetch('/api/events?token=bad', {
        headers: { Accept: 'text/event-stream' },
      });
      const fetched = {
        status: response.status,
        contentType: response.headers.get('content-type'),
        body: (await response.json()) as unknown,
      };
      const bundle = '/pushwire-client.min.js';
      const { createPushClient } = (await import(bundle)) as typeof import('../../client/index.js');
      const client = createPushClient('/api/events', { transport: 'sse', token: 'bad' });
      const refused = await new Promise<{
        status: number;
        title: string | undefined;
        state: string;
      }>((resolve) => {
        client.on('refused', (error) =>
          resolve({ status: error.status, title: error.errors[0]?.title, state: client.state }),
        );
      });
      return { eventSource, fetched, refused };
    });
    // A plain Event with the source CLOSED: a non-200 answer ends an EventSource for good.
    assert.deepEqual(result.eventSource, { type: 'error', readyState: 2 });
    assert.equal(result.fetched.status, 401);
    assert.match(result.fetched.contentType ?? '', /^application\/json/);
    assert.deepEqual(
      (result.fetched.body as Array<{ code: number; title: string }>).map((e) => [e.code, e.title]),
      [[401, 'Unauthorized']],
    );
    assert.deepEqual(result.refused, { status: 401, title: 'Unauthorized', state: 'refused' });
    await page.screenshot({ path: join(RESULTS, 'sse-2-refused.png') });
    // The browser logs each refused request (and the EventSource's abort); nothing else.
    assertConsole(errors, [
      /^Failed to load resource: the server responded with a status of 401/,
      /^EventSource's response has a status 401 that is not 200\. Aborting the connection\.$/,
    ]);
    await page.close();
  });

  it("pushwire/client's SSE transport: events, setConfig (a new stream resumed), resume after a restart", async () => {
    const { page, errors } = await openPage(context, server.url);
    await page.evaluate(async () => {
      const seen: string[] = [];
      (window as unknown as { seen: string[] }).seen = seen;
      const bundle = '/pushwire-client.min.js';
      const { createPushClient } = (await import(bundle)) as typeof import('../../client/index.js');
      const client = createPushClient('/api/events', {
        transport: 'sse',
        minDelay: 100,
        maxDelay: 500,
      });
      (window as unknown as { client: unknown }).client = client;
      client.setConfig({ identities: { task: [] } });
      client.on('open', (open) => seen.push(`open:${open.transport}`));
      client.on('close', (close) => seen.push(`close:${close.code}`));
      client.on('event', (event) => seen.push(`event:${(event.entity as { ID: string }).ID}`));
      client.on('recovery', (info) => seen.push(`recovery:${String(info.recovered)}`));
    });
    await pageSaw(page, 'open:sse');
    await server.push?.publish(task('one'));
    await pageSaw(page, 'event:one');
    await page.evaluate(() => {
      const { client } = window as unknown as { client: { setConfig(config: unknown): void } };
      client.setConfig({ identities: { user: [] } });
    });
    await pageSaw(page, 'recovery:true');
    await waitFor(() => server.push?.sessions().length === 1, {
      timeout: UI_MS,
      message: 'the old stream was not closed',
    });
    await server.push?.publish(task('filtered'), {
      identity: 'user',
      type: 'create',
      entity: { ID: 'user' },
    });
    await pageSaw(page, 'event:user');

    await server.stop();
    await pageSaw(page, 'close:1001');
    await server.start((push) =>
      push.publish({ identity: 'user', type: 'update', entity: { ID: 'missed' } }),
    );
    await pageSaw(page, 'event:missed', RECONNECT_MS);
    await waitFor(
      async () => (await pageLog(page)).filter((i) => i === 'recovery:true').length === 2,
      {
        timeout: UI_MS,
        message: 'no recovery frame after the restart',
      },
    );
    await server.push?.publish({ identity: 'user', type: 'create', entity: { ID: 'after' } });
    const seen = await pageSaw(page, 'event:after');
    // Failed attempts while the server was down (close:1006) and opens vary in number.
    assert.deepEqual(
      seen.filter((item) => item !== 'close:1006' && item !== 'open:sse'),
      [
        'event:one',
        'close:1000',
        'recovery:true',
        'event:user',
        'close:1001',
        'event:missed',
        'recovery:true',
        'event:after',
      ],
    );
    await page.screenshot({ path: join(RESULTS, 'sse-3-client.png') });
    assertConsole(errors, [/^Failed to load resource: net::ERR_CONNECTION_REFUSED$/]);
    await page.close();
  });

  it("pushwire/client's transport 'auto': a WebSocket that cannot open, then SSE, kept", async () => {
    const blocked = new SseServer(await freePort(), { dropUpgrades: true });
    await blocked.start();
    try {
      const { page, errors } = await openPage(context, blocked.url);
      await page.evaluate(async () => {
        const seen: string[] = [];
        (window as unknown as { seen: string[] }).seen = seen;
        const bundle = '/pushwire-client.min.js';
        const { createPushClient } = (await import(
          bundle
        )) as typeof import('../../client/index.js');
        const client = createPushClient('/api/events', { transport: 'auto', minDelay: 100 });
        client.setConfig({ identities: { task: [] } });
        client.on('open', (open) => seen.push(`open:${open.transport}`));
        client.on('close', (close) => seen.push(`close:${close.code}:${String(close.opened)}`));
        client.on('event', (event) => seen.push(`event:${(event.entity as { ID: string }).ID}`));
      });
      await pageSaw(page, 'open:sse');
      await waitFor(() => blocked.push?.sessions()[0]?.transportName === 'sse', {
        timeout: UI_MS,
        message: 'no SSE session on the server',
      });
      await blocked.push?.publish(task('auto'));
      const seen = await pageSaw(page, 'event:auto');
      assert.deepEqual(seen, ['close:1006:false', 'open:sse', 'event:auto']);
      // The one WebSocket attempt, which the browser logs; nothing else.
      assertConsole(errors, [
        /^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/api\/events\?[^']*' failed: /,
      ]);
      assert.equal(errors.length, 1, 'one WebSocket attempt');
      await page.close();
    } finally {
      await blocked.stop();
    }
  });
});
