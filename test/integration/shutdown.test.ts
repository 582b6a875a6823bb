/**
 * Graceful shutdown (issue 9, item 3): close() refuses new upgrades with
 * 503 before any handshake, stops the subscription, lets each session's
 * buffered frames flush within `closeTimeout`, closes sessions with 1001,
 * resolves, and is idempotent. No event the server received from the topic
 * before close() is lost for a client that reads.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import {
  definePlugin,
  dispatchPlugin,
  LocalPubSub,
  pushMiddleware,
  type PubSubHandler,
  type Unsubscribe,
} from '../../lib/index.js';
import {
  connectClient,
  expectRefusal,
  startPushApp,
  type PushApp,
  type TestClient,
} from '../helpers/push-app.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

/**
 * LocalPubSub that reports each payload right after the server's handler
 * returned: a test can call close() at the exact moment the server has
 * received an event, not some polling interval later.
 */
class TappedPubSub extends LocalPubSub {
  delivered = 0;
  afterDelivery: ((count: number) => void) | undefined;
  override subscribe(subject: string, handler: PubSubHandler): Promise<Unsubscribe> {
    return super.subscribe(subject, (payload, s) => {
      handler(payload, s);
      this.delivered++;
      this.afterDelivery?.(this.delivered);
    });
  }
}

/** An entity big enough that a few hundred events fill socket buffers. */
function entity(seq: number, padBytes: number): { seq: number; pad: string } {
  return { seq, pad: 'x'.repeat(padBytes) };
}

/** Waits until the client is closed and returns the sequence numbers it received, in order. */
async function receivedSeqs(
  client: TestClient,
): Promise<{ code: number; seqs: number[]; eventsBeforeClose: number }> {
  const eventsAtClose = deferred<number>();
  client.ws.once('close', () => eventsAtClose.resolve(client.events.length));
  const { code } = await withTimeout(client.closed, 15_000, 'the client was not closed');
  return {
    code,
    seqs: client.events.map((e) => (e.entity as { seq: number }).seq),
    eventsBeforeClose: await eventsAtClose.promise,
  };
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

describe('graceful shutdown', () => {
  let app: PushApp | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('refuses upgrades with 503 from the moment close() is called, and after', async () => {
    app = await startPushApp({ options: { closeTimeout: 2000 } });
    const open = await connectClient(app.wsUrl);
    const closing = app.push.close();
    const during = await expectRefusal(app.wsUrl);
    assert.equal(during.status, 503);
    assert.deepEqual((during.body as Array<{ code: number; title: string }>)[0], {
      ...(during.body as object[])[0],
      code: 503,
      title: 'Service Unavailable',
    });
    await closing;
    assert.equal((await open.closed).code, 1001);
    const afterwards = await expectRefusal(app.wsUrl);
    assert.equal(afterwards.status, 503);
    assert.equal(app.push.stats().sessionsRefused[503], 2);
    assert.equal(app.push.stats().sessionsAccepted, 1);
  });

  it('is idempotent: every call resolves, once the sessions are closed', async () => {
    app = await startPushApp();
    const client = await connectClient(app.wsUrl);
    const calls = [app.push.close(), app.push.close()];
    await Promise.all(calls);
    await app.push.close();
    assert.equal((await client.closed).code, 1001);
    assert.deepEqual(app.push.stats().sessionsClosed, { 1001: 1 });
    assert.equal(app.push.stats().sessionsOpen, 0);
  });

  it('stops the subscription: later publications are not received', async () => {
    const bus = new LocalPubSub();
    app = await startPushApp({ pubsub: bus });
    // Another server on the same bus keeps publishing after this one closed.
    const other = pushMiddleware(bus, 'events', []);
    await other.ready;
    const client = await connectClient(app.wsUrl);
    await other.publish({ identity: 'before', type: 'create', entity: {} });
    await client.waitForEvents(1);
    await app.push.close();
    const receivedAtClose = app.push.stats().eventsReceived;
    await other.publish({ identity: 'after', type: 'create', entity: {} });
    // `other` is subscribed to the same topic and dispatches in the same delivery loop:
    // once its own count moved, the closed server would have counted the publication too.
    await waitFor(() => other.stats().eventsReceived === 2, {
      timeout: 5000,
      message: 'the marker publication did not arrive',
    });
    assert.equal(app.push.stats().eventsReceived, receivedAtClose);
    await other.close();
  });

  for (const variant of [
    { name: 'the synchronous fast path (JSON)', plugin: false, encoding: 'json' },
    { name: 'the synchronous fast path (MessagePack)', plugin: false, encoding: 'msgpack' },
    { name: 'an async dispatch plugin (events still queued)', plugin: 'async', encoding: 'json' },
    {
      name: 'an async shouldDispatch (writes waiting for verdicts)',
      plugin: 'verdicts',
      encoding: 'msgpack',
    },
  ] as const) {
    it(`loses no event received before close(), with ${variant.name}`, async () => {
      const N = 300;
      const pubsub = new TappedPubSub();
      app = await startPushApp({
        pubsub,
        options: { closeTimeout: 10_000, maxBufferedBytes: 64 * 1024 * 1024 },
        plugins:
          variant.plugin === 'async'
            ? [
                definePlugin({
                  name: 'slow-summary',
                  // A real await per event: events pile up on the async dispatch queue.
                  async dispatch(ctx, next) {
                    await new Promise<void>((resolve) => setImmediate(resolve));
                    ctx.state.summary = ctx.event.identity;
                    await next();
                  },
                }),
              ]
            : variant.plugin === 'verdicts'
              ? [
                  // The chain reaches next() at once (no dispatch queue), but every write waits
                  // for a verdict that comes a turn later: close() must wait for those writes.
                  dispatchPlugin({
                    shouldDispatch: () =>
                      new Promise<boolean>((resolve) => setImmediate(() => resolve(true))),
                  }),
                ]
              : [],
      });
      const client = await connectClient(app.wsUrl, { query: { encoding: variant.encoding } });
      let closing: Promise<void> | undefined;
      pubsub.afterDelivery = (count) => {
        // Right after the server received the N-th event: nothing of it has reached the client.
        if (count === N) closing = app?.push.close();
      };
      // 16 KiB entities: ~5 MB are buffered when close() starts.
      await app.push.publish(
        ...range(N).map((seq) => ({
          identity: 'tick',
          type: 'create',
          entity: entity(seq, 16 * 1024),
        })),
      );
      const result = await receivedSeqs(client);
      await closing;
      assert.equal(result.code, 1001);
      assert.equal(app.push.stats().eventsReceived, N);
      assert.deepEqual(result.seqs, range(N), 'every event, in order, before the 1001');
    });
  }

  it('closes mid-stream: the client gets exactly what the server received, without a gap', async () => {
    const pubsub = new TappedPubSub();
    app = await startPushApp({ pubsub, options: { closeTimeout: 10_000 } });
    const client = await connectClient(app.wsUrl);
    let closing: Promise<void> | undefined;
    pubsub.afterDelivery = (count) => {
      if (count === 150) closing = app?.push.close();
    };
    await app.push.publish(
      ...range(400).map((seq) => ({ identity: 'tick', type: 'create', entity: entity(seq, 1024) })),
    );
    const result = await receivedSeqs(client);
    await closing;
    const received = app.push.stats().eventsReceived;
    assert.ok(received >= 150 && received <= 400);
    assert.deepEqual(result.seqs, range(received));
  });

  it('bounds the flush by closeTimeout when a client does not read', async () => {
    const closeTimeout = 500;
    app = await startPushApp({ options: { closeTimeout, maxBufferedBytes: 64 * 1024 * 1024 } });
    const reader = await connectClient(app.wsUrl);
    const stalled = await connectClient(app.wsUrl);
    // The stalled client stops reading: its server-side buffer cannot drain.
    (stalled.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    await app.push.publish(
      ...range(400).map((seq) => ({
        identity: 'tick',
        type: 'create',
        entity: entity(seq, 16 * 1024),
      })),
    );
    await reader.waitForEvents(400, 10_000);
    const started = performance.now();
    await app.push.close();
    const took = performance.now() - started;
    // The flush wait and the close handshake are each bounded by what is left of closeTimeout.
    assert.ok(took < closeTimeout + 1000, `close() took ${took.toFixed(0)} ms`);
    assert.equal(app.push.stats().sessionsOpen, 0);
    assert.equal((await reader.closed).code, 1001);
    // The reader completed its close handshake; the stalled session was terminated at the deadline.
    assert.deepEqual(app.push.stats().sessionsClosed, { 1001: 1, 1006: 1 });
    stalled.ws.terminate();
  });
});
