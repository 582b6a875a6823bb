/**
 * pushwire/client (its Node entry) against the apps of startPushApp, for the
 * integration tests of the client: what a test file starts is closed once
 * its tests are done, whatever happened, and a test awaits the client's
 * events with a deadline instead of sleeping.
 */
import { after } from 'node:test';
import {
  createPushClient,
  type PushClient,
  type PushClientEventMap,
  type PushClientOptions,
} from '../../client/node.js';
import { startPushApp, type PushApp, type PushAppOptions } from './push-app.js';
import { deferred, withTimeout } from './wait.js';

/** What {@link clientFixtures} gives a test file. */
export interface ClientFixtures {
  /** Starts an app (see startPushApp), closed after the file's tests. */
  app(options?: PushAppOptions): Promise<PushApp>;
  /** Creates a client with the file's defaults under `options`, closed after the file's tests. */
  client(url: string, options?: PushClientOptions): PushClient;
  /** Closes `c`, a client made otherwise (the browser entry), with the others; returns it. */
  track(c: PushClient): PushClient;
  /** Runs `close` after the file's tests, once the clients are closed. */
  onClose(close: () => Promise<void>): void;
}

/**
 * Registers, for the calling test file, an `after` hook that first closes
 * every client (so that none reconnects to a server being stopped), then
 * runs every other closer, the last registered first (a proxy before the
 * server behind it). `defaults` are every client's options, under its own.
 */
export function clientFixtures(defaults: PushClientOptions = {}): ClientFixtures {
  const clients: PushClient[] = [];
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of clients) c.close();
    for (const close of closers.reverse()) await close();
  });
  return {
    async app(options = {}) {
      const started = await startPushApp(options);
      closers.push(() => started.close());
      return started;
    },
    client(url, options = {}) {
      const created = createPushClient(url, { ...defaults, ...options });
      clients.push(created);
      return created;
    },
    track(c) {
      clients.push(c);
      return c;
    },
    onClose(close) {
      closers.push(close);
    },
  };
}

/** The next emission of `type` by `c`; rejects when none comes within `timeout` ms. */
export function next<K extends keyof PushClientEventMap>(
  c: PushClient,
  type: K,
  timeout = 5_000,
): Promise<PushClientEventMap[K]> {
  const d = deferred<PushClientEventMap[K]>();
  const off = c.on(type, (payload) => {
    off();
    d.resolve(payload);
  });
  return withTimeout(d.promise, timeout, `no '${type}' from the client`);
}
