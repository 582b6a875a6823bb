/**
 * The security checklist of issue 5, one `describe` per promise, against
 * real servers and real sockets. A reviewer can read the titles as the
 * list of what pushwire guarantees at its public edge:
 *
 *  1. unauthenticated clients are never upgraded and never receive an event;
 *  2. a token expiring mid-session closes the session (1008) when asked;
 *  3. a push config's `parameters` cannot widen the claims auth granted;
 *  4. malformed credentials are 401, never 500;
 *  5. refusal responses never echo the token;
 *  6. the token, `Authorization` and `Cookie` never reach the logs;
 *  7. the origin allow-list refuses a foreign page (403) before the handshake;
 *  8. abuse limits: attempts per address (429, bounded memory), sessions per
 *     address and per claim, push configs per second, frame size (1009).
 *
 * Nothing sleeps: each test waits for the response, close or event that
 * proves its point, with a deadline. Where a test must show that something
 * did NOT arrive, it waits for a later event on the same socket, which
 * would have arrived after it.
 */
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, it } from 'node:test';
import {
  authPlugin,
  initPlugin,
  type AuthAction,
  type Logger,
  type Plugin,
  type PushSession,
  type SessionContext,
} from '../../lib/index.js';
import { jwtAuthPlugin } from '../../plugins/jwt/index.js';
import {
  clientKey,
  connectionRateLimitPlugin,
  sessionLimitPlugin,
} from '../../plugins/limits/index.js';
import { tenantIsolationPlugin } from '../../plugins/tenant/index.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import {
  connectClient,
  expectRefusal,
  startPushApp,
  type PushApp,
  type PushAppOptions,
  type TestClient,
} from '../helpers/push-app.js';
import {
  captureLogger,
  rawUpgrade,
  signHs256,
  TEST_SECRET,
  unsignedToken,
} from '../helpers/security.js';
import { waitFor } from '../helpers/wait.js';

const WAIT_MS = 5_000;

failOnUnhandledRejections({ uncaughtExceptions: true });

/** Apps started by a test, closed after it whatever happened. */
const running: PushApp[] = [];
async function app(options: PushAppOptions): Promise<PushApp> {
  const started = await startPushApp(options);
  running.push(started);
  return started;
}
afterEach(async () => {
  await Promise.all(running.splice(0).map((a) => a.close()));
});

const portOf = (a: PushApp): number => (a.server.address() as AddressInfo).port;
const pathOf = (a: PushApp): string => new URL(a.wsUrl).pathname;
const nowSec = (): number => Math.floor(Date.now() / 1000);
const task = (ID: number, extra: Record<string, unknown> = {}) => ({
  identity: 'task',
  type: 'create',
  entity: { ID, ...extra },
});

/** A JWT plugin with the test secret; claims as the default mapper writes them. */
const jwt = (extra: Parameters<typeof jwtAuthPlugin>[0] = {}): Plugin =>
  jwtAuthPlugin({ key: TEST_SECRET, algorithms: ['HS256'], ...extra });

/** Signs a compact JWS over arbitrary header and payload text (to craft malformed tokens). */
function craft(header: unknown, payload: string): string {
  const h = Buffer.from(JSON.stringify(header)).toString('base64url');
  const p = Buffer.from(payload).toString('base64url');
  const sig = createHmac('sha256', TEST_SECRET).update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${sig}`;
}

// ---------------------------------------------------------------------------

describe('1. unauthenticated clients are never upgraded and never receive an event', () => {
  it('answers a client without a token with a complete 401 response and closes: no 101, no frame', async () => {
    const a = await app({ plugins: [jwt()] });
    const token = await signHs256({ sub: 'alice' });
    const member = await connectClient(a.wsUrl, { query: { token } });
    // Events flow to the authenticated session while the anonymous one knocks.
    await a.push.publish(task(1));
    const raw = await rawUpgrade(portOf(a), pathOf(a));
    await a.push.publish(task(2));
    await member.waitForEvents(2, WAIT_MS);

    assert.equal(raw.status, 401);
    assert.doesNotMatch(raw.text, /101 Switching Protocols/);
    const length = Number(/\r\ncontent-length: (\d+)/i.exec(raw.text)?.[1]);
    assert.equal(Buffer.byteLength(raw.body, 'latin1'), length, 'nothing after the body');
    const body = JSON.parse(raw.body) as Array<{ code: number; title: string }>;
    assert.equal(body[0]?.code, 401);
    assert.equal(body[0]?.title, 'Unauthorized');
    assert.equal(a.push.sessions().length, 1, 'only the authenticated session exists');
    member.close();
  });

  it('never registers a session for a refused token, whatever is wrong with it', async () => {
    const a = await app({ plugins: [jwt()] });
    const bad = [
      await signHs256({ sub: 'alice', exp: nowSec() - 10 }),
      await signHs256({ sub: 'alice' }, { secret: 'x'.repeat(40) }),
      unsignedToken({ sub: 'root' }),
      'garbage',
    ];
    for (const token of bad) {
      const refusal = await expectRefusal(a.wsUrl, { query: { token } });
      assert.equal(refusal.status, 401);
      assert.equal(refusal.opened, false);
    }
    const stats = a.push.stats();
    assert.equal(stats.sessionsAccepted, 0);
    assert.equal(stats.sessionsRefused[401], bad.length);
  });

  it('an auth chain where nobody says ok is not an open door when the JWT plugin ends it', async () => {
    // bahamut's rule: all `continue` means authenticated. The JWT plugin says ko on a missing token.
    const a = await app({ plugins: [authPlugin(() => 'continue'), jwt()] });
    assert.equal((await expectRefusal(a.wsUrl)).status, 401);
  });
});

describe('2. a token expiring mid-session closes the session with 1008 when asked', () => {
  it('closes at exp with closeOnExpiry, not before; leaves it open otherwise; clears the timer of an ended session', async () => {
    const log = captureLogger();
    const closing = await app({ plugins: [jwt({ closeOnExpiry: true, logger: log.logger })] });
    const keeping = await app({ plugins: [jwt()] });
    const exp = nowSec() + 2;
    const token = await signHs256({ sub: 'alice', exp });

    // A session that ends before its token does: its timer must go with it.
    const early = await connectClient(closing.wsUrl, { query: { token } });
    early.close();
    await early.closed;
    await waitFor(() => closing.push.sessions().length === 0, {
      timeout: WAIT_MS,
      message: 'the early session unregistered',
    });

    const expiring = await connectClient(closing.wsUrl, { query: { token } });
    const staying = await connectClient(keeping.wsUrl, { query: { token } });
    await closing.push.publish(task(1));
    await expiring.waitForEvents(1, WAIT_MS); // mid-session: it works until exp

    const closed = await expiring.closed;
    assert.equal(closed.code, 1008);
    assert.equal(closed.reason, 'token expired');
    assert.ok(Date.now() >= exp * 1000 - 50, 'not closed before exp');

    assert.equal(staying.ws.readyState, staying.ws.OPEN, 'without closeOnExpiry it stays open');
    await keeping.push.publish(task(2));
    await staying.waitForEvents(1, WAIT_MS);
    const expiries = log.records.filter((r) => r.msg === 'pushwire: token expired, closing');
    assert.equal(expiries.length, 1, 'only the live session was closed by its timer');
    staying.close();
  });

  it('a token valid for longer than a timer can wait (30 days) does not close the session at once', async () => {
    const a = await app({ plugins: [jwt({ closeOnExpiry: true })] });
    const token = await signHs256({ sub: 'alice' }, { expiresIn: '30d' });
    const client = await connectClient(a.wsUrl, { query: { token } });
    await a.push.publish(task(1));
    await client.waitForEvents(1, WAIT_MS);
    assert.equal(client.ws.readyState, client.ws.OPEN);
    assert.equal(a.push.sessions()[0]?.isOpen, true);
    client.close();
  });
});

describe('3. a push config cannot widen the claims auth granted', () => {
  it('parameters change session.parameter(), never claims; tenant isolation keeps to the claim', async () => {
    const a = await app({ plugins: [jwt(), tenantIsolationPlugin()] });
    const token = await signHs256({ sub: 'alice', namespace: '/acme' });
    // The query tries too: `namespace=/` as a parameter.
    const client = await connectClient(a.wsUrl, { query: { token, namespace: '/' } });
    const session = a.push.sessions()[0] as PushSession;
    const granted = [...session.claims];
    client.sendConfig({ parameters: { namespace: ['/'], sub: ['root'] } });
    await waitFor(
      () => session.parameter('namespace') === '/' && session.pushConfig !== undefined,
      {
        timeout: WAIT_MS,
        message: 'the config applied',
      },
    );
    assert.equal(session.parameter('sub'), 'root', 'parameters are the client’s to set…');
    assert.deepEqual(session.claims, granted, '…claims are not');
    assert.equal(session.claimsMap.namespace, '/acme');
    assert.equal(session.claimsMap.sub, 'alice');

    // Published in order: if /other were delivered, it would arrive before /acme.
    await a.push.publish(task(1, { namespace: '/other' }), task(2, { namespace: '/acme' }));
    const [first] = await client.waitForEvents(1, WAIT_MS);
    assert.deepEqual(first?.entity, { ID: 2, namespace: '/acme' });
    assert.equal(client.events.length, 1);
    client.close();
  });
});

/** Credentials that are wrong in shape rather than in content, each with where it is sent. */
type BadCredential = {
  what: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
};

async function badCredentials(): Promise<BadCredential[]> {
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  return [
    { what: 'Authorization: Bearer (no token)', headers: { Authorization: 'Bearer' } },
    { what: 'Authorization: Bearer + spaces', headers: { Authorization: 'Bearer     ' } },
    { what: 'Authorization: two tokens', headers: { Authorization: 'Bearer a.b.c d.e.f' } },
    {
      what: 'Authorization: a tab instead of a space',
      headers: { Authorization: 'Bearer\tx.y.z' },
    },
    { what: 'Authorization: not a JWT', headers: { Authorization: 'Bearer not-a-jwt-at-all' } },
    {
      what: 'Authorization: two segments',
      headers: { Authorization: `Bearer ${b64({ alg: 'HS256' })}.e30` },
    },
    { what: 'Authorization: only dots', headers: { Authorization: 'Bearer ....' } },
    {
      what: 'Authorization: 9 KiB token',
      headers: { Authorization: `Bearer ${'A'.repeat(9216)}` },
    },
    { what: 'Authorization: Basic only', headers: { Authorization: 'Basic dXNlcjpwYXNzd29yZA==' } },
    {
      what: 'token: 9 KiB',
      query: { token: `${'a'.repeat(4000)}.${'b'.repeat(4000)}.${'c'.repeat(1200)}` },
    },
    { what: 'token: NUL byte', query: { token: 'a.b\u0000.c' } },
    { what: 'token: non-ASCII', query: { token: 'é.é.é' } },
    { what: 'token: header not JSON', query: { token: 'bm90LWpzb24.e30.c2lnbmF0dXJl' } },
    {
      what: 'token: header without alg',
      query: { token: `${b64({ typ: 'JWT' })}.e30.c2lnbmF0dXJl` },
    },
    {
      what: 'token: unknown crit header',
      query: { token: craft({ alg: 'HS256', crit: ['x'], x: 1 }, '{}') },
    },
    {
      what: 'token: claims are an array (validly signed)',
      query: { token: craft({ alg: 'HS256' }, '[1,2]') },
    },
    {
      what: 'token: claims not JSON (validly signed)',
      query: { token: craft({ alg: 'HS256' }, '{sub:') },
    },
    {
      what: 'token: exp is a string (validly signed)',
      query: { token: craft({ alg: 'HS256' }, '{"exp":"tomorrow"}') },
    },
    { what: 'token: alg none', query: { token: `${unsignedToken({ sub: 'root' })}c2ln` } },
    { what: 'token: expired', query: { token: await signHs256({ sub: 'a', exp: nowSec() - 5 }) } },
    { what: 'cookie: malformed', headers: { Cookie: 'sid=%E0%A4%A; other' } },
  ];
}

describe('4. malformed credentials are refused with 401, never 500', () => {
  it('answers every malformed header, oversized or malformed token with 401 and a JSON body', async () => {
    const a = await app({ plugins: [jwt({ cookieName: 'sid' })] });
    for (const bad of await badCredentials()) {
      const refusal = await expectRefusal(a.wsUrl, bad);
      assert.equal(refusal.status, 401, `${bad.what}: ${JSON.stringify(refusal.body)}`);
      assert.match(refusal.contentType ?? '', /application\/json/);
      assert.equal((refusal.body as Array<{ code: number }>)[0]?.code, 401, bad.what);
    }
    assert.equal(a.push.stats().sessionsRefused[500], undefined);
  });
});

describe('5. refusal responses never echo the token', () => {
  it('keeps the token and every piece of it out of the status line, headers and body', async () => {
    const a = await app({ plugins: [jwt({ cookieName: 'sid' })] });
    const secretish = await signHs256({ sub: 'alice' }, { secret: 'y'.repeat(40) });
    const cases: BadCredential[] = [
      ...(await badCredentials()),
      { what: 'wrong signature in the query', query: { token: secretish } },
      { what: 'wrong signature in the header', headers: { Authorization: `Bearer ${secretish}` } },
      { what: 'wrong signature in the cookie', headers: { Cookie: `sid=${secretish}` } },
    ];
    for (const bad of cases) {
      const credential =
        bad.query?.token ??
        bad.headers?.Authorization?.replace(/^\S+\s*/, '') ??
        bad.headers?.Cookie ??
        '';
      const headers = bad.headers ?? {};
      const query = new URLSearchParams(bad.query ?? {}).toString();
      const raw = await rawUpgrade(portOf(a), `${pathOf(a)}${query ? `?${query}` : ''}`, headers);
      assert.equal(raw.status, 401, bad.what);
      const pieces = credential.split(/[.\s;=]+/).filter((p) => p.length >= 6);
      for (const piece of pieces) {
        assert.ok(
          !raw.text.includes(piece),
          `${bad.what}: the response contains ${piece.slice(0, 12)}…`,
        );
      }
    }
  });
});

describe('6. the token, Authorization and Cookie never appear in logs', () => {
  it('logs accepted and refused sessions (core and plugins, every level) without a secret', async () => {
    const log = captureLogger();
    const logger: Logger = log.logger;
    const a = await app({
      options: { logger, maxConfigsPerSecond: 2 },
      plugins: [
        connectionRateLimitPlugin({ maxAttempts: 100, logger }),
        sessionLimitPlugin({ maxPerIP: 100, maxPerClaim: 2, logger }),
        jwtAuthPlugin({ key: TEST_SECRET, cookieName: 'sid', logger }),
        tenantIsolationPlugin({ logger }),
      ],
    });
    const tokens = await Promise.all(
      ['query', 'header', 'cookie'].map((via) =>
        signHs256({ sub: `user-${via}`, namespace: '/acme' }),
      ),
    );
    const [viaQuery, viaHeader, viaCookie] = tokens as [string, string, string];
    const clients: TestClient[] = [
      await connectClient(a.wsUrl, { query: { token: viaQuery, enableErrors: '1' } }),
      await connectClient(a.wsUrl, { headers: { Authorization: `Bearer ${viaHeader}` } }),
      await connectClient(a.wsUrl, { headers: { Cookie: `theme=dark; sid=${viaCookie}` } }),
    ];
    const refusedTokens = [
      await signHs256({ sub: 'x' }, { secret: 'z'.repeat(40) }),
      await signHs256({ sub: 'x', exp: nowSec() - 30 }),
    ];
    await expectRefusal(a.wsUrl, { query: { token: refusedTokens[0] as string } });
    await expectRefusal(a.wsUrl, { headers: { Authorization: `Bearer ${refusedTokens[1]}` } });
    await expectRefusal(a.wsUrl, { headers: { Authorization: 'Bearer malformed-header-token' } });
    await expectRefusal(a.wsUrl, { headers: { Cookie: `sid=${refusedTokens[0]}` } });
    // Sessions per claim (429) and an invalid config and a config flood, all logged.
    await connectClient(a.wsUrl, { query: { token: viaQuery } }).then((c) => clients.push(c));
    await expectRefusal(a.wsUrl, { query: { token: viaQuery } });
    const first = clients[0] as TestClient;
    first.ws.send('{not json');
    for (let i = 0; i < 5; i++) first.sendConfig({});
    await a.push.publish(task(1)); // no namespace: the tenant plugin logs it
    await first.waitForEvents(2, WAIT_MS);
    for (const c of clients) c.close();
    await waitFor(() => a.push.sessions().length === 0, {
      timeout: WAIT_MS,
      message: 'all closed',
    });

    const text = log.text();
    // The capture did capture: refusals, starts and stops are all there.
    for (const msg of [
      'pushwire: session refused',
      'pushwire: jwt refused',
      'pushwire: session started',
      'pushwire: session closed',
      'pushwire: too many sessions',
      'pushwire: push config rate exceeded',
    ]) {
      assert.ok(
        log.records.some((r) => r.msg === msg),
        `logged: ${msg}`,
      );
    }
    for (const secret of [...tokens, ...refusedTokens, 'malformed-header-token', TEST_SECRET]) {
      for (const piece of secret.split('.').filter((p) => p.length >= 6)) {
        assert.ok(
          !text.includes(piece),
          `a log line contains a piece of a secret: ${piece.slice(0, 10)}…`,
        );
      }
    }
    assert.doesNotMatch(text, /Bearer/i);
    assert.doesNotMatch(text, /theme=dark|sid=/);
  });
});

describe('7. the origin allow-list refuses a foreign page with 403 before the handshake', () => {
  it('refuses a foreign Origin even with a valid cookie; accepts the listed one and non-browser clients', async () => {
    let verified = 0;
    const a = await app({
      options: { allowedOrigins: ['https://app.example'] },
      plugins: [
        jwtAuthPlugin({
          verify: async (t) => {
            verified++;
            return { sub: t === 'good.cookie.value' ? 'alice' : 'nobody' };
          },
          cookieName: 'sid',
        }),
      ],
    });
    const cookie = { Cookie: 'sid=good.cookie.value' };
    // Cross-site WebSocket hijacking: the browser sends the user's cookie from any page.
    const raw = await rawUpgrade(portOf(a), pathOf(a), {
      ...cookie,
      Origin: 'https://evil.example',
    });
    assert.equal(raw.status, 403);
    assert.doesNotMatch(raw.text, /101 Switching Protocols/);
    assert.equal(verified, 0, 'refused before any plugin ran');

    const listed = await connectClient(a.wsUrl, {
      headers: { ...cookie, Origin: 'https://app.example' },
    });
    const cased = await connectClient(a.wsUrl, {
      headers: { ...cookie, Origin: 'HTTPS://APP.EXAMPLE' },
    });
    const cli = await connectClient(a.wsUrl, { headers: cookie }); // no Origin: not a browser
    assert.equal(a.push.sessions().length, 3);
    for (const c of [listed, cased, cli]) c.close();
  });

  it('is off by default: any Origin is accepted (turn it on when cookies authenticate)', async () => {
    const a = await app({ plugins: [jwt({ cookieName: 'sid' })] });
    const token = await signHs256({ sub: 'alice' });
    const client = await connectClient(a.wsUrl, {
      headers: { Cookie: `sid=${token}`, Origin: 'https://evil.example' },
    });
    client.close();
  });
});

describe('8. abuse limits', () => {
  const trustProxy = (e: { set(k: string, v: unknown): unknown }): void => {
    e.set('trust proxy', true);
  };
  const from = (ip: string, extra: Record<string, string> = {}) => ({
    headers: { 'X-Forwarded-For': ip, ...extra },
  });

  it('connection attempts per address: 429 before the handshake and before auth runs', async () => {
    let verified = 0;
    const a = await app({
      before: trustProxy,
      plugins: [
        connectionRateLimitPlugin({ maxAttempts: 3, intervalMs: 60_000 }),
        jwtAuthPlugin({
          verify: (t) => {
            verified++;
            if (t !== 'good.token.here') throw new Error('bad');
            return { sub: 'alice' };
          },
        }),
      ],
    });
    for (let i = 0; i < 3; i++) {
      assert.equal(
        (await expectRefusal(a.wsUrl, { ...from('10.0.0.1'), query: { token: 'x.y.z' } })).status,
        401,
      );
    }
    const raw = await rawUpgrade(portOf(a), `${pathOf(a)}?token=good.token.here`, {
      'X-Forwarded-For': '10.0.0.1',
    });
    assert.equal(raw.status, 429);
    assert.doesNotMatch(raw.text, /101 Switching Protocols/);
    const body = JSON.parse(raw.body) as Array<{ title: string; data: { retryAfter: number } }>;
    assert.equal(body[0]?.title, 'Too Many Requests');
    assert.ok((body[0]?.data.retryAfter ?? 0) > 0);
    assert.equal(verified, 3, 'the refused attempt never reached token verification');
    // Another address is not affected.
    const other = await connectClient(a.wsUrl, {
      ...from('10.0.0.2'),
      query: { token: 'good.token.here' },
    });
    other.close();
  });

  it('connection attempts: a new window starts after the interval', async () => {
    let t = 1_000_000;
    const a = await app({
      before: trustProxy,
      plugins: [connectionRateLimitPlugin({ maxAttempts: 1, intervalMs: 10_000, now: () => t })],
    });
    (await connectClient(a.wsUrl, from('10.0.0.3'))).close();
    assert.equal((await expectRefusal(a.wsUrl, from('10.0.0.3'))).status, 429);
    t += 10_000;
    (await connectClient(a.wsUrl, from('10.0.0.3'))).close();
  });

  it('connection attempts: the counters stay bounded under a flood of addresses', async () => {
    let t = 0;
    const limiter = connectionRateLimitPlugin({
      maxAttempts: 5,
      intervalMs: 60_000,
      maxTrackedClients: 1_000,
      now: () => t,
    });
    // As the chain calls it: a synchronous throw becomes a rejection.
    const attempt = async (clientIP: string): Promise<void> => {
      const ctx = { session: { clientIP } as PushSession, state: {} } as unknown as SessionContext;
      await limiter.session?.(ctx, async () => undefined);
    };
    let max = 0;
    for (let i = 0; i < 100_000; i++) {
      await attempt(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
      t += 1;
      max = Math.max(max, limiter.trackedClients);
    }
    assert.equal(max, 1_000, 'never more than maxTrackedClients');
    // Expired windows are swept: a minute later one attempt leaves one counter.
    t += 60_000;
    await attempt('192.0.2.1');
    assert.equal(limiter.trackedClients, 1);
    // One IPv6 host owns a /64: fresh addresses inside it share one counter.
    const refusals: number[] = [];
    for (let i = 0; i < 8; i++) {
      await attempt(`2001:db8:1:2:${i.toString(16)}::1`).catch((e: { status: number }) =>
        refusals.push(e.status),
      );
    }
    assert.deepEqual(refusals, [429, 429, 429]);
    assert.equal(clientKey('::ffff:10.1.2.3'), '10.1.2.3');

    // The same bound with real sockets and forwarded addresses.
    const real = connectionRateLimitPlugin({ maxTrackedClients: 20 });
    const a = await app({ before: trustProxy, plugins: [real, initPlugin(() => false)] });
    for (let i = 0; i < 60; i++) {
      assert.equal((await expectRefusal(a.wsUrl, from(`198.51.100.${i}`))).status, 403);
      assert.ok(real.trackedClients <= 20);
    }
  });

  it('sessions per address: 429 past the limit, room again once one closes', async () => {
    const limits = sessionLimitPlugin({ maxPerIP: 2, maxPerClaim: 0 });
    const a = await app({ before: trustProxy, plugins: [limits] });
    const c1 = await connectClient(a.wsUrl, from('10.0.1.1'));
    const c2 = await connectClient(a.wsUrl, from('10.0.1.1'));
    const refusal = await expectRefusal(a.wsUrl, from('10.0.1.1'));
    assert.equal(refusal.status, 429);
    const elsewhere = await connectClient(a.wsUrl, from('10.0.1.2'));
    c1.close();
    await waitFor(() => limits.sessionsFor('10.0.1.1') === 1, {
      timeout: WAIT_MS,
      message: 'stop counted',
    });
    const c3 = await connectClient(a.wsUrl, from('10.0.1.1'));
    for (const c of [c2, c3, elsewhere]) c.close();
    await waitFor(() => limits.trackedKeys === 0, { timeout: WAIT_MS, message: 'memory released' });
  });

  it('sessions per claim: one user gets 429 past the limit from any address; placed before auth it still works', async () => {
    const limits = sessionLimitPlugin({ maxPerIP: 0, claim: 'sub', maxPerClaim: 2 });
    const auth = authPlugin((s) => {
      s.setClaims([`sub=${s.token}`]);
      return 'ok';
    });
    const a = await app({ before: trustProxy, plugins: [limits, auth] });
    const alice1 = await connectClient(a.wsUrl, { ...from('10.0.2.1'), query: { token: 'alice' } });
    const alice2 = await connectClient(a.wsUrl, { ...from('10.0.2.2'), query: { token: 'alice' } });
    const refusal = await expectRefusal(a.wsUrl, {
      ...from('10.0.2.3'),
      query: { token: 'alice' },
    });
    assert.equal(refusal.status, 429);
    const bob = await connectClient(a.wsUrl, { query: { token: 'bob' } });
    assert.equal(limits.sessionsForClaim('alice'), 2);
    for (const c of [alice1, alice2, bob]) c.close();
  });

  it('sessions per address: concurrent attempts never leave more than the limit open', async () => {
    const limits = sessionLimitPlugin({ maxPerIP: 3, maxPerClaim: 0 });
    // An async auth step widens the window in which attempts pass the check together.
    const slowAuth = authPlugin(async (): Promise<AuthAction> => {
      await new Promise<void>((resolve) => setImmediate(resolve));
      return 'ok';
    });
    const a = await app({ before: trustProxy, plugins: [limits, slowAuth] });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 12 }, () => connectClient(a.wsUrl, from('10.0.3.1'))),
    );
    const opened = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
    const refused = outcomes.filter((o) => o.status === 'rejected');
    for (const r of refused) assert.match(String((r as PromiseRejectedResult).reason), /429/);
    await waitFor(() => a.push.sessions().length <= 3, {
      timeout: WAIT_MS,
      message: 'extras closed',
    });
    const stillOpen = opened.filter((c) => c.ws.readyState === c.ws.OPEN);
    const closedByPolicy = await Promise.all(
      opened.filter((c) => c.ws.readyState !== c.ws.OPEN).map((c) => c.closed),
    );
    assert.ok(
      closedByPolicy.every((c) => c.code === 1008),
      'extras are closed by policy',
    );
    assert.ok(a.push.sessions().length <= 3);
    assert.equal(limits.sessionsFor('10.0.3.1'), a.push.sessions().length);
    for (const c of stillOpen) c.close();
  });

  it('push configs per second: past the limit an error event (enableErrors), the extra configs ignored', async () => {
    const a = await app({ options: { maxConfigsPerSecond: 5 } });
    const client = await connectClient(a.wsUrl, { query: { enableErrors: '1' } });
    const session = a.push.sessions()[0] as PushSession;
    for (let i = 0; i < 20; i++) client.sendConfig({ identities: { [`id${i}`]: [] } });
    const [error] = await client.waitForEvents(1, WAIT_MS);
    assert.equal(error?.type, 'error');
    assert.equal((error?.entity as { code: number }).code, 429);
    assert.equal((error?.entity as { title: string }).title, 'Too Many Requests');
    await waitFor(() => session.pushConfig !== undefined, {
      timeout: WAIT_MS,
      message: 'a config',
    });
    assert.equal(session.pushConfig?.identities?.has('id19'), false, 'the last ones were ignored');
    assert.equal(session.isOpen, true);
    client.close();
  });

  it('push configs per second: without enableErrors the session is closed with 1008; the default (10) is on', async () => {
    const a = await app({}); // default maxConfigsPerSecond
    const client = await connectClient(a.wsUrl);
    for (let i = 0; i < 40; i++) client.sendConfig({});
    const closed = await client.closed;
    assert.equal(closed.code, 1008);
    assert.equal(closed.reason, 'too many push configs');
  });

  it('push configs per second: a client within the limit is unaffected', async () => {
    const a = await app({ options: { maxConfigsPerSecond: 5 } });
    const client = await connectClient(a.wsUrl, { query: { enableErrors: '1' } });
    const session = a.push.sessions()[0] as PushSession;
    for (let i = 0; i < 3; i++) client.sendConfig({ identities: { [`id${i}`]: [] } });
    await waitFor(() => session.pushConfig?.identities?.has('id2') === true, {
      timeout: WAIT_MS,
      message: 'the last config applied',
    });
    assert.equal(client.events.length, 0);
    client.close();
  });

  it('frame size: a message larger than maxPayload closes the session with 1009', async () => {
    const a = await app({ options: { maxPayload: 1024 } });
    const client = await connectClient(a.wsUrl);
    client.ws.send(JSON.stringify({ parameters: { pad: ['x'.repeat(2048)] } }));
    assert.equal((await client.closed).code, 1009);
  });

  it('the limit factories check their options when called', () => {
    assert.throws(() => connectionRateLimitPlugin({ maxAttempts: -1 }), TypeError);
    assert.throws(() => connectionRateLimitPlugin({ intervalMs: 0 }), TypeError);
    assert.throws(() => connectionRateLimitPlugin({ maxTrackedClients: 1.5 }), TypeError);
    assert.throws(() => connectionRateLimitPlugin({ max: 3 } as never), /unknown option/);
    assert.throws(() => sessionLimitPlugin({ maxPerIP: Number.NaN }), TypeError);
    assert.throws(() => sessionLimitPlugin({ claim: '' }), TypeError);
  });
});
