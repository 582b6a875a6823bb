/**
 * A reconnect storm's replays on JetStream history: 10,000 sessions resume
 * at once, so 10,000 `history.read` calls start together on one backend.
 * Each read is several JetStream API requests; unbounded, nats-server
 * answered them past the request timeout and most reads rejected (each one a
 * session told `recovered: false`). The backend keeps a bounded number in
 * flight, so every read answers, recovered, with every event.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pushMiddleware, type PushMiddleware } from '../../lib/index.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { startNats, type Broker } from '../helpers/brokers.js';

const READS = 10_000;
const BEHIND = 20;

describe('JetStream history: 10,000 replays at once', () => {
  let broker: Broker;
  let pubsub: NatsPubSub;
  let push: PushMiddleware;

  before(async () => {
    broker = await startNats({ jetstream: true });
    pubsub = new NatsPubSub({ servers: broker.url, history: { maxEvents: 1000 } });
    push = pushMiddleware(pubsub, 'storm', { plugins: [] });
    await push.ready;
    for (let i = 0; i < BEHIND + 1; i++) {
      await push.publish({ identity: 'task', type: 'create', entity: { i } });
    }
  });

  after(async () => {
    await push?.close();
    await pubsub?.disconnect();
    await broker?.stop();
  });

  it('every read answers recovered: true with every event after its position', async () => {
    const history = pubsub.history;
    assert.ok(history, 'history is on');
    const { head } = await history.read('storm', 'not-a-position', 1);
    const [epoch, last] = head.split(':');
    const since = `${epoch}:${Number(last) - BEHIND}`;
    const outcomes = await Promise.allSettled(
      Array.from({ length: READS }, () => history.read('storm', since, 100)),
    );
    const rejected = outcomes.filter((o) => o.status === 'rejected');
    assert.equal(
      rejected.length,
      0,
      `${rejected.length} of ${READS} reads rejected, the first: ${String((rejected[0] as PromiseRejectedResult | undefined)?.reason)}`,
    );
    for (const o of outcomes) {
      assert.ok(o.status === 'fulfilled');
      assert.equal(o.value.recovered, true);
      assert.equal(o.value.entries.length, BEHIND);
    }
  });
});
