/**
 * The Prometheus metrics plugin (issue 9, item 1) and the core hooks it
 * reads: `push.stats()` (sessions by encoding, abandoned attempts) and
 * `push.onDispatch` (the fan-out duration).
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { Registry, register as globalRegistry, type OpenMetricsContentType } from 'prom-client';
import {
  authPlugin,
  definePlugin,
  LocalPubSub,
  type DispatchInfo,
  type Logger,
} from '../../lib/index.js';
import { closeCodeLabel, registerMetrics } from '../../plugins/metrics/index.js';
import { connectClient, expectRefusal, startPushApp, type PushApp } from '../helpers/push-app.js';
import { waitFor } from '../helpers/wait.js';

/** The value of one sample, by metric name and labels (undefined when absent). */
async function sample(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  const metrics = await registry.getMetricsAsJSON();
  for (const metric of metrics) {
    for (const value of metric.values) {
      const sampleName = (value as { metricName?: string }).metricName ?? metric.name;
      if (sampleName !== name) continue;
      const l = value.labels as Record<string, string | number>;
      if (Object.entries(labels).every(([k, v]) => String(l[k]) === v)) {
        if (Object.keys(l).filter((k) => k !== 'le').length === Object.keys(labels).length) {
          return value.value;
        }
      }
    }
  }
  return undefined;
}

/** A LocalPubSub whose publish fails while `failures` is positive. */
class FlakyPubSub extends LocalPubSub {
  failures = 0;
  override publish(subject: string, payload: Uint8Array): Promise<void> {
    if (this.failures > 0) {
      this.failures--;
      return Promise.reject(new Error('broker hiccup'));
    }
    return super.publish(subject, payload);
  }
}

const EXPECTED_NAMES = [
  'pushwire_sessions_open',
  'pushwire_sessions_open_by_transport',
  'pushwire_sessions_accepted_total',
  'pushwire_sessions_refused_total',
  'pushwire_sessions_abandoned_total',
  'pushwire_sessions_closed_total',
  'pushwire_events_received_total',
  'pushwire_events_undecodable_total',
  'pushwire_dispatch_errors_total',
  'pushwire_events_delivered_total',
  'pushwire_events_filtered_total',
  'pushwire_events_dropped_total',
  'pushwire_invalid_push_configs_total',
  'pushwire_events_published_total',
  'pushwire_publish_retries_total',
  'pushwire_publish_failures_total',
  'pushwire_recoveries_total',
  'pushwire_recoveries_failed_total',
  'pushwire_events_replayed_total',
  'pushwire_backend_state',
  'pushwire_backend_state_changes_total',
  'pushwire_dispatch_duration_seconds',
];

describe('metrics plugin', () => {
  let app: PushApp | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it("registers on the application's registry only, never on prom-client's global one", async () => {
    app = await startPushApp();
    const globalBefore = (await globalRegistry.getMetricsAsJSON()).map((m) => m.name);
    const registry = new Registry();
    const metrics = registerMetrics(app.push, { registry });
    assert.deepEqual([...metrics.names].sort(), [...EXPECTED_NAMES].sort());
    assert.deepEqual(
      (await registry.getMetricsAsJSON()).map((m) => m.name).sort(),
      [...EXPECTED_NAMES].sort(),
    );
    assert.deepEqual(
      (await globalRegistry.getMetricsAsJSON()).map((m) => m.name),
      globalBefore,
    );
    // Names follow the conventions: a prefix, _total on counters, seconds, no unbounded label.
    for (const metric of await registry.getMetricsAsJSON()) {
      assert.match(metric.name, /^pushwire_[a-z_]+$/);
      if (String(metric.type) === 'counter') assert.match(metric.name, /_total$/);
      for (const value of metric.values) {
        for (const label of Object.keys(value.labels)) {
          assert.ok(
            ['encoding', 'transport', 'status', 'code', 'state', 'le'].includes(label),
            label,
          );
        }
      }
    }
  });

  it('copies the core counters: sessions by encoding, accepted, refused, closed, events', async () => {
    app = await startPushApp({
      plugins: [authPlugin((s) => (s.parameter('who') === 'intruder' ? 'ko' : 'ok'))],
    });
    const registry = new Registry();
    registerMetrics(app.push, { registry });
    const json = await connectClient(app.wsUrl);
    const msgpack = await connectClient(app.wsUrl, { query: { encoding: 'msgpack' } });
    const picky = await connectClient(app.wsUrl);
    assert.equal((await expectRefusal(app.wsUrl, { query: { who: 'intruder' } })).status, 401);
    assert.equal(
      await sample(registry, 'pushwire_sessions_open', { encoding: 'application/json' }),
      2,
    );
    assert.equal(
      await sample(registry, 'pushwire_sessions_open', { encoding: 'application/msgpack' }),
      1,
    );
    assert.equal(await sample(registry, 'pushwire_sessions_accepted_total'), 3);
    assert.equal(
      await sample(registry, 'pushwire_sessions_open_by_transport', { transport: 'websocket' }),
      3,
    );
    assert.equal(
      await sample(registry, 'pushwire_sessions_open_by_transport', { transport: 'sse' }),
      0,
    );
    assert.equal(await sample(registry, 'pushwire_sessions_refused_total', { status: '401' }), 1);

    picky.sendConfig({ identities: { user: [] } });
    await waitFor(() => app?.push.sessions().some((s) => s.pushConfig !== undefined) === true, {
      timeout: 5000,
      message: 'the push config was not applied',
    });
    await app.push.publish({ identity: 'task', type: 'create', entity: { n: 1 } });
    await Promise.all([json.waitForEvents(1), msgpack.waitForEvents(1)]);
    assert.equal(await sample(registry, 'pushwire_events_published_total'), 1);
    assert.equal(await sample(registry, 'pushwire_events_received_total'), 1);
    assert.equal(await sample(registry, 'pushwire_events_delivered_total'), 2);
    assert.equal(await sample(registry, 'pushwire_events_filtered_total'), 1);
    assert.equal(await sample(registry, 'pushwire_events_dropped_total'), 0);
    assert.equal(await sample(registry, 'pushwire_dispatch_duration_seconds_count'), 1);
    assert.ok(((await sample(registry, 'pushwire_dispatch_duration_seconds_sum')) ?? 0) > 0);

    json.ws.close(4321);
    await json.closed;
    msgpack.ws.send(Buffer.from([0xc1])); // never valid MessagePack: closed with 1003
    await msgpack.closed;
    await waitFor(() => app?.push.stats().sessionsOpen === 1, {
      timeout: 5000,
      message: 'two sessions did not close',
    });
    assert.equal(await sample(registry, 'pushwire_sessions_closed_total', { code: '4xxx' }), 1);
    assert.equal(await sample(registry, 'pushwire_sessions_closed_total', { code: '1003' }), 1);
    assert.equal(await sample(registry, 'pushwire_invalid_push_configs_total'), 1);
    assert.equal(
      await sample(registry, 'pushwire_sessions_open', { encoding: 'application/msgpack' }),
      0,
    );
  });

  it('counts a refusal written by an Express middleware mounted before the endpoint', async () => {
    app = await startPushApp({
      before: (express) =>
        express.use('/api', (req, res, next) => {
          // A rate limiter in front of the push endpoint.
          if (req.url?.includes('limited')) res.status(429).json({ error: 'slow down' });
          else next();
        }),
    });
    const registry = new Registry();
    registerMetrics(app.push, { registry });
    assert.equal((await expectRefusal(app.wsUrl, { query: { limited: '1' } })).status, 429);
    assert.deepEqual(app.push.stats().sessionsRefused, { 429: 1 });
    assert.equal(await sample(registry, 'pushwire_sessions_refused_total', { status: '429' }), 1);
    assert.equal(app.push.stats().sessionsAbandoned, 0);
  });

  it('counts events dropped for a slow consumer, and reports them per fan-out', async () => {
    app = await startPushApp({ options: { maxBufferedBytes: 64 * 1024, pingInterval: 0 } });
    const registry = new Registry();
    registerMetrics(app.push, { registry });
    let droppedInFanOuts = 0;
    app.push.onDispatch((info) => (droppedInFanOuts += info.dropped));
    const reader = await connectClient(app.wsUrl);
    const stalled = await connectClient(app.wsUrl);
    (stalled.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    // 24 MB: more than the kernel buffers of a loopback connection take in, plus the bound.
    const N = 3000;
    for (let i = 0; i < N; i += 100) {
      await app.push.publish(
        ...Array.from({ length: 100 }, (_, k) => ({
          identity: 'bulk',
          type: 'create',
          entity: { seq: i + k, pad: 'z'.repeat(8 * 1024) },
        })),
      );
      await reader.waitForEvents(i + 100, 15_000);
    }
    const dropped = app.push.stats().dropped;
    assert.ok(dropped > 0, 'the stalled session should have dropped events');
    assert.equal(app.push.sessions().find((s) => s.droppedEvents > 0)?.droppedEvents, dropped);
    assert.equal(await sample(registry, 'pushwire_events_dropped_total'), dropped);
    assert.equal(droppedInFanOuts, dropped);
    assert.equal(await sample(registry, 'pushwire_events_delivered_total'), 2 * N - dropped);
    stalled.ws.terminate();
  });

  it('counts publish retries and failures', async () => {
    const pubsub = new FlakyPubSub();
    app = await startPushApp({ pubsub, options: { publishRetries: 3, publishRetryDelay: 1 } });
    const registry = new Registry();
    registerMetrics(app.push, { registry });
    pubsub.failures = 2;
    await app.push.publish({ identity: 'a', type: 'create', entity: {} });
    assert.equal(await sample(registry, 'pushwire_publish_retries_total'), 2);
    assert.equal(await sample(registry, 'pushwire_events_published_total'), 1);
    pubsub.failures = 100;
    await assert.rejects(app.push.publish({ identity: 'a', type: 'create', entity: {} }));
    assert.equal(await sample(registry, 'pushwire_publish_retries_total'), 5);
    assert.equal(await sample(registry, 'pushwire_publish_failures_total'), 1);
  });

  it('follows the backend state and counts its transitions', async () => {
    const pubsub = new LocalPubSub();
    app = await startPushApp({ pubsub });
    const registry = new Registry();
    registerMetrics(app.push, { registry });
    assert.equal(await sample(registry, 'pushwire_backend_state', { state: 'connected' }), 1);
    assert.equal(await sample(registry, 'pushwire_backend_state', { state: 'closed' }), 0);
    await pubsub.disconnect();
    assert.equal(await sample(registry, 'pushwire_backend_state', { state: 'connected' }), 0);
    assert.equal(await sample(registry, 'pushwire_backend_state', { state: 'closed' }), 1);
    assert.equal(
      await sample(registry, 'pushwire_backend_state_changes_total', { state: 'closed' }),
      1,
    );
    await pubsub.connect();
    assert.equal(
      await sample(registry, 'pushwire_backend_state_changes_total', { state: 'connected' }),
      1,
    );
  });

  it('keeps the plugin-free dispatch path: the fan-out is done by the tick after the backend handler', async () => {
    // A subscriber registered after the server's runs right after it in the same delivery
    // loop, and its nextTick after the server's batch flush: had metrics moved dispatch onto
    // a promise chain, nothing would be counted yet.
    const bus = new LocalPubSub();
    app = await startPushApp({ pubsub: bus });
    registerMetrics(app.push, { registry: new Registry() });
    const client = await connectClient(app.wsUrl);
    const seen: number[] = [];
    await bus.subscribe('events', () =>
      process.nextTick(() => seen.push(app?.push.stats().deliveries ?? -1)),
    );
    await app.push.publish({ identity: 'a', type: 'create', entity: {} });
    await client.waitForEvents(1);
    assert.deepEqual(seen, [1]);
  });

  it('observes the fan-out with dispatch plugins too, but not events a plugin dropped', async () => {
    app = await startPushApp({
      plugins: [
        definePlugin({
          async dispatch(ctx, next) {
            if (ctx.event.identity === 'poison') throw new Error('cannot summarize');
            await next();
          },
        }),
      ],
    });
    const registry = new Registry();
    registerMetrics(app.push, { registry });
    const client = await connectClient(app.wsUrl);
    await app.push.publish(
      { identity: 'a', type: 'create', entity: {} },
      { identity: 'poison', type: 'create', entity: {} },
      { identity: 'b', type: 'create', entity: {} },
    );
    await client.waitForEvents(2);
    await waitFor(() => app?.push.stats().dispatchErrors === 1, {
      timeout: 5000,
      message: 'the poison event was not counted',
    });
    assert.equal(await sample(registry, 'pushwire_dispatch_errors_total'), 1);
    assert.equal(await sample(registry, 'pushwire_dispatch_duration_seconds_count'), 2);
  });

  it('unregisters cleanly; a name clash throws and leaves the registry as it was', async () => {
    app = await startPushApp();
    const registry = new Registry();
    const first = registerMetrics(app.push, { registry });
    assert.throws(() => registerMetrics(app!.push, { registry }), /already been registered/);
    assert.equal((await registry.getMetricsAsJSON()).length, EXPECTED_NAMES.length);
    const other = registerMetrics(app.push, { registry, prefix: 'edge_push_' });
    assert.equal((await registry.getMetricsAsJSON()).length, EXPECTED_NAMES.length * 2);
    first.unregister();
    first.unregister();
    other.unregister();
    assert.deepEqual(await registry.getMetricsAsJSON(), []);
    // Re-registering after unregister works: nothing was left behind.
    registerMetrics(app.push, { registry }).unregister();
  });

  it('does not double the _total suffix on an OpenMetrics registry', async () => {
    app = await startPushApp();
    const registry = new Registry<OpenMetricsContentType>();
    registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    registerMetrics(app.push, { registry });
    const text = await registry.metrics();
    assert.match(text, /^pushwire_sessions_accepted_total 0$/m);
    assert.doesNotMatch(text, /_total_total/);
  });

  it('groups client-chosen close codes so that the label set stays bounded', () => {
    assert.equal(closeCodeLabel(1000), '1000');
    assert.equal(closeCodeLabel(1006), '1006');
    assert.equal(closeCodeLabel(3001), '3xxx');
    assert.equal(closeCodeLabel(4999), '4xxx');
    assert.equal(closeCodeLabel(7), 'other');
  });
});

describe('onDispatch (core hook)', () => {
  let app: PushApp | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('reports each fan-out with its counts; a throwing listener is logged and ignored', async () => {
    const warnings: string[] = [];
    const logger: Logger = {
      debug: () => undefined,
      info: () => undefined,
      warn: (_obj, msg) => warnings.push(msg ?? ''),
      error: () => undefined,
    };
    app = await startPushApp({ options: { logger } });
    const infos: DispatchInfo[] = [];
    const remove = app.push.onDispatch((info) => infos.push(info));
    const removeThrowing = app.push.onDispatch(() => {
      throw new Error('listener bug');
    });
    const a = await connectClient(app.wsUrl);
    const b = await connectClient(app.wsUrl);
    b.sendConfig({ identities: { other: [] } });
    await waitFor(
      () => app?.push.sessions().filter((s) => s.pushConfig !== undefined).length === 1,
      { timeout: 5000, message: 'the push config was not applied' },
    );
    await app.push.publish({ identity: 'task', type: 'create', entity: {} });
    await a.waitForEvents(1);
    assert.equal(infos.length, 1);
    const [info] = infos;
    assert.deepEqual(
      { ...info, durationSeconds: 0 },
      {
        durationSeconds: 0,
        considered: 2,
        sent: 1,
        filtered: 1,
        dropped: 0,
      },
    );
    assert.ok(info!.durationSeconds > 0 && info!.durationSeconds < 5);
    assert.deepEqual(warnings, ['pushwire: onDispatch threw']);
    remove();
    removeThrowing();
    await app.push.publish({ identity: 'task', type: 'create', entity: {} });
    await a.waitForEvents(2);
    assert.equal(infos.length, 1);
    assert.equal(warnings.length, 1);
  });

  it('counts an attempt whose client leaves mid-handshake as abandoned', async () => {
    let release: () => void = () => undefined;
    const waiting = new Promise<void>((resolve) => (release = resolve));
    let entered: () => void = () => undefined;
    const inPlugin = new Promise<void>((resolve) => (entered = resolve));
    app = await startPushApp({
      plugins: [
        authPlugin(async () => {
          entered();
          await waiting;
          return 'ok' as const;
        }),
      ],
    });
    const registry = new Registry();
    registerMetrics(app.push, { registry });
    const { default: WebSocket } = await import('ws');
    const ws = new WebSocket(app.wsUrl);
    ws.on('error', () => undefined);
    await inPlugin;
    ws.terminate();
    await waitFor(() => app?.push.stats().sessionsAbandoned === 1, {
      timeout: 5000,
      message: 'the abandoned attempt was not counted',
    });
    release();
    assert.equal(await sample(registry, 'pushwire_sessions_abandoned_total'), 1);
    assert.equal(app.push.stats().sessionsOpen, 0);
    assert.deepEqual(app.push.stats().sessionsRefused, {});
  });
});
