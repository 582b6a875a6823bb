/**
 * Logs (issue 9, item 2): the `logger` option receives one debug line per
 * refused connection attempt and one per closed session, and never a
 * credential: not the `token` query parameter, not the Authorization
 * header, not a cookie — whether the session is accepted or refused, and
 * whatever the refusal.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  authPlugin,
  initPlugin,
  type AuthAction,
  type Logger,
  type PushSession,
} from '../../lib/index.js';
import { connectClient, expectRefusal, startPushApp, type PushApp } from '../helpers/push-app.js';
import { deferred, waitFor } from '../helpers/wait.js';

interface LogLine {
  level: 'debug' | 'info' | 'warn' | 'error';
  obj: object;
  msg: string | undefined;
  /** The whole line as a log shipper would serialize it. */
  text: string;
}

/** A logger with pino's shape that keeps every line. */
function captureLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at =
    (level: LogLine['level']) =>
    (obj: object, msg?: string): void => {
      // Serialized the way a JSON logger would, including nested errors and their causes.
      const text = JSON.stringify({ level, msg, ...obj }, (_key, value: unknown) =>
        value instanceof Error
          ? { name: value.name, message: value.message, stack: value.stack, cause: value.cause }
          : value,
      );
      lines.push({ level, obj, msg, text });
    };
  return {
    lines,
    logger: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') },
  };
}

const TOKEN = 'tok-SECRET-a1b2c3';
const AUTHORIZATION = 'Bearer auth-SECRET-d4e5f6';
const COOKIE_VALUE = 'cookie-SECRET-g7h8i9';
const SECRETS = [TOKEN, AUTHORIZATION, 'auth-SECRET-d4e5f6', COOKIE_VALUE, 'SECRET'];

/** The credentials every attempt in this file carries. */
function credentials(extra: Record<string, string> = {}): {
  query: Record<string, string>;
  headers: Record<string, string>;
} {
  return {
    query: { token: TOKEN, ...extra },
    headers: { Authorization: AUTHORIZATION, Cookie: `sid=${COOKIE_VALUE}; theme=dark` },
  };
}

describe('logs: one line per refusal and per closed session, never a credential', () => {
  const { logger, lines } = captureLogger();
  const hang = deferred<AuthAction>();
  let app: PushApp;
  /** Refusals this test caused, by status, to compare with the log lines. */
  const expectedRefusals: number[] = [];

  before(async () => {
    app = await startPushApp({
      options: {
        logger,
        sessionTimeout: 300,
        allowedOrigins: ['https://allowed.example'],
      },
      plugins: [
        authPlugin((session: PushSession) => {
          // The plugin reads every credential, as a real one would.
          assert.equal(session.token, TOKEN);
          assert.equal(session.header('authorization'), AUTHORIZATION);
          assert.equal(session.cookie('sid'), COOKIE_VALUE);
          const mode = session.parameter('mode');
          if (mode === 'ko') return 'ko';
          if (mode === 'hang') return hang.promise;
          return 'ok';
        }),
        initPlugin((session) => {
          if (session.parameter('mode') === 'throw') throw new Error('init refused this attempt');
          return true;
        }),
      ],
    });
  });

  after(async () => {
    hang.resolve('ok');
    await app?.close();
  });

  it('logs accepted and closed sessions without credentials', async () => {
    const a = await connectClient(app.wsUrl, credentials());
    const b = await connectClient(app.wsUrl, credentials({ encoding: 'msgpack' }));
    const c = await connectClient(app.wsUrl, credentials());
    a.close();
    assert.equal((await a.closed).code, 1005);
    // An invalid push config without enableErrors: the server closes with 1003.
    b.ws.send(Buffer.from('not a push config'));
    assert.equal((await b.closed).code, 1003);
    c.ws.close(4321, 'client reason');
    await c.closed;
    await waitFor(() => app.push.stats().sessionsOpen === 0, {
      timeout: 5000,
      message: 'the three sessions were not unregistered',
    });
  });

  it('logs every kind of refusal without credentials', async () => {
    const attempts: Array<[number, Promise<{ status: number }>]> = [
      [401, expectRefusal(app.wsUrl, credentials({ mode: 'ko' }))],
      [403, expectRefusal(app.wsUrl, credentials({ mode: 'throw' }))],
      [415, expectRefusal(app.wsUrl, credentials({ encoding: 'yaml' }))],
      [
        403,
        expectRefusal(app.wsUrl, {
          query: credentials().query,
          headers: { ...credentials().headers, Origin: 'https://evil.example' },
        }),
      ],
      // Bounded by sessionTimeout: 503, and the plugin answering later changes nothing.
      [503, expectRefusal(app.wsUrl, credentials({ mode: 'hang' }))],
    ];
    for (const [status, attempt] of attempts) {
      assert.equal((await attempt).status, status);
      expectedRefusals.push(status);
    }
    hang.resolve('ko');
    // Give the late answer every chance to be (wrongly) counted or logged a second time.
    await app.push.publish({ identity: 'flush', type: 'create', entity: {} });
    await new Promise<void>((resolve) => setImmediate(resolve));
  });

  it('refuses new sessions with 503 once closing, and logs it', async () => {
    const open = await connectClient(app.wsUrl, credentials());
    const closing = app.push.close();
    const refusal = await expectRefusal(app.wsUrl, credentials());
    assert.equal(refusal.status, 503);
    expectedRefusals.push(503);
    await closing;
    assert.equal((await open.closed).code, 1001);
  });

  it('wrote exactly one debug line per refusal and per closed session', () => {
    const stats = app.push.stats();
    const refused = lines.filter((l) => l.msg === 'pushwire: session refused');
    assert.ok(refused.every((l) => l.level === 'debug'));
    assert.deepEqual(
      refused.map((l) => (l.obj as { status: number }).status).sort(),
      [...expectedRefusals].sort(),
      'one refusal line per refused attempt, with its status',
    );
    assert.equal(
      Object.values(stats.sessionsRefused).reduce((a, b) => a + b, 0),
      expectedRefusals.length,
      'stats count each refused attempt once',
    );
    const closed = lines.filter((l) => l.msg === 'pushwire: session closed');
    assert.ok(closed.every((l) => l.level === 'debug'));
    assert.deepEqual(
      closed.map((l) => (l.obj as { code: number }).code).sort(),
      [1001, 1003, 1005, 4321],
      'one closed line per session, with its code',
    );
    assert.deepEqual(stats.sessionsClosed, { 1001: 1, 1003: 1, 1005: 1, 4321: 1 });
  });

  it('never logged a token, an Authorization header or a cookie', () => {
    assert.ok(lines.length >= 10, `expected a real log to inspect, got ${lines.length} lines`);
    for (const line of lines) {
      for (const secret of SECRETS) {
        assert.ok(!line.text.includes(secret), `a log line leaks ${secret}: ${line.text}`);
      }
    }
  });
});
