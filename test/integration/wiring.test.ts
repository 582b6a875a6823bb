/**
 * Wiring mistakes and junk handshakes, against real Express servers on port 0 and real
 * sockets (issue 19, items 4 and 7): a handshake `ws` would refuse is refused before the
 * plugin chain and counted; a forgotten `push.attach(ews)`, or no express-ws at all, is
 * noticed at the first request and explained once; a mistyped path under the mount point
 * gets 404 before the handshake while express-ws's own routes keep working. Both Express
 * majors.
 *
 * Nothing sleeps: each test waits for the response, the close or the event that proves it.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it, mock } from 'node:test';
import express5 from 'express';
import express4 from 'express4';
import expressWs from 'express-ws';
import WebSocket from 'ws';
import { authPlugin, LocalPubSub, pushMiddleware, type PushMiddleware } from '../../lib/index.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { memoryLogger } from '../helpers/logger.js';
import {
  connectClient,
  expectRefusal,
  type ExpressMajor,
  type TestClient,
  withPushApp,
  echo,
} from '../helpers/push-app.js';
import { withTimeout } from '../helpers/wait.js';

const MAJORS: readonly ExpressMajor[] = [4, 5];
const WAIT_MS = 5_000;
const GOOD_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

failOnUnhandledRejections({ uncaughtExceptions: true });

/** What a raw upgrade request got: a status (101 when upgraded), its headers and body. */
interface RawAnswer {
  status: number;
  headers: IncomingMessage['headers'];
  body: string;
}

/** Sends an upgrade request with exactly these headers (ws's client would fix them). */
async function rawUpgrade(url: string, headers: Record<string, string>): Promise<RawAnswer> {
  const req = request(url, { headers: { Connection: 'Upgrade', ...headers } });
  req.end();
  const answer = new Promise<RawAnswer>((resolve, reject) => {
    req.once('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: '' });
    });
    req.once('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString('utf8'),
        }),
      );
    });
    req.once('error', reject);
  });
  return withTimeout(answer, WAIT_MS, `no answer to the upgrade of ${url}`);
}

/** An auth plugin that counts its calls: `good` is let in. */
function countingAuth(): { plugin: ReturnType<typeof authPlugin>; calls: () => number } {
  let calls = 0;
  const plugin = authPlugin((session) => {
    calls++;
    return session.token === 'good' ? 'ok' : 'ko';
  });
  return { plugin, calls: () => calls };
}

const connect = (url: string, token: string): Promise<TestClient> =>
  withTimeout(connectClient(url, { query: { token } }), WAIT_MS, `no handshake on ${url}`);

/** An Express app of `major` with the push middleware at /api and no express-ws at all. */
async function startWithoutExpressWs(
  major: ExpressMajor,
  push: PushMiddleware,
): Promise<{ server: Server; base: string; close(): Promise<void> }> {
  const express = (major === 4 ? express4 : express5) as unknown as typeof express5;
  const app = express();
  app.use('/api', push);
  await push.ready;
  const server = createServer(app).listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    server,
    base: `127.0.0.1:${port}`,
    async close() {
      await push.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

for (const major of MAJORS) {
  describe(`Express ${major}`, () => {
    describe('a handshake ws would refuse is refused before the plugin chain, and counted', () => {
      const cases: Array<{
        name: string;
        headers: Record<string, string>;
        status: number;
        version?: string;
      }> = [
        {
          name: 'a bad Sec-WebSocket-Key',
          headers: {
            Upgrade: 'websocket',
            'Sec-WebSocket-Key': 'short',
            'Sec-WebSocket-Version': '13',
          },
          status: 400,
        },
        {
          name: 'Sec-WebSocket-Version: 7',
          headers: {
            Upgrade: 'websocket',
            'Sec-WebSocket-Key': GOOD_KEY,
            'Sec-WebSocket-Version': '7',
          },
          status: 400,
          version: '13, 8',
        },
        {
          name: 'Upgrade: h2c',
          headers: { Upgrade: 'h2c', 'Sec-WebSocket-Key': GOOD_KEY, 'Sec-WebSocket-Version': '13' },
          status: 400,
        },
        {
          name: 'a malformed Sec-WebSocket-Protocol',
          headers: {
            Upgrade: 'websocket',
            'Sec-WebSocket-Key': GOOD_KEY,
            'Sec-WebSocket-Version': '13',
            'Sec-WebSocket-Protocol': 'a,,b',
          },
          status: 400,
        },
      ];
      for (const c of cases) {
        it(`${c.name}: ${c.status}, no auth plugin call`, async () => {
          const auth = countingAuth();
          const { logger, lines } = memoryLogger();
          await withPushApp(
            { express: major, plugins: [auth.plugin], options: { logger } },
            async (app, track) => {
              const url = `${app.wsUrl.replace(/^ws:/, 'http:')}?token=good`;
              const answer = await rawUpgrade(url, c.headers);
              assert.equal(answer.status, c.status);
              assert.equal(answer.headers['sec-websocket-version'], c.version);
              assert.match(answer.headers['content-type'] ?? '', /^application\/json/);
              const body = JSON.parse(answer.body) as Array<{ code: number }>;
              assert.equal(body[0]?.code, c.status);
              assert.equal(auth.calls(), 0, 'the auth plugin ran for a junk handshake');
              assert.deepEqual(app.push.stats().sessionsRefused, { [c.status]: 1 });
              assert.ok(lines.some((l) => l.msg === 'pushwire: session refused'));
              // A good handshake after it still works, and is the first auth call.
              const client = track(await connect(app.wsUrl, 'good'));
              assert.equal(auth.calls(), 1);
              await app.push.publish({ identity: 'task', type: 'create', entity: { ID: '1' } });
              await client.waitForEvents(1, WAIT_MS);
            },
          );
        });
      }
    });

    describe('a forgotten push.attach(ews) is noticed at the first request', () => {
      it('later upgrades are refused before the handshake; one console warning names attach', async () => {
        const warn = mock.method(console, 'warn', () => undefined);
        try {
          const auth = countingAuth();
          const before = (a: express5.Express): void => {
            const wsApp = a as unknown as expressWs.Application;
            wsApp.ws('/api/chat', (ws) => ws.on('message', (m) => ws.send(`chat:${String(m)}`)));
          };
          await withPushApp(
            { express: major, noAttach: true, plugins: [auth.plugin], before },
            async (app, track) => {
              // Any request under the mount point shows pushwire its HTTP server.
              const plain = await fetch(app.wsUrl.replace(/^ws:/, 'http:'));
              assert.equal(plain.status, 426);
              const refusal = await expectRefusal(app.wsUrl, { query: { token: 'bad' } });
              assert.equal(refusal.status, 401);
              assert.equal(app.push.stats().sessionsRefused[401], 1);
              const client = track(await connect(app.wsUrl, 'good'));
              await app.push.publish({ identity: 'task', type: 'create', entity: { ID: '1' } });
              await client.waitForEvents(1, WAIT_MS);
              // express-ws's own routes beside it are untouched.
              const base = app.url.replace(/^http:/, 'ws:');
              assert.equal(await echo(`${base}/api/chat`, 'yo'), 'chat:yo');
              await expectRefusal(app.wsUrl, { query: { token: 'bad' } });
              assert.equal(auth.calls(), 3);
            },
          );
          const warnings = warn.mock.calls.map((call) => String(call.arguments[0]));
          assert.equal(warnings.length, 1, warnings.join('\n'));
          assert.match(warnings[0] ?? '', /push\.attach\(ews\)/);
        } finally {
          warn.mock.restore();
        }
      });

      it('with a logger, the warning goes to the logger, not the console', async () => {
        const warn = mock.method(console, 'warn', () => undefined);
        const { logger, lines } = memoryLogger();
        try {
          await withPushApp(
            { express: major, noAttach: true, options: { logger } },
            async (app) => {
              await fetch(app.wsUrl.replace(/^ws:/, 'http:'));
              await fetch(app.wsUrl.replace(/^ws:/, 'http:'));
            },
          );
          assert.equal(warn.mock.callCount(), 0);
          assert.equal(lines.filter((l) => /push\.attach\(ews\)/.test(l.msg)).length, 1);
        } finally {
          warn.mock.restore();
        }
      });
    });

    describe('without express-ws, pushwire serves upgrades once it has seen the server', () => {
      it('the first upgrade gets 503 (retry) and a warning naming the fix; later ones are served', async () => {
        const warn = mock.method(console, 'warn', () => undefined);
        const auth = countingAuth();
        const push = pushMiddleware(new LocalPubSub(), 'events', [auth.plugin]);
        const { base, close } = await startWithoutExpressWs(major, push);
        const clients: TestClient[] = [];
        try {
          const wsUrl = `ws://${base}/api/events`;
          const first = await expectRefusal(wsUrl, { query: { token: 'good' } });
          assert.equal(first.status, 503);
          const warnings = warn.mock.calls.map((call) => String(call.arguments[0]));
          assert.equal(warnings.length, 1);
          assert.match(warnings[0] ?? '', /expressWs\(app, server\)/);
          const client = await connect(wsUrl, 'good');
          clients.push(client);
          await push.publish({ identity: 'task', type: 'create', entity: { ID: '1' } });
          await client.waitForEvents(1, WAIT_MS);
          assert.equal((await expectRefusal(wsUrl, { query: { token: 'bad' } })).status, 401);
          // An upgrade elsewhere is a plain request to the app, as Node would have made it.
          assert.equal((await expectRefusal(`ws://${base}/elsewhere`)).status, 404);
          assert.equal(warn.mock.callCount(), 1);
        } finally {
          warn.mock.restore();
          for (const c of clients) c.ws.terminate();
          await close();
        }
      });
    });

    describe('a mistyped path under the mount point gets 404 before the handshake', () => {
      it('while express-ws routes under the same prefix keep working', async () => {
        const auth = countingAuth();
        const before = (a: express5.Express): void => {
          const wsApp = a as unknown as expressWs.Application;
          wsApp.ws('/api/other', (ws) => ws.on('message', (m) => ws.send(`other:${String(m)}`)));
        };
        await withPushApp({ express: major, plugins: [auth.plugin], before }, async (app) => {
          const base = app.url.replace(/^http:/, 'ws:');
          // A router with its own express-ws route, mounted at the same prefix after pushwire:
          // what `router.ws('/rooms/:room', fn)` registers (express-ws's applyTo), written out,
          // since express-ws patches only the Router of the Express it imports.
          const express = (major === 4 ? express4 : express5) as unknown as typeof express5;
          const router = express.Router();
          router.get('/rooms/:room/.websocket', (req, _res, next) => {
            const upgraded = req as unknown as { ws?: WebSocket; wsHandled?: boolean };
            if (upgraded.ws === undefined) return next();
            upgraded.wsHandled = true;
            const ws = upgraded.ws;
            ws.on('message', (m) => ws.send(`room:${String(m)}`));
          });
          app.app.use('/api', router);
          const refusal = await expectRefusal(`${base}/api/evnts`, { query: { token: 'good' } });
          assert.equal(refusal.status, 404);
          assert.match(JSON.stringify(refusal.body), /the push endpoint is \/api\/events/);
          assert.equal(auth.calls(), 0);
          assert.equal(app.push.stats().sessionsRefused[404], 1);
          assert.equal(await echo(`${base}/api/other`, 'hi'), 'other:hi');
          assert.equal(await echo(`${base}/api/rooms/7`, 'hi'), 'room:hi');
          // Outside the mount point, pushwire has no say: express-ws's own behaviour.
          const outside = new WebSocket(`${base}/elsewhere`);
          outside.on('error', () => undefined);
          await withTimeout(once(outside, 'open'), WAIT_MS, 'express-ws did not take /elsewhere');
          outside.terminate();
        });
      });
    });
  });
}
