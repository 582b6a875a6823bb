/**
 * The ready-made auth plugins against real servers: jwtAuthPlugin (secrets,
 * key pairs, a JWKS served over HTTP, a verify function; every way a token
 * can be wrong) and clientCertAuthPlugin (an HTTPS server with
 * `requestCert`, certificates made by `openssl` in a temporary directory: a
 * CA, a client certificate it signed, and an untrusted self-signed one).
 *
 * Each refusal is checked as the client sees it (status and body before
 * any handshake) and each acceptance by the claims the server set.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import express from 'express';
import expressWs from 'express-ws';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import WebSocket from 'ws';
import {
  authPlugin,
  initPlugin,
  LocalPubSub,
  pushMiddleware,
  type PushMiddleware,
  type PushSession,
} from '../../lib/index.js';
import {
  clientCertAuthPlugin,
  defaultCertificateClaims,
  parseSubjectAltName,
} from '../../plugins/client-cert/index.js';
import { defaultJwtClaims, jwtAuthPlugin, type JwtAuthOptions } from '../../plugins/jwt/index.js';
import { freePort } from '../helpers/brokers.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import {
  connectClient,
  expectRefusal,
  startPushApp,
  type PushApp,
  type Refusal,
} from '../helpers/push-app.js';
import { signHs256, TEST_SECRET, unsignedToken } from '../helpers/security.js';
import { waitFor, withTimeout } from '../helpers/wait.js';

const WAIT_MS = 5_000;

failOnUnhandledRejections();

function description(refusal: Refusal): string {
  const body = refusal.body as Array<{ code: number; description: string }>;
  assert.ok(Array.isArray(body), `the body is a JSON array: ${String(refusal.body)}`);
  return body[0]?.description ?? '';
}

/** Starts an app with one JWT plugin; `last` is its only session, once a client connected. */
async function jwtApp(options: JwtAuthOptions): Promise<PushApp & { last(): PushSession }> {
  const app = await startPushApp({ plugins: [jwtAuthPlugin(options)] });
  return Object.assign(app, {
    last(): PushSession {
      const sessions = app.push.sessions();
      assert.equal(sessions.length, 1, 'one open session');
      return sessions[0] as PushSession;
    },
  });
}

// ---------------------------------------------------------------------------

describe('jwtAuthPlugin: options are checked when the factory is called', () => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['no key source', {}, /exactly one of key, jwksUrl, verify/],
    ['two key sources', { key: TEST_SECRET, verify: () => ({}) }, /exactly one/],
    ['a short secret', { key: 'short' }, /at least 32 bytes/],
    ["'none' among the algorithms", { key: TEST_SECRET, algorithms: ['HS256', 'none'] }, /none/],
    ["'NONE' in any case", { key: TEST_SECRET, algorithms: ['NONE'] }, /none/],
    ['an empty allow-list', { key: TEST_SECRET, algorithms: [] }, /non-empty/],
    ['a misspelt option', { key: TEST_SECRET, audiance: 'x' }, /unknown option audiance/],
    ["a 'cookie' source without a name", { key: TEST_SECRET, tokenSources: ['cookie'] }, /cookie/],
    ['an unknown source', { key: TEST_SECRET, tokenSources: ['body'] }, /tokenSources/],
    ['a JWKS over plain http', { jwksUrl: 'http://keys.example/jwks' }, /https/],
    ['a JWKS URL that is not one', { jwksUrl: 'not a url' }, /valid URL/],
    ['verify with jose options', { verify: () => ({}), audience: 'x' }, /audience/],
    ['a negative clock tolerance', { key: TEST_SECRET, clockTolerance: -1 }, /clockTolerance/],
    ['a zero token length', { key: TEST_SECRET, maxTokenLength: 0 }, /maxTokenLength/],
    ['a non-boolean closeOnExpiry', { key: TEST_SECRET, closeOnExpiry: 'yes' }, /closeOnExpiry/],
    ['a key that is no key', { key: 42 }, /key must be/],
  ];
  for (const [what, options, message] of cases) {
    it(`throws a TypeError for ${what}`, () => {
      assert.throws(
        () => jwtAuthPlugin(options as JwtAuthOptions),
        (error: unknown) => error instanceof TypeError && message.test(error.message),
      );
    });
  }

  it('accepts a loopback http JWKS (local development) and an https one', () => {
    assert.ok(jwtAuthPlugin({ jwksUrl: 'http://127.0.0.1:1/jwks' }));
    assert.ok(jwtAuthPlugin({ jwksUrl: 'https://keys.example/.well-known/jwks.json' }));
  });
});

describe('jwtAuthPlugin: claims', () => {
  it('maps primitives to key=value, arrays to one claim each, and skips objects', () => {
    assert.deepEqual(
      defaultJwtClaims({
        sub: 'alice',
        admin: true,
        level: 3,
        roles: ['a', 'b'],
        org: { id: 'x' },
        nothing: null,
        'bad=key': 'v',
      } as never),
      ['sub=alice', 'admin=true', 'level=3', 'roles=a', 'roles=b'],
    );
  });
});

describe('jwtAuthPlugin with an HMAC secret', () => {
  let app: PushApp & { last(): PushSession };
  before(async () => {
    app = await jwtApp({
      key: TEST_SECRET,
      algorithms: ['HS256'],
      issuer: 'https://idp.example',
      audience: 'pushwire',
      cookieName: 'session_jwt',
    });
  });
  after(() => app.close());

  const good = (extra: Record<string, unknown> = {}): Promise<string> =>
    signHs256(
      {
        sub: 'alice',
        namespace: '/acme',
        roles: ['a', 'b'],
        iss: 'https://idp.example',
        aud: 'pushwire',
        ...extra,
      },
      // An explicit exp in `extra` is the point of the test: do not overwrite it.
      'exp' in extra ? {} : { expiresIn: '5m' },
    );

  it('accepts a token from the token parameter and sets its claims', async () => {
    const client = await connectClient(app.wsUrl, { query: { token: await good() } });
    const claims = app.last().claims;
    for (const c of ['sub=alice', 'namespace=/acme', 'roles=a', 'roles=b', 'aud=pushwire']) {
      assert.ok(claims.includes(c), `claims include ${c}: ${claims.join(' ')}`);
    }
    client.close();
    await client.closed;
  });

  it('accepts a token from Authorization: Bearer (any case of the scheme)', async () => {
    const client = await connectClient(app.wsUrl, {
      headers: { Authorization: `bearer ${await good()}` },
    });
    assert.equal(app.last().claimsMap.sub, 'alice');
    client.close();
    await client.closed;
  });

  it('accepts a token from the named cookie', async () => {
    const client = await connectClient(app.wsUrl, {
      headers: { Cookie: `other=1; session_jwt=${await good()}` },
    });
    assert.equal(app.last().claimsMap.sub, 'alice');
    client.close();
    await client.closed;
  });

  const refusals: Array<[string, () => Promise<Record<string, string>>, string]> = [
    ['no token at all', async () => ({}), 'Missing token'],
    [
      'an expired token',
      async () => ({ token: await good({ exp: Math.floor(Date.now() / 1000) - 60 }) }),
      'Token expired',
    ],
    [
      'a token not valid yet',
      async () => ({ token: await good({ nbf: Math.floor(Date.now() / 1000) + 3600 }) }),
      'Token not yet valid',
    ],
    [
      'a token signed with another secret',
      async () => ({
        token: await signHs256(
          { sub: 'alice', iss: 'https://idp.example', aud: 'pushwire' },
          { secret: 'another-secret-that-is-long-enough-0123456789' },
        ),
      }),
      'Invalid token signature',
    ],
    [
      'an algorithm outside the allow-list (HS512)',
      async () => ({
        token: await signHs256({ iss: 'https://idp.example', aud: 'pushwire' }, { alg: 'HS512' }),
      }),
      'Token algorithm not allowed',
    ],
    [
      'alg: none, without a signature',
      async () => ({
        token: unsignedToken({ sub: 'root', iss: 'https://idp.example', aud: 'pushwire' }),
      }),
      'Malformed token',
    ],
    [
      'alg: none, with a signature segment',
      async () => ({
        token: unsignedToken({ sub: 'root', iss: 'https://idp.example', aud: 'pushwire' }) + 'c2ln',
      }),
      'Token algorithm not allowed',
    ],
    [
      'the wrong issuer',
      async () => ({ token: await good({ iss: 'https://evil.example' }) }),
      'Token claims rejected',
    ],
    [
      'the wrong audience',
      async () => ({ token: await good({ aud: 'other' }) }),
      'Token claims rejected',
    ],
    ['a malformed token', async () => ({ token: 'not-a-jwt' }), 'Malformed token'],
    [
      'a token of valid shape and garbage content',
      async () => ({ token: 'aGVsbG8.d29ybGQ.c2ln' }),
      'Invalid token',
    ],
    ['a token longer than 8 KiB', async () => ({ token: 'a'.repeat(8193) }), 'Token too long'],
  ];
  for (const [what, query, expected] of refusals) {
    it(`refuses ${what} with 401 (${expected})`, async () => {
      const q = await query();
      const refusal = await expectRefusal(app.wsUrl, { query: q });
      assert.equal(refusal.status, 401);
      assert.equal(description(refusal), expected);
      if (q.token) assert.ok(!JSON.stringify(refusal.body).includes(q.token), 'token not echoed');
    });
  }

  it('does not read a cookie unless cookieName names it', async () => {
    const other = await jwtApp({ key: TEST_SECRET });
    try {
      const token = await signHs256({ sub: 'alice' });
      const refusal = await expectRefusal(other.wsUrl, { headers: { Cookie: `token=${token}` } });
      assert.equal(refusal.status, 401);
      assert.equal(description(refusal), 'Missing token');
    } finally {
      await other.close();
    }
  });
});

describe('jwtAuthPlugin: a token renewed through parameters.token (as Go clients renew one) is verified again', () => {
  let app: PushApp & { last(): PushSession };
  before(async () => {
    app = await jwtApp({ key: TEST_SECRET, closeOnExpiry: true });
  });
  after(() => app.close());

  /** Waits until the app has no session left (the previous test's client is gone). */
  const noSession = async (): Promise<void> => {
    await waitFor(() => app.push.sessions().length === 0, {
      timeout: WAIT_MS,
      message: 'a session of an earlier test is still open',
    });
  };

  it('the new claims replace the old; a shorter exp closes the session at the new time (1008)', async () => {
    await noSession();
    const client = await connectClient(app.wsUrl, {
      query: { token: await signHs256({ sub: 'alice' }, { expiresIn: '5m' }) },
    });
    const session = app.last();
    assert.equal(session.claimsMap.sub, 'alice');
    const expSec = Math.ceil(Date.now() / 1000) + 1;
    const renewed = await signHs256({ sub: 'bob' }, { expiresIn: expSec });
    client.sendConfig({ parameters: { token: [renewed] } });
    await waitFor(() => session.claimsMap.sub === 'bob', {
      timeout: WAIT_MS,
      message: 'the renewed token did not replace the claims',
    });
    assert.equal(session.token, renewed);
    const closed = await withTimeout(client.closed, WAIT_MS, 'not closed at the new exp');
    assert.deepEqual(closed, { code: 1008, reason: 'token expired' });
    assert.ok(Date.now() >= expSec * 1000, 'closed at the renewed exp, not before');
  });

  it('a longer exp replaces the old one: the session outlives its first token', async () => {
    await noSession();
    const expSec = Math.ceil(Date.now() / 1000) + 1;
    const shortLived = await signHs256({ sub: 'carol' }, { expiresIn: expSec });
    const renewing = await connectClient(app.wsUrl, { query: { token: shortLived } });
    const renewingSession = app.last();
    // A witness with the same exp and no renewal: its close proves that exp has passed.
    const witness = await connectClient(app.wsUrl, { query: { token: shortLived } });
    renewing.sendConfig({
      parameters: { token: await signHs256({ sub: 'carol' }, { expiresIn: '5m' }) },
    });
    await waitFor(() => renewingSession.token !== shortLived, {
      timeout: WAIT_MS,
      message: 'the renewal never reached the session',
    });
    assert.equal(
      (await withTimeout(witness.closed, WAIT_MS, 'the witness did not expire')).code,
      1008,
    );
    // Events of one publisher arrive in order: the marker proves the session is still served.
    await app.push.publish({ identity: 'marker', type: 'create', entity: {} });
    await renewing.waitForEvents(1, WAIT_MS);
    assert.equal(renewingSession.isOpen, true);
    renewing.close();
    await renewing.closed;
  });

  for (const [what, token, reason] of [
    [
      'signed with another key',
      () =>
        signHs256(
          { sub: 'x' },
          { secret: 'another-secret-0123456789-abcdefghij', expiresIn: '5m' },
        ),
      'Invalid token signature',
    ],
    [
      'expired',
      () => signHs256({ sub: 'x' }, { expiresIn: Math.floor(Date.now() / 1000) - 60 }),
      'Token expired',
    ],
    ['empty', () => Promise.resolve(''), 'Missing token'],
  ] as const) {
    it(`a renewed token that is ${what} closes the session with 1008 (${reason}), never echoing it`, async () => {
      await noSession();
      const client = await connectClient(app.wsUrl, {
        query: { token: await signHs256({ sub: 'dave' }, { expiresIn: '5m' }) },
      });
      const bad = await token();
      client.sendConfig({ parameters: { token: bad } });
      const closed = await withTimeout(client.closed, WAIT_MS, 'not closed');
      assert.deepEqual(closed, { code: 1008, reason });
    });
  }

  it('a config that does not change the token verifies nothing again', async () => {
    await noSession();
    let verified = 0;
    const counting = await startPushApp({
      plugins: [
        jwtAuthPlugin({
          verify: (token) => {
            verified++;
            if (token !== 'good' && token !== 'better') throw new Error('bad');
            return { sub: token };
          },
        }),
      ],
    });
    try {
      const client = await connectClient(counting.wsUrl, { query: { token: 'good' } });
      const session = counting.push.sessions()[0] as PushSession;
      client.sendConfig({ parameters: { token: 'good', other: 'x' } });
      client.sendConfig({ parameters: { token: 'better' } });
      await waitFor(() => session.claimsMap.sub === 'better', {
        timeout: WAIT_MS,
        message: 'the renewal was not verified',
      });
      assert.equal(verified, 2, 'once at connect, once for the changed token');
      assert.equal(session.parameter('other'), 'x');
      client.close();
      await client.closed;
    } finally {
      await counting.close();
    }
  });
});

describe('jwtAuthPlugin: token sources in the configured order', () => {
  it('takes the first source that has a token', async () => {
    const headerFirst = await jwtApp({ key: TEST_SECRET, tokenSources: ['header', 'query'] });
    const queryFirst = await jwtApp({ key: TEST_SECRET, tokenSources: ['query', 'header'] });
    try {
      const good = await signHs256({ sub: 'alice' });
      const opts = {
        query: { token: 'bad.bad.bad' },
        headers: { Authorization: `Bearer ${good}` },
      };
      const client = await connectClient(headerFirst.wsUrl, opts);
      client.close();
      const refusal = await expectRefusal(queryFirst.wsUrl, opts);
      assert.equal(refusal.status, 401);
    } finally {
      await headerFirst.close();
      await queryFirst.close();
    }
  });

  it("skips an Authorization header of another scheme (a proxy's Basic)", async () => {
    const app = await jwtApp({ key: TEST_SECRET, tokenSources: ['header', 'query'] });
    try {
      const token = await signHs256({ sub: 'alice' });
      const client = await connectClient(app.wsUrl, {
        query: { token },
        headers: { Authorization: 'Basic dXNlcjpwYXNz' },
      });
      client.close();
    } finally {
      await app.close();
    }
  });

  it("with onMissingToken 'continue', lets the next auth plugin decide", async () => {
    const app = await startPushApp({
      plugins: [
        jwtAuthPlugin({ key: TEST_SECRET, onMissingToken: 'continue' }),
        authPlugin((s) => (s.parameter('apiKey') === 'k' ? 'ok' : 'ko')),
      ],
    });
    try {
      const client = await connectClient(app.wsUrl, { query: { apiKey: 'k' } });
      client.close();
      assert.equal((await expectRefusal(app.wsUrl)).status, 401);
      // A token that is present but bad is still a refusal: 'continue' is only for "no token".
      assert.equal(
        (await expectRefusal(app.wsUrl, { query: { token: 'x.y.z', apiKey: 'k' } })).status,
        401,
      );
    } finally {
      await app.close();
    }
  });

  it('does not take over what later plugins throw (an init plugin refusing stays 403)', async () => {
    const app = await startPushApp({
      plugins: [
        jwtAuthPlugin({ key: TEST_SECRET }),
        initPlugin(() => {
          throw new Error('no access to this stream');
        }),
      ],
    });
    try {
      const token = await signHs256({ sub: 'alice' });
      const refusal = await expectRefusal(app.wsUrl, { query: { token } });
      assert.equal(refusal.status, 403);
    } finally {
      await app.close();
    }
  });

  it('refuses with 401 when mapClaims throws, without its message', async () => {
    const app = await startPushApp({
      plugins: [
        jwtAuthPlugin({
          key: TEST_SECRET,
          mapClaims: (p) => {
            throw new Error(`cannot map ${JSON.stringify(p)}`);
          },
        }),
      ],
    });
    try {
      const token = await signHs256({ sub: 'alice' });
      const refusal = await expectRefusal(app.wsUrl, { query: { token } });
      assert.equal(refusal.status, 401);
      assert.equal(description(refusal), 'Invalid token');
    } finally {
      await app.close();
    }
  });
});

describe('jwtAuthPlugin with key pairs', () => {
  it('verifies RS256 with a public key and refuses an HS256 token forged with that public key', async () => {
    const { publicKey, privateKey } = await generateKeyPair('RS256', { extractable: true });
    const app = await jwtApp({ key: publicKey, algorithms: ['RS256', 'HS256'] });
    try {
      const token = await new SignJWT({ sub: 'alice' })
        .setProtectedHeader({ alg: 'RS256' })
        .setExpirationTime('5m')
        .sign(privateKey);
      const client = await connectClient(app.wsUrl, { query: { token } });
      assert.equal(app.last().claimsMap.sub, 'alice');
      client.close();
      await client.closed;
      // The classic key-confusion attack: the public key's bytes used as an HMAC secret.
      const jwk = JSON.stringify(await exportJWK(publicKey));
      const forged = await signHs256({ sub: 'root' }, { secret: jwk });
      const refusal = await expectRefusal(app.wsUrl, { query: { token: forged } });
      assert.equal(refusal.status, 401);
    } finally {
      await app.close();
    }
  });

  it('verifies with a JWKS URL, refuses an unknown kid, and answers 503 when the JWKS is down', async () => {
    const { publicKey, privateKey } = await generateKeyPair('ES256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    let fetches = 0;
    const jwks: Server = createHttpServer((_req, res) => {
      fetches++;
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    jwks.listen(0, '127.0.0.1');
    await once(jwks, 'listening');
    const { port } = jwks.address() as AddressInfo;
    const app = await jwtApp({ jwksUrl: `http://127.0.0.1:${port}/jwks`, algorithms: ['ES256'] });
    const down = await jwtApp({
      jwksUrl: `http://127.0.0.1:${await freePort()}/jwks`,
      jwksOptions: { timeoutDuration: 2000 },
    });
    try {
      const sign = (kid: string): Promise<string> =>
        new SignJWT({ sub: 'alice' }).setProtectedHeader({ alg: 'ES256', kid }).sign(privateKey);
      const client = await connectClient(app.wsUrl, { query: { token: await sign('k1') } });
      assert.equal(app.last().claimsMap.sub, 'alice');
      assert.ok(fetches >= 1);
      client.close();
      await client.closed;
      const unknown = await expectRefusal(app.wsUrl, { query: { token: await sign('k2') } });
      assert.equal(unknown.status, 401);
      const unavailable = await expectRefusal(down.wsUrl, { query: { token: await sign('k1') } });
      assert.equal(unavailable.status, 503, 'the key server failing is not the client being wrong');
    } finally {
      await app.close();
      await down.close();
      jwks.close();
    }
  });
});

describe('jwtAuthPlugin with a verify function', () => {
  it('uses what verify returns, refuses what it throws without echoing its message', async () => {
    const secretToken = 'opaque.token.value';
    const app = await jwtApp({
      verify: (token) => {
        if (token === secretToken) return { sub: 'svc', exp: Math.floor(Date.now() / 1000) + 60 };
        if (token === 'old.token.value') return { sub: 'svc', exp: 1 };
        throw new Error(`unknown token ${token}`);
      },
      mapClaims: (payload) => [`@auth:subject=${String(payload.sub)}`],
    });
    try {
      const client = await connectClient(app.wsUrl, { query: { token: secretToken } });
      assert.deepEqual(app.last().claims, ['@auth:subject=svc']);
      client.close();
      await client.closed;
      const thrown = await expectRefusal(app.wsUrl, { query: { token: 'bad.token.value' } });
      assert.equal(thrown.status, 401);
      assert.equal(description(thrown), 'Invalid token');
      assert.ok(!JSON.stringify(thrown.body).includes('bad.token.value'));
      const expired = await expectRefusal(app.wsUrl, { query: { token: 'old.token.value' } });
      assert.equal(description(expired), 'Token expired', 'exp is checked even after verify');
    } finally {
      await app.close();
    }
  });
});

// ---------------------------------------------------------------------------
// Client certificates

interface Pki {
  dir: string;
  ca: Buffer;
  serverKey: Buffer;
  serverCert: Buffer;
  clientKey: Buffer;
  clientCert: Buffer;
  rogueKey: Buffer;
  rogueCert: Buffer;
}

/** A CA, a server and a client certificate it signed, and a self-signed impostor, made by openssl. */
function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'pushwire-pki-'));
  const ssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    '2',
    '-subj',
    '/CN=pushwire test CA/O=pushwire',
  );
  const issue = (name: string, subject: string, ext: string): void => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    ssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
    ssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${name}.crt`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    );
  };
  issue('server', '/CN=localhost', 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  issue(
    'client',
    '/CN=alice/O=Acme/OU=eng/OU=ops',
    'subjectAltName=DNS:alice.example,URI:spiffe://acme/alice,email:alice@acme.example,IP:10.1.2.3\nextendedKeyUsage=clientAuth\n',
  );
  // Same subject as alice's, signed by nobody the server trusts.
  ssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'rogue.key',
    '-out',
    'rogue.crt',
    '-days',
    '2',
    '-subj',
    '/CN=alice/O=Acme',
    '-addext',
    'subjectAltName=DNS:alice.example',
  );
  const read = (f: string): Buffer => readFileSync(join(dir, f));
  return {
    dir,
    ca: read('ca.crt'),
    serverKey: read('server.key'),
    serverCert: read('server.crt'),
    clientKey: read('client.key'),
    clientCert: read('client.crt'),
    rogueKey: read('rogue.key'),
    rogueCert: read('rogue.crt'),
  };
}

type TlsOutcome = { opened: true; ws: WebSocket } | { opened: false; status: number; body: string };

/** Opens a wss:// session with the given client credentials; resolves with the outcome. */
function tryWss(
  url: string,
  tls: { ca: Buffer; cert?: Buffer; key?: Buffer },
): Promise<TlsOutcome> {
  const ws = new WebSocket(url, { ...tls });
  ws.on('error', () => undefined);
  return withTimeout(
    new Promise<TlsOutcome>((resolve, reject) => {
      ws.once('open', () => resolve({ opened: true, ws }));
      ws.once('unexpected-response', (_req, res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          resolve({
            opened: false,
            status: res.statusCode ?? 0,
            body: Buffer.concat(chunks).toString(),
          });
          ws.terminate();
        });
      });
      ws.once('error', reject);
    }),
    WAIT_MS,
    'no answer to the TLS handshake',
  );
}

describe('clientCertAuthPlugin over HTTPS with requestCert', () => {
  let pki: Pki;
  let push: PushMiddleware;
  let server: ReturnType<typeof createHttpsServer>;
  let url: string;

  before(async () => {
    pki = makePki();
    const app = express();
    server = createHttpsServer(
      {
        key: pki.serverKey,
        cert: pki.serverCert,
        ca: pki.ca,
        requestCert: true,
        // The plugin decides, so that an untrusted client gets a 401 rather than a TLS alert.
        rejectUnauthorized: false,
      },
      app,
    );
    const ews = expressWs(app, server);
    push = pushMiddleware(new LocalPubSub(), 'events', [clientCertAuthPlugin()]);
    app.use('/api', push);
    push.attach(ews);
    await push.ready;
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    url = `wss://127.0.0.1:${(server.address() as AddressInfo).port}/api/events`;
  });
  after(async () => {
    await push.close();
    server.closeAllConnections();
    server.close();
    rmSync(pki.dir, { recursive: true, force: true });
  });

  it('accepts a certificate signed by the CA; subject and SANs become claims', async () => {
    const outcome = await tryWss(url, { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey });
    assert.ok(outcome.opened, `refused: ${outcome.opened ? '' : outcome.body}`);
    const claims = push.sessions()[0]?.claims ?? [];
    for (const c of [
      'subject.CN=alice',
      'subject.O=Acme',
      'subject.OU=eng',
      'subject.OU=ops',
      'issuer.CN=pushwire test CA',
      'san.dns=alice.example',
      'san.uri=spiffe://acme/alice',
      'san.email=alice@acme.example',
      'san.ip=10.1.2.3',
    ]) {
      assert.ok(claims.includes(c), `claims include ${c}: ${claims.join(' | ')}`);
    }
    assert.ok(claims.some((c) => c.startsWith('fingerprint256=')));
    assert.ok(claims.some((c) => c.startsWith('serial=')));
    outcome.ws.close();
    await once(outcome.ws, 'close');
  });

  it('refuses a client without a certificate with 401', async () => {
    const outcome = await tryWss(url, { ca: pki.ca });
    assert.equal(outcome.opened, false);
    assert.equal(outcome.opened ? 0 : outcome.status, 401);
    assert.match(outcome.opened ? '' : outcome.body, /No client certificate/);
  });

  it('refuses a self-signed certificate with the same subject with 401', async () => {
    const outcome = await tryWss(url, { ca: pki.ca, cert: pki.rogueCert, key: pki.rogueKey });
    assert.equal(outcome.opened, false);
    assert.equal(outcome.opened ? 0 : outcome.status, 401);
    assert.match(outcome.opened ? '' : outcome.body, /Untrusted client certificate/);
    assert.equal(push.sessions().length, 0);
  });

  it('on a plain-HTTP server, refuses every attempt (there is never a certificate)', async () => {
    const app = await startPushApp({ plugins: [clientCertAuthPlugin()] });
    try {
      const refusal = await expectRefusal(app.wsUrl);
      assert.equal(refusal.status, 401);
    } finally {
      await app.close();
    }
  });
});

describe('clientCertAuthPlugin: claims and options', () => {
  it("parses Node's subjectaltname, honouring quoted values", () => {
    assert.deepEqual(
      parseSubjectAltName('DNS:a.example, IP Address:10.0.0.1, URI:spiffe://x/y, email:a@b.c'),
      [
        ['DNS', 'a.example'],
        ['IP Address', '10.0.0.1'],
        ['URI', 'spiffe://x/y'],
        ['email', 'a@b.c'],
      ],
    );
    // A value holding ", DNS:" must stay one entry, not smuggle a second name.
    assert.deepEqual(parseSubjectAltName('DNS:"evil.example, DNS:good.example", DNS:b.example'), [
      ['DNS', 'evil.example, DNS:good.example'],
      ['DNS', 'b.example'],
    ]);
    assert.deepEqual(parseSubjectAltName(undefined), []);
  });

  it('maps repeated subject fields to one claim each', () => {
    const claims = defaultCertificateClaims({
      subject: { CN: 'svc', OU: ['a', 'b'] },
      issuer: { CN: 'ca' },
      subjectaltname: 'DNS:svc.example',
      serialNumber: '01',
      fingerprint256: 'AA:BB',
    } as never);
    assert.deepEqual(claims, [
      'subject.CN=svc',
      'subject.OU=a',
      'subject.OU=b',
      'issuer.CN=ca',
      'san.dns=svc.example',
      'serial=01',
      'fingerprint256=AA:BB',
    ]);
  });

  it('checks its options when called', () => {
    assert.throws(() => clientCertAuthPlugin({ mapClaims: 'x' } as never), TypeError);
    assert.throws(
      () => clientCertAuthPlugin({ onMissingCertificate: 'maybe' } as never),
      TypeError,
    );
    assert.throws(() => clientCertAuthPlugin({ requireTrusted: false } as never), /unknown option/);
  });
});
