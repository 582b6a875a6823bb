/**
 * Real Express servers on port 0 with express-ws and pushwire mounted, and
 * real `ws` clients, for the integration tests. Both Express majors.
 */
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { once } from 'node:events';
import express5 from 'express';
import express4 from 'express4';
import expressWs from 'express-ws';
import WebSocket from 'ws';
import { decode, encode as encodeMsgpack } from '@msgpack/msgpack';
import {
  LocalPubSub,
  pushMiddleware,
  type Plugin,
  type PubSubClient,
  type PushMiddleware,
  type PushOptions,
} from '../../lib/index.js';
import { deferred, withTimeout } from './wait.js';

/** Which Express to build the app with. */
export type ExpressMajor = 4 | 5;

/** A running app: its URL, the push middleware, the app and its server. */
export interface PushApp {
  url: string;
  wsUrl: string;
  push: PushMiddleware;
  app: express5.Express;
  server: Server;
  pubsub: PubSubClient;
  close(): Promise<void>;
}

/** Options of {@link startPushApp}. */
export interface PushAppOptions {
  express?: ExpressMajor;
  pubsub?: PubSubClient;
  topic?: string;
  /** Where to mount the push middleware. Default `/api`. */
  mount?: string;
  options?: PushOptions;
  plugins?: Plugin[];
  /** Runs on the app before the push middleware is mounted. */
  before?: (app: express5.Express) => void;
  /** Mount through a nested router at this path (inside `mount`). */
  nested?: string;
  /** Skip `push.attach(ews)` (to test what happens without it). */
  noAttach?: boolean;
}

/** Starts an Express app with pushwire on a free port. */
export async function startPushApp(opts: PushAppOptions = {}): Promise<PushApp> {
  const major = opts.express ?? 5;
  const express = (major === 4 ? express4 : express5) as unknown as typeof express5;
  const app = express();
  const ews = expressWs(app as never);
  const pubsub = opts.pubsub ?? new LocalPubSub();
  const push = pushMiddleware(pubsub, opts.topic ?? 'events', {
    ...opts.options,
    plugins: opts.plugins ?? opts.options?.plugins ?? [],
  });
  opts.before?.(app);
  const mount = opts.mount ?? '/api';
  if (opts.nested !== undefined) {
    const router = express.Router();
    router.use(opts.nested, push);
    app.use(mount, router);
  } else {
    app.use(mount, push);
  }
  if (!opts.noAttach) push.attach(ews);
  await push.ready;
  const server = app.listen(0, '127.0.0.1') as Server;
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  const base = mount === '/' ? '' : mount;
  const nested = opts.nested ?? '';
  return {
    url,
    wsUrl: `ws://127.0.0.1:${port}${base}${nested}${push.endpoint}`,
    push,
    app: app as express5.Express,
    server,
    pubsub,
    async close() {
      await push.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A received event, decoded whatever the encoding (msgpack entities decoded too). */
export interface ReceivedEvent {
  identity: string;
  type: string;
  entity: unknown;
  timestamp: unknown;
  encoding: string;
  binary: boolean;
}

/** Decodes one frame as the protocol says: JSON text or MessagePack with a bin entity. */
export function decodeEventFrame(data: WebSocket.RawData, isBinary: boolean): ReceivedEvent {
  const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
  if (!isBinary) {
    const e = JSON.parse(buf.toString('utf8')) as Omit<ReceivedEvent, 'binary'>;
    return { ...e, binary: false };
  }
  const e = decode(buf) as Record<string, unknown>;
  const entity = e.entity instanceof Uint8Array ? decode(e.entity) : e.entity;
  return {
    identity: e.identity as string,
    type: e.type as string,
    entity,
    timestamp: e.timestamp,
    encoding: e.encoding as string,
    binary: true,
  };
}

/** A connected test client that records every event it receives. */
export interface TestClient {
  ws: WebSocket;
  events: ReceivedEvent[];
  /** Resolves when `n` events have arrived in total. */
  waitForEvents(n: number, timeout?: number): Promise<ReceivedEvent[]>;
  /** Sends a push config in this client's encoding. */
  sendConfig(config: unknown): void;
  /** Resolves with the close code and reason. */
  closed: Promise<{ code: number; reason: string }>;
  close(): void;
}

/** Options of {@link connectClient}. */
export interface ConnectOptions {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  /** Encoding the client sends configs in. Default from the query/headers: JSON. */
  sendEncoding?: 'json' | 'msgpack';
}

/** Connects a client and waits for `open`. Rejects on a refused handshake. */
export async function connectClient(wsUrl: string, opts: ConnectOptions = {}): Promise<TestClient> {
  const url = new URL(wsUrl);
  for (const [k, v] of Object.entries(opts.query ?? {})) url.searchParams.set(k, v);
  const ws = new WebSocket(url, { headers: opts.headers });
  const events: ReceivedEvent[] = [];
  const waiters: Array<{ n: number; resolve: () => void }> = [];
  const closed = deferred<{ code: number; reason: string }>();
  ws.on('message', (data, isBinary) => {
    events.push(decodeEventFrame(data, isBinary));
    for (const w of waiters.slice()) {
      if (events.length >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  });
  ws.on('close', (code, reason) => closed.resolve({ code, reason: reason.toString() }));
  ws.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('unexpected-response', (_req, res) => {
      reject(new Error(`unexpected-response ${res.statusCode}`));
      ws.terminate();
    });
    ws.once('error', reject);
  });
  const msgpack =
    opts.sendEncoding === 'msgpack' ||
    (opts.sendEncoding === undefined && opts.query?.encoding === 'msgpack');
  return {
    ws,
    events,
    closed: closed.promise,
    waitForEvents(n, timeout = 5000) {
      if (events.length >= n) return Promise.resolve(events);
      const d = deferred<void>();
      waiters.push({ n, resolve: () => d.resolve() });
      return withTimeout(d.promise, timeout, `expected ${n} events, got ${events.length}`).then(
        () => events,
      );
    },
    sendConfig(config) {
      if (msgpack) {
        ws.send(encodeMsgpack(config));
      } else ws.send(JSON.stringify(config));
    },
    close() {
      ws.close();
    },
  };
}

/**
 * Starts an app, runs `fn`, and closes the app and every client given to
 * `track` whatever happens (the clients are terminated first).
 */
export async function withPushApp(
  opts: PushAppOptions,
  fn: (app: PushApp, track: (c: TestClient) => TestClient) => Promise<void>,
): Promise<void> {
  const app = await startPushApp(opts);
  const clients: TestClient[] = [];
  try {
    await fn(app, (c) => {
      clients.push(c);
      return c;
    });
  } finally {
    for (const c of clients) c.ws.terminate();
    await app.close();
  }
}

/** The outcome of a refused handshake: status, headers, parsed body. */
export interface Refusal {
  status: number;
  contentType: string | undefined;
  body: unknown;
  opened: boolean;
}

/**
 * Attempts a handshake expected to be refused; resolves with the HTTP
 * response. Fails if the socket opens.
 */
export async function expectRefusal(
  wsUrl: string,
  opts: { query?: Record<string, string>; headers?: Record<string, string> } = {},
): Promise<Refusal> {
  const url = new URL(wsUrl);
  for (const [k, v] of Object.entries(opts.query ?? {})) url.searchParams.set(k, v);
  const ws = new WebSocket(url, { headers: opts.headers });
  ws.on('error', () => undefined);
  return withTimeout(
    new Promise<Refusal>((resolve, reject) => {
      ws.once('open', () => {
        ws.terminate();
        reject(new Error('the handshake was accepted; expected a refusal'));
      });
      ws.once('unexpected-response', (_req, res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // not JSON: keep the text
          }
          resolve({
            status: res.statusCode ?? 0,
            contentType: res.headers['content-type'],
            body,
            opened: false,
          });
          ws.terminate();
        });
      });
    }),
    5000,
    'no response to the handshake',
  );
}

/** Sends `text` to an express-ws echo route and resolves with the answer (5 s per step). */
export async function echo(url: string, text: string, timeout = 5_000): Promise<string> {
  const ws = new WebSocket(url);
  ws.on('error', () => undefined);
  try {
    await withTimeout(once(ws, 'open'), timeout, `no open on ${url}`);
    const answer = once(ws, 'message');
    ws.send(text);
    const [data] = (await withTimeout(answer, timeout, 'no echo')) as [Buffer];
    return data.toString();
  } finally {
    ws.terminate();
  }
}
