/**
 * Issue 19 against a real Express server on port 0: sessions that send
 * thousands of distinct push configs and close give back the memory those
 * configs held, and a config past `maxPushConfigBytes` is refused as the
 * protocol refuses an invalid one (PROTOCOL.md section 4). The heap is
 * measured in this process after full collections (test/helpers/heap.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { PushSession } from '../../lib/index.js';
import { parsePushConfig } from '../../lib/protocol/push-config.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { maximalConfig, mb, retainedHeap } from '../helpers/heap.js';
import { connectClient, withPushApp, type PushApp, type TestClient } from '../helpers/push-app.js';
import { waitFor, withTimeout } from '../helpers/wait.js';

const WAIT_MS = 5_000;
/** The heap test sends 2,000 configs of 13 KB each: its waits are longer. */
const LOAD_WAIT_MS = 60_000;

failOnUnhandledRejections();

/** The server's session of a client, found by its token. */
function sessionOf(app: PushApp, token: string): PushSession {
  const found = app.push.sessions().find((s) => s.token === token);
  assert.ok(found, `no session for ${token}`);
  return found;
}

/** The seed a session's current config was built with (see maximalConfig). */
function seedOf(session: PushSession): string | undefined {
  return session.pushConfig?.input.filters?.i0?.split('"')[1];
}

describe('issue 19: the memory of push configs goes with the sessions', () => {
  // Twelve filters of 160 `in` comparisons: about 1.2 MB of heap each, just within the default bound.
  const FILTERS = 12;
  const COMPARISONS = 160;
  const SESSIONS = 4;
  const CONFIGS_PER_SESSION = 500;

  it('sends configs within the default bound', () => {
    const { estimatedBytes } = parsePushConfig(maximalConfig(0, FILTERS, COMPARISONS));
    assert.ok(
      estimatedBytes <= 2 * 1024 * 1024 && estimatedBytes > 1.5 * 1024 * 1024,
      `${estimatedBytes}`,
    );
  });

  it(`${SESSIONS} sessions × ${CONFIGS_PER_SESSION} distinct near-maximal configs, closed: the heap returns to within 10 MB`, async (t) => {
    await withPushApp({ options: { maxConfigsPerSecond: 0 } }, async (app, track) => {
      // A first session and config, so that what is created once per process is not counted.
      const warm = track(await connectClient(app.wsUrl, { query: { token: 'warm' } }));
      warm.sendConfig(maximalConfig(-1, FILTERS, COMPARISONS));
      await waitFor(() => seedOf(sessionOf(app, 'warm')) === '-1-0', {
        timeout: LOAD_WAIT_MS,
        message: 'the warm-up config was not applied',
      });
      warm.close();
      await waitFor(() => app.push.sessions().length === 0, {
        timeout: LOAD_WAIT_MS,
        message: 'the warm-up session was not unregistered',
      });
      const before = await retainedHeap();

      const clients: TestClient[] = [];
      for (let s = 0; s < SESSIONS; s++) {
        clients.push(track(await connectClient(app.wsUrl, { query: { token: `s${s}` } })));
      }
      await Promise.all(
        clients.map(async (client, s) => {
          for (let i = 0; i < CONFIGS_PER_SESSION; i++) {
            client.sendConfig(maximalConfig(s * CONFIGS_PER_SESSION + i, FILTERS, COMPARISONS));
          }
          const last = `${(s + 1) * CONFIGS_PER_SESSION - 1}-0`;
          await waitFor(() => seedOf(sessionOf(app, `s${s}`)) === last, {
            timeout: LOAD_WAIT_MS,
            message: `session s${s} did not apply its last config`,
          });
        }),
      );
      assert.equal(app.push.stats().invalidConfigs, 0, 'every config was valid');
      for (const client of clients) client.close();
      await Promise.all(
        clients.map((c) => withTimeout(c.closed, LOAD_WAIT_MS, 'a client was not closed')),
      );
      await waitFor(() => app.push.sessions().length === 0, {
        timeout: LOAD_WAIT_MS,
        message: 'the sessions were not unregistered',
      });
      const grown = (await retainedHeap()) - before;
      t.diagnostic(`heap before ${mb(before)}, after ${mb(before + grown)} (${mb(grown)})`);
      assert.ok(
        grown < 10 * 1024 * 1024,
        `${SESSIONS * CONFIGS_PER_SESSION} configs from closed sessions still hold ${mb(grown)}`,
      );
    });
  });
});

describe('issue 19: a push config past maxPushConfigBytes is invalid', () => {
  const tooBig = maximalConfig(1, 15, 256);

  it('with enableErrors: a 400 error event that names the bound; the previous config stays', async () => {
    await withPushApp({}, async (app, track) => {
      const client = track(
        await connectClient(app.wsUrl, { query: { token: 'big', enableErrors: '' } }),
      );
      client.sendConfig(tooBig);
      const [event] = await client.waitForEvents(1, WAIT_MS);
      assert.equal(event?.type, 'error');
      assert.equal(event?.identity, '');
      const entity = event?.entity as { code: number; title: string; description: string };
      assert.equal(entity.code, 400);
      assert.equal(entity.title, 'Bad Request');
      assert.match(entity.description, /maxPushConfigBytes/);
      assert.match(entity.description, /at most 2097152 bytes/);
      assert.equal(app.push.stats().invalidConfigs, 1);
      assert.equal(sessionOf(app, 'big').isOpen, true);
    });
  });

  it('without enableErrors: the socket is closed with 1003', async () => {
    await withPushApp({}, async (app, track) => {
      const client = track(await connectClient(app.wsUrl));
      client.sendConfig(tooBig);
      const closed = await withTimeout(client.closed, WAIT_MS, 'the session was not closed');
      assert.equal(closed.code, 1003);
    });
  });

  it('honours the option: a smaller bound refuses a smaller config', async () => {
    const options = { maxPushConfigBytes: 64 * 1024 };
    await withPushApp({ options }, async (app, track) => {
      const client = track(await connectClient(app.wsUrl, { query: { enableErrors: '' } }));
      client.sendConfig(maximalConfig(1, 1, 100));
      const [event] = await client.waitForEvents(1, WAIT_MS);
      const entity = event?.entity as { description: string };
      assert.match(entity.description, /at most 65536 bytes/);
    });
  });
});
