/**
 * PROTOCOL.md sections 1 and 2, against real Express servers on port 0 and
 * real `ws` clients: where the endpoint is served (any prefix, nested
 * routers, standalone routers 2.2 and 2.3, a custom path), and every refusal
 * of the handshake, which must be a plain HTTP response with the JSON error
 * body and never a WebSocket that opens. The whole suite runs on Express 4
 * and Express 5.
 *
 * Nothing sleeps: a test waits for the response, the close or the hook that
 * proves its point, with a deadline.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import express5 from 'express';
import express4 from 'express4';
import expressWs from 'express-ws';
import Router22 from 'router22';
import Router23 from 'router23';
import WebSocket from 'ws';
import {
  authPlugin,
  definePlugin,
  ForbiddenError,
  initPlugin,
  LocalPubSub,
  pushMiddleware,
  TooManyRequestsError,
  UnauthorizedError,
  type AuthAction,
  type Plugin,
  type PushMiddleware,
  type PushSession,
} from '../../lib/index.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { memoryLogger } from '../helpers/logger.js';
import {
  connectClient,
  expectRefusal,
  type ConnectOptions,
  type ExpressMajor,
  type PushApp,
  type Refusal,
  type TestClient,
  withPushApp,
  echo,
} from '../helpers/push-app.js';
import { deferred, withTimeout } from '../helpers/wait.js';

const MAJORS: readonly ExpressMajor[] = [4, 5];
const WAIT_MS = 5_000;

// A vanished client or a refused handshake must never surface as an unhandled rejection or an
// uncaught exception: record them and fail the file if any happened.
failOnUnhandledRejections({ uncaughtExceptions: true });

/** The refusal of section 2: the status, a JSON content type and one elemental error object. */
function assertRefusal(
  refusal: Refusal,
  status: number,
  title: string,
  description?: string | RegExp,
): void {
  assert.equal(refusal.opened, false);
  assert.equal(refusal.status, status);
  assert.match(refusal.contentType ?? '', /^application\/json\b/);
  assert.ok(Array.isArray(refusal.body), `the body is a JSON array: ${String(refusal.body)}`);
  const errors = refusal.body as Array<Record<string, unknown>>;
  assert.equal(errors.length, 1);
  const error = errors[0] as Record<string, unknown>;
  assert.equal(error.code, status);
  assert.equal(error.title, title);
  assert.equal(error.subject, 'pushwire');
  assert.equal(typeof error.description, 'string');
  if (typeof description === 'string') assert.equal(error.description, description);
  else if (description !== undefined) assert.match(error.description as string, description);
  for (const key of Object.keys(error)) {
    assert.ok(['code', 'title', 'description', 'subject', 'data'].includes(key), `key ${key}`);
  }
  assert.doesNotMatch(JSON.stringify(error), /\n\s+at /, 'no stack trace');
}

/** Publishes one event and waits for the client to have `n` events in total. */
async function roundTrip(app: PushApp, client: TestClient, n: number): Promise<void> {
  await app.push.publish({ identity: 'task', type: 'create', entity: { ID: String(n) } });
  const events = await client.waitForEvents(n, WAIT_MS);
  assert.deepEqual(events[n - 1]?.entity, { ID: String(n) });
}

/** connectClient with a deadline: a handshake that never completes fails the test. */
const connect = (url: string, opts?: ConnectOptions): Promise<TestClient> =>
  withTimeout(connectClient(url, opts), WAIT_MS, `no handshake on ${url}`);

/** An HTTP URL of the same path as a ws URL. */
const httpUrl = (wsUrl: string): string => wsUrl.replace(/^ws:/, 'http:');

for (const major of MAJORS) {
  describe(`Express ${major}`, () => {
    describe('§1 the endpoint is served at any mount point', () => {
      const mounts: Array<{ mount: string; nested?: string }> = [
        { mount: '/' },
        { mount: '/api' },
        { mount: '/a/b/c' },
        { mount: '/api', nested: '/push' },
        { mount: '/', nested: '/v1/push' },
      ];
      for (const { mount, nested } of mounts) {
        const where = nested === undefined ? mount : `${nested} in a router at ${mount}`;
        it(`at ${where}: opens and receives events`, async () => {
          await withPushApp({ express: major, mount, nested }, async (app, track) => {
            const expectedPath = `${mount === '/' ? '' : mount}${nested ?? ''}/events`;
            assert.equal(new URL(app.wsUrl).pathname, expectedPath);
            const client = track(await connect(app.wsUrl));
            assert.equal(app.push.sessions().length, 1);
            await roundTrip(app, client, 1);
          });
        });
      }

      it('matches like Express: case-insensitive, a trailing slash allowed', async () => {
        await withPushApp({ express: major, mount: '/api' }, async (app, track) => {
          const url = app.wsUrl.replace('/api/events', '/API/Events/');
          const client = track(await connect(url));
          await roundTrip(app, client, 1);
        });
      });

      it('a path that only extends the endpoint is not the endpoint', async () => {
        let sessionPhases = 0;
        const plugin = definePlugin({
          session(_ctx, next) {
            sessionPhases++;
            return next();
          },
        });
        await withPushApp({ express: major, mount: '/api', plugins: [plugin] }, async (app) => {
          for (const suffix of ['x', '/more', '.json']) {
            const response = await fetch(httpUrl(app.wsUrl) + suffix);
            assert.equal(response.status, 404, suffix);
            // No route takes an upgrade there: 404 before the handshake; the push chain never runs.
            const refusal = await expectRefusal(app.wsUrl + suffix);
            assertRefusal(refusal, 404, 'Not Found', /the push endpoint is \/api\/events$/);
          }
          assert.equal(sessionPhases, 0);
          assert.equal(app.push.stats().sessionsAccepted, 0);
        });
      });

      it('a custom `endpoint` option replaces /events', async () => {
        await withPushApp(
          { express: major, mount: '/api', options: { endpoint: '/live/updates' } },
          async (app, track) => {
            assert.equal(app.push.endpoint, '/live/updates');
            assert.equal(new URL(app.wsUrl).pathname, '/api/live/updates');
            const client = track(await connect(app.wsUrl));
            await roundTrip(app, client, 1);
            // The default path is no longer the endpoint: it falls through to Express (404).
            const response = await fetch(`${app.url}/api/events`);
            assert.equal(response.status, 404);
          },
        );
      });

      it('other paths under the mount point reach the app routes after it', async () => {
        await withPushApp({ express: major, mount: '/api' }, async (app) => {
          app.app.get('/api/health', (_req, res) => {
            res.json({ ok: true });
          });
          const response = await fetch(`${app.url}/api/health`);
          assert.equal(response.status, 200);
          assert.deepEqual(await response.json(), { ok: true });
        });
      });

      it('a plain HTTP GET of the endpoint gets 426 Upgrade Required', async () => {
        await withPushApp({ express: major, mount: '/api' }, async (app) => {
          const response = await fetch(httpUrl(app.wsUrl));
          assert.equal(response.status, 426);
          assert.equal(response.headers.get('upgrade'), 'websocket');
          assertRefusal(
            {
              status: response.status,
              contentType: response.headers.get('content-type') ?? undefined,
              body: await response.json(),
              opened: false,
            },
            426,
            'Upgrade Required',
          );
          assert.equal(app.push.sessions().length, 0);
        });
      });

      it('query parameters, headers and cookies reach the session phase', async () => {
        const seen = deferred<Record<string, unknown>>();
        const plugin = definePlugin({
          session(ctx, next) {
            const s = ctx.session;
            seen.resolve({
              token: s.token,
              namespace: s.parameter('namespace'),
              all: s.parameters('tag'),
              missing: s.parameter('missing'),
              header: s.header('X-Client'),
              cookie: s.cookie('sid'),
              clientIP: s.clientIP,
            });
            return next();
          },
        });
        await withPushApp({ express: major, plugins: [plugin] }, async (app, track) => {
          const url = new URL(app.wsUrl);
          url.search = 'token=secret&namespace=%2Facme&tag=a&tag=b';
          track(
            await connect(url.toString(), {
              headers: { 'X-Client': 'test', Cookie: 'theme=dark; sid=abc%20def' },
            }),
          );
          assert.deepEqual(await withTimeout(seen.promise, WAIT_MS, 'session phase'), {
            token: 'secret',
            namespace: '/acme',
            all: ['a', 'b'],
            missing: '',
            header: 'test',
            cookie: 'abc def',
            clientIP: '127.0.0.1',
          });
        });
      });
      it("clientIP is Express's req.ip: the forwarded address behind a trusted proxy", async () => {
        const started = deferred<PushSession>();
        const plugins: Plugin[] = [{ onSessionStart: (s) => started.resolve(s) }];
        const before = (a: express5.Express): void => {
          a.set('trust proxy', 'loopback');
        };
        await withPushApp({ express: major, plugins, before }, async (app, track) => {
          track(await connect(app.wsUrl, { headers: { 'X-Forwarded-For': '203.0.113.7' } }));
          const session = await withTimeout(started.promise, WAIT_MS, 'onSessionStart');
          assert.equal(session.clientIP, '203.0.113.7');
        });
      });

      it('an app without routes, on a router before the endpoint, does not break upgrades', async () => {
        const express = (major === 4 ? express4 : express5) as unknown as typeof express5;
        const { push, base, close } = await startRouterApp(major, [], (app, p) => {
          const router = express.Router();
          // A router does not wrap a sub-app as app.use() does; this one has no route yet.
          router.use(express());
          router.use('/push', p);
          app.use('/api', router);
          return '/api/push';
        });
        const clients: TestClient[] = [];
        try {
          clients.push(await connect(`${base}${push.endpoint}`));
          assert.equal(push.sessions().length, 1);
        } finally {
          for (const c of clients) c.ws.terminate();
          await close();
        }
      });

      it('two push middlewares on one app each serve their own endpoint and topic', async () => {
        const {
          push: first,
          base,
          close,
        } = await startRouterApp(major, [], (app, p) => {
          app.use('/first', p);
          return '';
        });
        const second = pushMiddleware(new LocalPubSub(), 'other', []);
        const clients: TestClient[] = [];
        try {
          // Mounted and attached after the first one was: the upgrade wrappers chain.
          const { app, ews } = appOf(first);
          app.use('/second', second);
          second.attach(ews);
          await second.ready;
          const a = await connect(`${base}/first/events`);
          const b = await connect(`${base}/second/events`);
          clients.push(a, b);
          await first.publish({ identity: 'task', type: 'create', entity: { to: 'first' } });
          await second.publish({ identity: 'task', type: 'create', entity: { to: 'second' } });
          await first.publish({ identity: 'task', type: 'create', entity: { to: 'first again' } });
          await a.waitForEvents(2, WAIT_MS);
          await b.waitForEvents(1, WAIT_MS);
          await second.publish({
            identity: 'task',
            type: 'create',
            entity: { to: 'second again' },
          });
          await b.waitForEvents(2, WAIT_MS);
          assert.deepEqual(
            a.events.map((e) => e.entity),
            [{ to: 'first' }, { to: 'first again' }],
          );
          assert.deepEqual(
            b.events.map((e) => e.entity),
            [{ to: 'second' }, { to: 'second again' }],
          );
          assert.equal(first.sessions().length, 1);
          assert.equal(second.sessions().length, 1);
        } finally {
          for (const c of clients) c.ws.terminate();
          await second.close();
          await close();
        }
      });
    });

    describe('§2 an unsupported Content-Type, Accept or encoding is refused with 415, as bahamut does', () => {
      const cases: Array<{ name: string; headers?: Record<string, string>; query?: object }> = [
        { name: 'Content-Type text/plain', headers: { 'Content-Type': 'text/plain' } },
        { name: 'Accept text/html', headers: { Accept: 'text/html' } },
        { name: 'Accept application/xml, text/*', headers: { Accept: 'application/xml, text/*' } },
        { name: 'encoding=xml', query: { encoding: 'xml' } },
        {
          // The parameter wins over headers, so a bad one is refused even with good headers.
          name: 'encoding=cbor with good headers',
          headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
          query: { encoding: 'cbor' },
        },
      ];
      for (const c of cases) {
        it(c.name, async () => {
          await withPushApp({ express: major }, async (app) => {
            const refusal = await expectRefusal(app.wsUrl, {
              headers: c.headers,
              query: c.query as Record<string, string> | undefined,
            });
            assertRefusal(refusal, 415, 'Unsupported Media Type', /unsupported/);
            assert.equal(app.push.sessions().length, 0);
            assert.equal(app.push.stats().sessionsRefused[415], 1);
          });
        });
      }

      it('the encoding parameter wins, so headers it overrides are not checked', async () => {
        await withPushApp({ express: major }, async (app, track) => {
          const headers = { 'Content-Type': 'text/plain', Accept: 'text/html' };
          track(await connect(app.wsUrl, { headers, query: { encoding: 'json' } }));
          assert.equal(app.push.sessions()[0]?.encodings.write, 'application/json');
        });
      });

      it('the media types the protocol names are accepted', async () => {
        await withPushApp({ express: major }, async (app, track) => {
          const accepted: Array<Record<string, string>> = [
            { 'Content-Type': 'application/msgpack', Accept: 'application/msgpack' },
            { 'Content-Type': 'application/json; charset=utf-8', Accept: '*/*' },
            { Accept: 'application/*' },
          ];
          for (const headers of accepted) {
            track(await connect(app.wsUrl, { headers }));
          }
          track(await connect(app.wsUrl, { query: { encoding: 'msgpack' } }));
          assert.equal(app.push.sessions().length, 4);
        });
      });
    });

    describe('§2 an Origin outside allowedOrigins is refused with 403', () => {
      const options = { allowedOrigins: ['https://app.example.com'] };

      it('a foreign origin gets 403', async () => {
        await withPushApp({ express: major, options }, async (app) => {
          const refusal = await expectRefusal(app.wsUrl, {
            headers: { Origin: 'https://evil.example.com' },
          });
          assertRefusal(refusal, 403, 'Forbidden', /evil\.example\.com/);
          assert.equal(app.push.sessions().length, 0);
        });
      });

      it('an allowed origin, and a client without Origin, are accepted', async () => {
        await withPushApp({ express: major, options }, async (app, track) => {
          track(await connect(app.wsUrl, { headers: { Origin: 'https://app.example.com' } }));
          track(await connect(app.wsUrl));
          assert.equal(app.push.sessions().length, 2);
        });
      });

      it('a predicate decides too', async () => {
        const allowedOrigins = (origin: string): boolean => origin.endsWith('.trusted.test');
        await withPushApp({ express: major, options: { allowedOrigins } }, async (app, track) => {
          track(await connect(app.wsUrl, { headers: { Origin: 'http://a.trusted.test' } }));
          const refusal = await expectRefusal(app.wsUrl, {
            headers: { Origin: 'http://trusted.test.evil' },
          });
          assertRefusal(refusal, 403, 'Forbidden');
        });
      });
    });

    describe('§2 authentication: KO or a throw is refused with 401', () => {
      const byToken = authPlugin((s) => (s.token === 'good' ? 'ok' : 'ko'));

      it('KO gets 401 with the default description', async () => {
        await withPushApp({ express: major, plugins: [byToken] }, async (app) => {
          const refusal = await expectRefusal(app.wsUrl, { query: { token: 'bad' } });
          assertRefusal(refusal, 401, 'Unauthorized', 'You are not authorized to start a session');
          assert.equal(app.push.sessions().length, 0);
          assert.equal(app.push.stats().sessionsRefused[401], 1);
        });
      });

      it('OK opens the session', async () => {
        await withPushApp({ express: major, plugins: [byToken] }, async (app, track) => {
          const client = track(await connect(app.wsUrl, { query: { token: 'good' } }));
          await roundTrip(app, client, 1);
        });
      });

      it('a throwing (sync or async) auth plugin gets 401 with the thrown message', async () => {
        for (const plugin of [
          authPlugin(() => {
            throw new Error('token expired');
          }),
          authPlugin(async () => {
            await Promise.resolve();
            throw new Error('token expired');
          }),
        ]) {
          await withPushApp({ express: major, plugins: [plugin] }, async (app) => {
            const refusal = await expectRefusal(app.wsUrl);
            assertRefusal(refusal, 401, 'Unauthorized', 'token expired');
          });
        }
      });

      it('a thrown PushError keeps its own status', async () => {
        const plugin = authPlugin(() => {
          throw new TooManyRequestsError('slow down');
        });
        await withPushApp({ express: major, plugins: [plugin] }, async (app) => {
          assertRefusal(await expectRefusal(app.wsUrl), 429, 'Too Many Requests', 'slow down');
        });
      });

      it('ok ends the auth chain; continue asks the next; all continue authenticates', async () => {
        const asked: string[] = [];
        const answer = (name: string, action: 'ok' | 'ko' | 'continue') =>
          authPlugin(async (s) => {
            asked.push(`${name}:${s.token}`);
            return s.token === 'skip' && name === 'first' ? 'continue' : action;
          }, name);
        const inits: string[] = [];
        const init = initPlugin((s) => {
          inits.push(s.token);
          return true;
        });
        // first says ok (or continue for token=skip), second says ko: ok must win over a later ko.
        const plugins = [answer('first', 'ok'), answer('second', 'ko'), init];
        await withPushApp({ express: major, plugins }, async (app, track) => {
          track(await connect(app.wsUrl, { query: { token: 't1' } }));
          assert.deepEqual(asked, ['first:t1']);
          assert.deepEqual(inits, ['t1'], 'init plugins still run after ok');
          asked.length = 0;
          const refusal = await expectRefusal(app.wsUrl, { query: { token: 'skip' } });
          assertRefusal(refusal, 401, 'Unauthorized');
          assert.deepEqual(asked, ['first:skip', 'second:skip']);
        });
        const allContinue = [authPlugin(() => 'continue'), authPlugin(() => 'continue')];
        await withPushApp({ express: major, plugins: allContinue }, async (app, track) => {
          track(await connect(app.wsUrl));
          assert.equal(app.push.sessions().length, 1);
        });
      });

      it('claims set by the auth plugin are on the session', async () => {
        const started = deferred<PushSession>();
        const plugins: Plugin[] = [
          authPlugin((s) => {
            s.setClaims(['sub=alice', 'org=acme']);
            return 'ok';
          }),
          { onSessionStart: (s) => started.resolve(s) },
        ];
        await withPushApp({ express: major, plugins }, async (app, track) => {
          track(await connect(app.wsUrl));
          const session = await withTimeout(started.promise, WAIT_MS, 'onSessionStart');
          assert.deepEqual(session.claims, ['sub=alice', 'org=acme']);
          assert.equal(session.claimsMap.sub, 'alice');
        });
      });
    });

    describe('§2 authorization: an init plugin returning false or throwing is refused with 403', () => {
      it('false gets 403', async () => {
        const plugin = initPlugin((s) => s.parameter('namespace') === '/allowed');
        await withPushApp({ express: major, plugins: [plugin] }, async (app, track) => {
          const refusal = await expectRefusal(app.wsUrl, { query: { namespace: '/other' } });
          assertRefusal(refusal, 403, 'Forbidden');
          track(await connect(app.wsUrl, { query: { namespace: '/allowed' } }));
          assert.equal(app.push.sessions().length, 1);
        });
      });

      it('a throw gets 403 with the thrown message', async () => {
        const plugin = initPlugin(async () => {
          throw new Error('namespace is archived');
        });
        await withPushApp({ express: major, plugins: [plugin] }, async (app) => {
          assertRefusal(await expectRefusal(app.wsUrl), 403, 'Forbidden', 'namespace is archived');
        });
      });

      it('a custom plugin that does not call next() refuses with 403', async () => {
        const plugin = definePlugin({ session: () => undefined });
        await withPushApp({ express: major, plugins: [plugin] }, async (app) => {
          assertRefusal(await expectRefusal(app.wsUrl), 403, 'Forbidden');
        });
      });

      it('a custom plugin throwing a PushError uses its status', async () => {
        const plugins = [
          definePlugin({
            session(ctx) {
              if (ctx.session.token === '') throw new UnauthorizedError('no token');
              throw new ForbiddenError('read-only token');
            },
          }),
        ];
        await withPushApp({ express: major, plugins }, async (app) => {
          assertRefusal(await expectRefusal(app.wsUrl), 401, 'Unauthorized', 'no token');
          assertRefusal(
            await expectRefusal(app.wsUrl, { query: { token: 'ro' } }),
            403,
            'Forbidden',
            'read-only token',
          );
        });
      });
    });

    describe('§2 a server shutting down refuses with 503', () => {
      it('after close(), a connection attempt gets 503', async () => {
        let asked = 0;
        const plugin = authPlugin(() => {
          asked++;
          return 'ok';
        });
        await withPushApp({ express: major, plugins: [plugin] }, async (app) => {
          await app.push.close();
          const refusal = await expectRefusal(app.wsUrl);
          assertRefusal(refusal, 503, 'Service Unavailable');
          assert.equal(asked, 0, 'no plugin runs once closed');
          assert.equal(app.push.sessions().length, 0);
        });
      });

      it('close() during the session phase refuses the pending attempt with 503', async () => {
        const entered = deferred();
        const release = deferred();
        const plugin = authPlugin(async (): Promise<AuthAction> => {
          entered.resolve();
          await release.promise;
          return 'ok';
        });
        await withPushApp({ express: major, plugins: [plugin] }, async (app) => {
          const refusal = expectRefusal(app.wsUrl);
          await withTimeout(entered.promise, WAIT_MS, 'auth plugin not called');
          const closing = app.push.close();
          release.resolve();
          assertRefusal(await refusal, 503, 'Service Unavailable');
          await closing;
          assert.equal(app.push.sessions().length, 0);
        });
      });

      it('a hanging session phase is refused with 503 after sessionTimeout', async () => {
        const plugin = authPlugin(() => new Promise<'ok'>(() => undefined));
        const options = { sessionTimeout: 100 };
        await withPushApp({ express: major, plugins: [plugin], options }, async (app) => {
          const start = Date.now();
          const refusal = await expectRefusal(app.wsUrl);
          assert.ok(Date.now() - start >= 90, 'not before the timeout');
          assertRefusal(refusal, 503, 'Service Unavailable', /timed out/);
          assert.equal(app.push.sessions().length, 0);
        });
      });

      it('a hanging Express middleware is bounded by sessionTimeout as well', async () => {
        const before = (a: express5.Express): void => {
          a.use('/api', () => undefined); // never answers, never calls next()
        };
        await withPushApp(
          { express: major, before, options: { sessionTimeout: 100 } },
          async (app) => {
            assertRefusal(await expectRefusal(app.wsUrl), 503, 'Service Unavailable');
          },
        );
      });
    });

    describe('§2 Express middleware mounted before the endpoint runs first, once', () => {
      /** A cookie check: 429 JSON or 401 text of its own, else `req.user` for the plugins. */
      function cookieCheck(calls: string[]): (a: express5.Express) => void {
        return (a) => {
          a.use((req, res, next) => {
            calls.push(`mw:${req.path}`);
            const cookie = req.headers.cookie ?? '';
            if (cookie.includes('limited=1')) {
              res.status(429).json({ error: 'rate limited by the app' });
              return;
            }
            if (!cookie.includes('sid=')) {
              res.status(401).type('text/plain').send('login first');
              return;
            }
            (req as unknown as { user: string }).user = 'alice';
            next();
          });
        };
      }

      function recordingPlugin(calls: string[]): Plugin {
        return definePlugin({
          name: 'recorder',
          session(ctx, next) {
            calls.push(`plugin:${(ctx.request as unknown as { user?: string }).user}`);
            return next();
          },
        });
      }

      it("a middleware's own 429 and 401 reach the client; the plugins do not run", async () => {
        const calls: string[] = [];
        const opts = {
          express: major,
          before: cookieCheck(calls),
          plugins: [recordingPlugin(calls)],
        };
        await withPushApp(opts, async (app) => {
          const limited = await expectRefusal(app.wsUrl, { headers: { Cookie: 'limited=1' } });
          assert.equal(limited.status, 429);
          assert.match(limited.contentType ?? '', /^application\/json/);
          assert.deepEqual(limited.body, { error: 'rate limited by the app' });
          assert.deepEqual(calls, ['mw:/api/events']);

          calls.length = 0;
          const anonymous = await expectRefusal(app.wsUrl);
          assert.equal(anonymous.status, 401);
          assert.equal(anonymous.body, 'login first');
          assert.deepEqual(calls, ['mw:/api/events']);
          assert.equal(app.push.sessions().length, 0);
        });
      });

      it('a middleware that passes runs exactly once, before the plugin chain', async () => {
        const calls: string[] = [];
        const opts = {
          express: major,
          before: cookieCheck(calls),
          plugins: [recordingPlugin(calls)],
        };
        await withPushApp(opts, async (app, track) => {
          const client = track(await connect(app.wsUrl, { headers: { Cookie: 'sid=1' } }));
          assert.deepEqual(calls, ['mw:/api/events', 'plugin:alice']);
          await roundTrip(app, client, 1);
          assert.equal(calls.length, 2, 'nothing runs again once the session is open');
        });
      });
    });

    describe("§1 express-ws's own routes keep working beside the endpoint", () => {
      it('app.ws routes, also under the same mount point, are not the push endpoint', async () => {
        let pluginRuns = 0;
        const plugin = definePlugin({
          session(_ctx, next) {
            pluginRuns++;
            return next();
          },
        });
        const before = (a: express5.Express): void => {
          const wsApp = a as unknown as expressWs.Application;
          wsApp.ws('/echo', (ws) => ws.on('message', (m) => ws.send(`echo:${String(m)}`)));
          wsApp.ws('/api/chat', (ws) => ws.on('message', (m) => ws.send(`chat:${String(m)}`)));
        };
        await withPushApp({ express: major, before, plugins: [plugin] }, async (app, track) => {
          const base = app.url.replace(/^http:/, 'ws:');
          assert.equal(await echo(`${base}/echo`, 'hi'), 'echo:hi');
          assert.equal(await echo(`${base}/api/chat`, 'yo'), 'chat:yo');
          assert.equal(pluginRuns, 0);
          const client = track(await connect(app.wsUrl));
          assert.equal(pluginRuns, 1);
          await roundTrip(app, client, 1);
        });
      });
    });

    describe('§2 without attach(), the endpoint closes the socket with 1008', () => {
      it('express-ws opened it, so the endpoint refuses by policy', async () => {
        const { logger, lines } = memoryLogger();
        await withPushApp(
          { express: major, noAttach: true, options: { logger } },
          async (app, track) => {
            const client = track(await connect(app.wsUrl));
            const closed = await withTimeout(client.closed, WAIT_MS, 'no close');
            assert.equal(closed.code, 1008);
            assert.equal(app.push.sessions().length, 0);
            assert.ok(lines.some((l) => l.level === 'error' && /attach/.test(l.msg)));
          },
        );
      });
    });

    describe('§2 a client that leaves during the handshake leaves nothing behind', () => {
      for (const action of ['ok', 'ko'] as const) {
        it(`the slow auth plugin then answers ${action}: no session, no crash`, async () => {
          const entered = deferred();
          const serverSawClose = deferred();
          const release = deferred();
          let starts = 0;
          const plugins: Plugin[] = [
            // First in the chain: it watches the socket before the slow auth plugin waits.
            definePlugin({
              session(ctx, next) {
                ctx.request.socket.once('close', () => serverSawClose.resolve());
                return next();
              },
              onSessionStart: () => {
                starts++;
              },
            }),
            authPlugin(async (s) => {
              if (s.token !== 'slow') return 'ok';
              entered.resolve();
              await release.promise;
              return action;
            }),
          ];
          await withPushApp({ express: major, plugins }, async (app, track) => {
            const url = new URL(app.wsUrl);
            url.searchParams.set('token', 'slow');
            const ws = new WebSocket(url);
            ws.on('error', () => undefined);
            await withTimeout(entered.promise, WAIT_MS, 'auth plugin not called');
            ws.terminate();
            await withTimeout(serverSawClose.promise, WAIT_MS, 'the server did not see the close');
            release.resolve();
            // A later client proves the server is alive and is the only session ever started.
            const marker = track(await connect(app.wsUrl, { query: { token: 'fast' } }));
            await roundTrip(app, marker, 1);
            assert.equal(app.push.sessions().length, 1);
            assert.equal(app.push.sessions()[0]?.token, 'fast');
            assert.equal(app.push.stats().sessionsAccepted, 1);
            assert.equal(app.push.stats().sessionsAbandoned, 1);
            assert.deepEqual(app.push.stats().sessionsRefused, {});
            assert.equal(starts, 1);
          });
        });
      }
    });

    describe('§1 standalone routers (router 2.2 and 2.3) carry the endpoint', () => {
      for (const [name, Router] of [
        ['router 2.2', Router22],
        ['router 2.3', Router23],
      ] as const) {
        it(`${name}, nested in a router mounted with a parameter`, async () => {
          const plugins = [authPlugin((s) => (s.token === 'good' ? 'ok' : 'ko'))];
          const { push, base, close } = await startRouterApp(major, plugins, (app, p) => {
            const inner = Router();
            inner.use('/push', p);
            const outer = Router();
            outer.use('/v1', inner);
            app.use('/tenants/:tenant', outer);
            return '/tenants/acme/v1/push';
          });
          const clients: TestClient[] = [];
          try {
            const wsUrl = `${base}${push.endpoint}`;
            const client = await connect(wsUrl, { query: { token: 'good' } });
            clients.push(client);
            await push.publish({ identity: 'task', type: 'create', entity: { ID: '1' } });
            await client.waitForEvents(1, WAIT_MS);
            // The plugin chain ran before the handshake: a refusal is an HTTP 401.
            assertRefusal(
              await expectRefusal(wsUrl, { query: { token: 'bad' } }),
              401,
              'Unauthorized',
            );
            const response = await fetch(httpUrl(wsUrl));
            assert.equal(response.status, 426);
            const other = await fetch(httpUrl(`${base}/other`));
            assert.equal(other.status, 404);
          } finally {
            for (const c of clients) c.ws.terminate();
            await close();
          }
        });
      }
    });
  });
}

const apps = new WeakMap<PushMiddleware, { app: express5.Express; ews: expressWs.Instance }>();

/** The app and express-ws instance a middleware of {@link startRouterApp} was mounted on. */
function appOf(push: PushMiddleware): { app: express5.Express; ews: expressWs.Instance } {
  const found = apps.get(push);
  assert.ok(found);
  return found;
}

/**
 * An app of the given major whose routing `build` sets up with the push middleware; it
 * returns the path of the push middleware's mount point.
 */
async function startRouterApp(
  major: ExpressMajor,
  plugins: Plugin[],
  build: (app: express5.Express, push: PushMiddleware) => string,
): Promise<{ push: PushMiddleware; base: string; close(): Promise<void> }> {
  const express = (major === 4 ? express4 : express5) as unknown as typeof express5;
  const app = express();
  const ews = expressWs(app as never);
  const push = pushMiddleware(new LocalPubSub(), 'events', plugins);
  const mount = build(app, push);
  push.attach(ews);
  apps.set(push, { app, ews });
  await push.ready;
  const server = app.listen(0, '127.0.0.1') as Server;
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    push,
    base: `ws://127.0.0.1:${port}${mount}`,
    async close() {
      await push.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
