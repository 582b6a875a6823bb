/**
 * The live page of examples/basic in a real browser: headless Chromium
 * (the Debian package's /usr/bin/chromium, driven by playwright-core)
 * against the example server started as a child process on a free port.
 *
 * Each test asserts on the DOM and saves screenshots under test-results/.
 * Nothing sleeps: every wait is on a DOM state or a server answer, with a
 * deadline. To prove that an event was NOT shown, a marker is published
 * after it: events of one publisher arrive in order, so the filtered one
 * would have been shown first. That the server applied a config is read
 * from the example's /api/sessions.
 *
 * Console errors fail the tests. The only ones tolerated are those the
 * browser itself logs for a network failure a test causes on purpose (a
 * server stopped, a token refused), and each test says which it expects.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type { BrowserContext, Page } from 'playwright-core';
import {
  assertConsole,
  launchChromium,
  openPage,
  RESULTS,
  type Chromium,
} from '../helpers/browser.js';
import { freePort } from '../helpers/brokers.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** How long the page may take to connect, or an event to show. */
const UI_MS = 10_000;
/** How long the example server may take to start (tsx compiles it, esbuild bundles the client). */
const START_MS = 30_000;
/** How long the page may take to come back after a restart: the page's maxDelay is 5 s. */
const RECONNECT_MS = 20_000;

/** The example server as a child process, restartable on the same port. */
class ExampleServer {
  readonly port: number;
  readonly url: string;
  #child: ChildProcess | undefined;
  #output = '';

  constructor(port: number) {
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
  }

  /** The last lines the server printed, for failure messages. */
  get output(): string {
    return this.#output.split('\n').slice(-20).join('\n');
  }

  async start(): Promise<void> {
    const child = spawn(process.execPath, ['--import', 'tsx', 'examples/basic/server.ts'], {
      cwd: ROOT,
      env: { ...process.env, PORT: String(this.port), DEMO_INTERVAL: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.#child = child;
    const listening = deferred<void>();
    const onOutput = (chunk: Buffer): void => {
      this.#output += chunk.toString('utf8');
      if (this.#output.includes(`"port":${this.port}`)) listening.resolve();
    };
    child.stdout?.on('data', onOutput);
    child.stderr?.on('data', onOutput);
    child.once('exit', (code, signal) =>
      listening.reject(new Error(`the example server exited (${code ?? signal}):\n${this.output}`)),
    );
    await withTimeout(
      listening.promise,
      START_MS,
      `the example server did not start:\n${this.output}`,
    );
  }

  /** SIGTERM (the example's graceful shutdown: sessions get 1001), SIGKILL if it hangs. */
  async stop(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    try {
      await withTimeout(exited, 10_000, 'the example server ignored SIGTERM');
    } catch {
      child.kill('SIGKILL');
      await exited;
    }
  }

  async publish(identity: string, type: string, entity: unknown): Promise<void> {
    const response = await fetch(`${this.url}/api/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ identity, type, entity }),
    });
    assert.equal(response.status, 202, `publish answered ${response.status}`);
  }

  /**
   * Waits until some session on the server holds `config` (over `transport`, when given): the
   * page's config was applied.
   */
  async hasConfig(config: unknown, transport?: 'sse' | 'websocket'): Promise<void> {
    await waitFor(
      async () => {
        const response = await fetch(`${this.url}/api/sessions`);
        const sessions = (await response.json()) as Array<{
          pushConfig: unknown;
          transport: string;
        }>;
        return sessions.some(
          (s) =>
            JSON.stringify(s.pushConfig) === JSON.stringify(config) &&
            (transport === undefined || s.transport === transport),
        );
      },
      { timeout: UI_MS, interval: 50, message: `no session holds ${JSON.stringify(config)}` },
    );
  }
}

/** The browser's own log lines for a WebSocket that failed, and for the client's check request. */
const WEBSOCKET_FAILED =
  /^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/api\/events\?[^']*' failed: /;
const CHECK_UNREACHABLE = /^Failed to load resource: net::ERR_CONNECTION_REFUSED$/;
const CHECK_REFUSED_401 = /^Failed to load resource: the server responded with a status of 401/;

async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(RESULTS, `${name}.png`), fullPage: true });
}

const state = (page: Page, name: string) => page.locator(`#state[data-state="${name}"]`);
const row = (page: Page, text: string) => page.locator('#events tr', { hasText: text });

describe('the live page in Chromium', () => {
  let server: ExampleServer;
  let browser: Chromium;
  let context: BrowserContext;

  before(async () => {
    browser = await launchChromium({ viewport: { width: 1280, height: 800 } });
    context = browser.context;
    server = new ExampleServer(await freePort());
    await server.start();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  it('connects, shows a published event, and stops showing an identity its new config leaves out', async () => {
    const { page, errors } = await openPage(context);
    await page.goto(server.url);
    await state(page, 'open').waitFor({ timeout: UI_MS });
    assert.match((await page.locator('#state').textContent()) ?? '', /connected · JSON/);

    // Publish through the page's own form; the default config passes tasks of priority >= 2.
    await page.locator('#publish input[name="entity"]').fill('{"ID":"from-form","priority":3}');
    await page.locator('#publish button[type="submit"]').click();
    await row(page, 'from-form').waitFor({ timeout: UI_MS });
    const cells = await row(page, 'from-form').locator('td').allTextContents();
    assert.deepEqual(cells.slice(1), ['task', 'create', '{"ID":"from-form","priority":3}']);
    assert.equal(await page.locator('#count').textContent(), '1');

    // Tasks only: a user event must not show.
    const config = { identities: { task: [] } };
    await page.locator('#config').fill(JSON.stringify(config));
    await page.locator('#apply').click();
    await server.hasConfig(config);
    await server.publish('user', 'create', { ID: 'user-filtered' });
    await server.publish('task', 'update', { ID: 'marker-1' });
    await row(page, 'marker-1').waitFor({ timeout: UI_MS });
    assert.equal(await row(page, 'user-filtered').count(), 0, 'the user event was filtered');
    assert.match((await page.locator('#config-status').textContent()) ?? '', /^sent at /);
    await screenshot(page, '1-connected-filtered');
    assertConsole(errors);
    await page.close();
  });

  it('speaks MessagePack: the entity is decoded, the config applied', async () => {
    const { page, errors } = await openPage(context);
    await page.goto(`${server.url}/?encoding=msgpack`);
    await state(page, 'open').waitFor({ timeout: UI_MS });
    assert.match((await page.locator('#state').textContent()) ?? '', /MessagePack/);
    const config = { identities: { task: ['delete'] } };
    await page.locator('#config').fill(JSON.stringify(config));
    await page.locator('#apply').click();
    await server.hasConfig(config);
    await server.publish('task', 'create', { ID: 'create-filtered' });
    await server.publish('task', 'delete', { ID: 'msgpack-1', nested: { n: 3.5, list: [1, 'x'] } });
    await row(page, 'msgpack-1').waitFor({ timeout: UI_MS });
    assert.equal(
      await row(page, 'msgpack-1').locator('td.entity').textContent(),
      '{"ID":"msgpack-1","nested":{"n":3.5,"list":[1,"x"]}}',
    );
    assert.equal(await row(page, 'create-filtered').count(), 0);
    await screenshot(page, '2-msgpack');
    assertConsole(errors);
    await page.close();
  });

  it('over Server-Sent Events (?transport=sse): shows events; a new config opens a new stream', async () => {
    const { page, errors } = await openPage(context);
    await page.goto(`${server.url}/?transport=sse`);
    await state(page, 'open').waitFor({ timeout: UI_MS });
    assert.equal(await page.locator('#state').textContent(), 'connected · JSON · SSE');
    await server.publish('task', 'create', { ID: 'sse-1', priority: 3 });
    await row(page, 'sse-1').waitFor({ timeout: UI_MS });

    const config = { identities: { task: [] } };
    await page.locator('#config').fill(JSON.stringify(config));
    await page.locator('#apply').click();
    await server.hasConfig(config, 'sse');
    await state(page, 'open').waitFor({ timeout: UI_MS });
    await server.publish('user', 'create', { ID: 'sse-user-filtered' });
    await server.publish('task', 'update', { ID: 'sse-marker' });
    await row(page, 'sse-marker').waitFor({ timeout: UI_MS });
    assert.equal(await row(page, 'sse-user-filtered').count(), 0, 'the user event was filtered');
    await screenshot(page, '7-sse');
    assertConsole(errors);
    await page.close();
  });

  it('reconnects after the server restarts, resends its config and shows events again', async () => {
    const { page, errors } = await openPage(context);
    await page.goto(server.url);
    await state(page, 'open').waitFor({ timeout: UI_MS });
    const config = { identities: { task: ['create'] } };
    await page.locator('#config').fill(JSON.stringify(config));
    await page.locator('#apply').click();
    await server.hasConfig(config);

    await server.stop();
    await state(page, 'reconnecting').waitFor({ timeout: UI_MS });
    assert.match((await page.locator('#state').textContent()) ?? '', /^reconnecting in \d+s/);
    await screenshot(page, '3-reconnecting');

    await server.start();
    await state(page, 'open').waitFor({ timeout: RECONNECT_MS });
    await server.hasConfig(config);
    await server.publish('task', 'delete', { ID: 'delete-filtered' });
    await server.publish('task', 'create', { ID: 'after-restart' });
    await row(page, 'after-restart').waitFor({ timeout: UI_MS });
    assert.equal(await row(page, 'delete-filtered').count(), 0, 'the resent config filters');
    assert.match((await page.locator('#config-status').textContent()) ?? '', /^resent at /);
    await screenshot(page, '4-reconnected');
    // While the server was down, the browser logged each failed attempt; nothing else.
    assertConsole(errors, [WEBSOCKET_FAILED, CHECK_UNREACHABLE]);
    await page.close();
  });

  it('shows a refused token as an error and stops', async () => {
    const { page, errors } = await openPage(context);
    await page.goto(`${server.url}/?token=bad`);
    await state(page, 'refused').waitFor({ timeout: UI_MS });
    assert.equal(await page.locator('#state').textContent(), 'refused: 401 Unauthorized');
    const alert = page.locator('#alert');
    assert.equal(await alert.isVisible(), true);
    assert.match(
      (await alert.textContent()) ?? '',
      /refused this session \(401\): The token "bad" is refused by this example/,
    );
    assert.equal(await page.locator('#reconnect').isVisible(), true);
    await screenshot(page, '5-refused');
    // The browser logs the refused handshake and the 401 of the check; nothing else.
    assertConsole(errors, [WEBSOCKET_FAILED, CHECK_REFUSED_401]);
    assert.ok(
      errors.some((e) => WEBSOCKET_FAILED.test(e.text)),
      'the refused handshake was attempted',
    );
    await page.close();
  });

  it('fits a phone screen', async () => {
    const { page, errors } = await openPage(context);
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(server.url);
    await state(page, 'open').waitFor({ timeout: UI_MS });
    await server.publish('task', 'create', {
      ID: 'phone',
      priority: 4,
      description: 'a long entity that must wrap inside the table on a narrow screen '.repeat(2),
    });
    await row(page, 'phone').waitFor({ timeout: UI_MS });
    const overflow = await page.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
    );
    assert.equal(overflow, 0, 'no horizontal scrolling');
    await screenshot(page, '6-phone');
    assertConsole(errors);
    await page.close();
  });
});
