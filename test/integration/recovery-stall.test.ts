/**
 * Resume after a stall of the server's event loop (what a reconnect storm
 * does to it): a session opens with `?since=`, sends its push config at
 * once, and the loop is then blocked past the 2 seconds the server waits for
 * a config (PROTOCOL.md section 9). The config arrived in time, in the
 * socket's buffer; the replay must follow it, not start without it because
 * the wait's timer ran before the read (timers run before I/O in a turn).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { LocalPubSub } from '../../lib/index.js';
import { startPushApp, type PushApp } from '../helpers/push-app.js';
import { deferred, withTimeout } from '../helpers/wait.js';

/** Longer than the server's wait for a config after `since` (2 s). */
const STALL_MS = 2500;

describe('recovery: a config that arrived during a stall of the event loop', () => {
  let app: PushApp;
  let pubsub: LocalPubSub;
  let since: string;

  before(async () => {
    pubsub = new LocalPubSub({ history: { maxEvents: 100 } });
    app = await startPushApp({ pubsub });
    await app.push.publish({ identity: 'task', type: 'create', entity: { n: 0 } });
    const history = pubsub.history;
    assert.ok(history);
    since = (await history.read('events', 'not-a-position', 1)).head;
    // After `since`: one event the config asks for, one it excludes, then another it asks for.
    await app.push.publish(
      { identity: 'task', type: 'create', entity: { n: 1 } },
      { identity: 'noise', type: 'create', entity: { n: 2 } },
      { identity: 'task', type: 'create', entity: { n: 3 } },
    );
  });

  after(async () => {
    await app?.close();
  });

  it('replays with the config, not without it', async () => {
    const socket = new WebSocket(`${app.wsUrl}?since=${encodeURIComponent(since)}`);
    const frames: Array<Record<string, unknown>> = [];
    const recovered = deferred<Record<string, unknown>>();
    socket.on('message', (data: WebSocket.RawData) => {
      const frame = JSON.parse(String(data)) as Record<string, unknown>;
      if ('recovery' in frame) recovered.resolve(frame.recovery as Record<string, unknown>);
      else frames.push(frame);
    });
    socket.once('open', () => {
      socket.send(JSON.stringify({ identities: { task: ['create'] } }));
      // The stall: this process (the server's too) runs nothing else for STALL_MS.
      const until = Date.now() + STALL_MS;
      while (Date.now() < until) {
        // busy
      }
    });
    const recovery = await withTimeout(recovered.promise, 15_000, 'the recovery frame');
    socket.close();
    assert.equal(recovery.recovered, true);
    assert.deepEqual(
      frames.map((f) => `${String(f.identity)} ${String((f.entity as { n: number }).n)}`),
      ['task 1', 'task 3'],
      'the replay followed the config that arrived during the stall',
    );
  });
});
