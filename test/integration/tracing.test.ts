/**
 * The tracing plugin (issue 4) against real tracers:
 *
 * - jaeger-client with its UDP reporter pointed at a socket of this test,
 *   whose datagrams are decoded as a Jaeger agent decodes them (Thrift
 *   binary `Agent.emitBatch`, with thriftrw and the IDL files that
 *   jaeger-client ships);
 * - OpenTelemetry through its OpenTracing shim, with an in-memory exporter.
 *
 * The scenario: two push servers on one bus (a shared LocalPubSub, then a
 * real nats-server), sessions on both, a refused attempt, and one event
 * published on the first server inside a caller's span. Nothing sleeps: the
 * test waits for the spans it expects, with a deadline, and proves that
 * nothing else came by waiting for a marker span sent after everything else.
 */
import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { decode } from '@msgpack/msgpack';
import {
  ROOT_CONTEXT,
  SpanStatusCode,
  context,
  type Context,
  type ContextManager,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  AlwaysOffSampler,
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
} from '@opentelemetry/sdk-trace-base';
import { TracerShim } from '@opentelemetry/shim-opentracing';
import jaeger, { type JaegerTracer } from 'jaeger-client';
import type { Span, SpanOptions, Tracer } from 'opentracing';
import {
  authPlugin,
  definePlugin,
  dispatchPlugin,
  LocalPubSub,
  type Plugin,
  type PubSubClient,
  type PushEvent,
} from '../../lib/index.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import {
  REDACTED,
  SPAN_NAMES,
  TAGS,
  tracingPlugin,
  tracingSpan,
  type TracingOptions,
} from '../../plugins/tracing/index.js';
import { startNats } from '../helpers/brokers.js';
import {
  connectClient,
  expectRefusal,
  startPushApp,
  type PushApp,
  type TestClient,
} from '../helpers/push-app.js';
import { waitFor } from '../helpers/wait.js';

/** How long spans may take to reach the test after the event was delivered. */
const SPANS_MS = 10_000;

// Each secret is long and distinctive: the test searches every datagram's raw bytes for it,
// and a two-byte secret such as `pw` could match the random bytes of a span id by chance.
const SECRET_TOKEN = 'secret-token';
const SECRET_PASSWORD = 'secret-pw-1f7a';
const SECRET_API_KEY = 'secret-api-key-93c1';
const SECRET_BEARER = 'secret-bearer-credential';
const SECRET_COOKIE = 'secret-cookie-session-id';
/** The refused attempt's token, which the careless auth plugin below puts in its error message. */
const LEAKY_TOKEN = 'leaky-wrong-token-5e2b';
const SECRETS = [
  SECRET_TOKEN,
  SECRET_PASSWORD,
  SECRET_API_KEY,
  SECRET_BEARER,
  SECRET_COOKIE,
  LEAKY_TOKEN,
];

const EVENT: PushEvent = {
  identity: 'task',
  type: 'create',
  entity: { ID: '42', name: 'trace me' },
};

/**
 * The plugins of every server: tracing first (so it wraps the rest), a
 * token check whose error message carries the token it refuses, and a
 * predicate that mutes sessions opened with `?mute`, so that one server's
 * counts show a filtered session.
 */
function pluginsWith(tracer: Tracer, extra: Plugin[] = []): Plugin[] {
  const options: TracingOptions = {
    tracer,
    requestHeaders: ['authorization', 'cookie', 'user-agent'],
    redactParameters: ['api_key'],
  };
  return [
    tracingPlugin(options),
    authPlugin((session) => {
      if (session.token === SECRET_TOKEN) return 'ok';
      throw new Error(`unknown token ${session.token}`);
    }),
    dispatchPlugin({ shouldDispatch: (session) => session.parameters('mute').length === 0 }),
    ...extra,
  ];
}

/** What the scenario leaves for the assertions. */
interface Scenario {
  /** Sessions on server A: one that receives the event, one muted by the predicate. */
  a1: TestClient;
  a2: TestClient;
  /** The session on server B, opened with every kind of secret. */
  b1: TestClient;
  /** The ids of the sessions each server accepted. */
  sessionIds: { a: string[]; b: string[] };
}

/**
 * Opens the sessions (three accepted, one refused on B), publishes the
 * event on A through `publish` and waits until B's session and A's unmuted
 * one have it.
 */
async function runScenario(
  a: PushApp,
  b: PushApp,
  publish: () => Promise<void>,
): Promise<Scenario> {
  const a1 = await connectClient(a.wsUrl, { query: { token: SECRET_TOKEN } });
  const a2 = await connectClient(a.wsUrl, { query: { token: SECRET_TOKEN, mute: '1' } });
  const b1 = await connectClient(b.wsUrl, {
    query: { token: SECRET_TOKEN, password: SECRET_PASSWORD, api_key: SECRET_API_KEY, ns: '/acme' },
    headers: {
      Authorization: `Bearer ${SECRET_BEARER}`,
      Cookie: `sid=${SECRET_COOKIE}; theme=dark`,
      'User-Agent': 'pushwire-tracing-test',
    },
  });
  const refusal = await expectRefusal(b.wsUrl, {
    query: { token: LEAKY_TOKEN, password: SECRET_PASSWORD },
    headers: { Authorization: `Bearer ${SECRET_BEARER}` },
  });
  assert.equal(refusal.status, 401, 'the tracing plugin rethrows: the refusal still happens');
  await publish();
  await Promise.all([a1.waitForEvents(1), b1.waitForEvents(1)]);
  return {
    a1,
    a2,
    b1,
    sessionIds: {
      a: a.push.sessions().map((s) => s.id),
      b: b.push.sessions().map((s) => s.id),
    },
  };
}

/** Records the trackingData of every publication on a bus, as another server would read it. */
async function watchTrackingData(
  pubsub: PubSubClient,
  topic = 'events',
): Promise<Array<Record<string, string> | undefined>> {
  const seen: Array<Record<string, string> | undefined> = [];
  await pubsub.connect();
  await pubsub.subscribe(topic, (payload) => {
    const envelope = decode(payload) as { trackingData?: Record<string, string> };
    seen.push(envelope.trackingData);
  });
  return seen;
}

// ---------------------------------------------------------------------------
// The Jaeger wire format: a fake agent on a UDP socket, decoding with thriftrw.

const require = createRequire(import.meta.url);

/** A Thrift tag (jaeger.thrift `Tag`) as thriftrw decodes it. */
interface ThriftTag {
  key: string;
  vType: 'STRING' | 'DOUBLE' | 'BOOL' | 'LONG' | 'BINARY';
  vStr: string | null;
  vDouble: number | null;
  vBool: boolean | null;
  vLong: Buffer | null;
  vBinary: Buffer | null;
}

/** A Thrift span (jaeger.thrift `Span`); i64 fields come as 8-byte big-endian buffers. */
interface ThriftSpan {
  traceIdLow: Buffer;
  traceIdHigh: Buffer;
  spanId: Buffer;
  parentSpanId: Buffer;
  operationName: string;
  references: Array<{ refType: string; traceIdLow: Buffer; spanId: Buffer }> | null;
  flags: number;
  startTime: Buffer;
  duration: Buffer;
  tags: ThriftTag[] | null;
  logs: Array<{ timestamp: Buffer; fields: ThriftTag[] }> | null;
}

/** The arguments message of `Agent.emitBatch` (agent.thrift), what jaeger-client's UDPSender sends. */
interface EmitBatchMessage {
  name: string;
  type: string;
  body: {
    batch: { process: { serviceName: string; tags: ThriftTag[] | null }; spans: ThriftSpan[] };
  };
}

interface ThriftRW {
  Agent: {
    emitBatch: {
      argumentsMessageRW: {
        readFrom(buffer: Buffer, offset: number): { err: Error | null; value: EmitBatchMessage };
      };
    };
  };
}

// thriftrw has no types; its Thrift class is all the test needs, typed above.
const { Thrift } = require('thriftrw') as {
  Thrift: new (options: {
    entryPoint: string;
    allowFilesystemAccess: boolean;
    allowOptionalArguments: boolean;
  }) => ThriftRW;
};

/** The IDL jaeger-client's own UDPSender encodes with: the agent's service and, through it, jaeger.thrift. */
const AGENT_IDL = join(dirname(require.resolve('jaeger-client')), 'thriftrw-idl', 'agent.thrift');

type TagValue = string | number | boolean | bigint | Buffer;

/** A span as the test reads it: ids in hex, tags and log fields as plain maps. */
interface DecodedSpan {
  service: string;
  traceId: bigint;
  spanId: bigint;
  /** 0n for a root span. */
  parentSpanId: bigint;
  name: string;
  references: Array<{ type: string; spanId: bigint }>;
  sampled: boolean;
  durationUs: bigint;
  tags: Record<string, TagValue>;
  logs: Array<Record<string, TagValue>>;
}

const u64 = (buffer: Buffer): bigint => buffer.readBigUInt64BE(0);

function tagValue(tag: ThriftTag): TagValue {
  switch (tag.vType) {
    case 'STRING':
      return tag.vStr ?? '';
    case 'DOUBLE':
      return tag.vDouble ?? 0;
    case 'BOOL':
      return tag.vBool ?? false;
    case 'LONG':
      return tag.vLong ? u64(tag.vLong) : 0n;
    case 'BINARY':
      return tag.vBinary ?? Buffer.alloc(0);
  }
}

function tagMap(tags: ThriftTag[] | null): Record<string, TagValue> {
  return Object.fromEntries((tags ?? []).map((t) => [t.key, tagValue(t)]));
}

/** A UDP socket on 127.0.0.1 that receives what a Jaeger agent would, and decodes it. */
class FakeJaegerAgent {
  readonly datagrams: Buffer[] = [];
  readonly spans: DecodedSpan[] = [];
  readonly errors: string[] = [];
  readonly #socket = createSocket('udp4');
  readonly #thrift = new Thrift({
    entryPoint: AGENT_IDL,
    allowFilesystemAccess: true,
    allowOptionalArguments: true,
  });

  static async start(): Promise<FakeJaegerAgent> {
    const agent = new FakeJaegerAgent();
    agent.#socket.bind(0, '127.0.0.1');
    await once(agent.#socket, 'listening');
    return agent;
  }

  private constructor() {
    this.#socket.on('message', (datagram) => this.#receive(datagram));
  }

  get port(): number {
    return this.#socket.address().port;
  }

  #receive(datagram: Buffer): void {
    this.datagrams.push(datagram);
    const { err, value } = this.#thrift.Agent.emitBatch.argumentsMessageRW.readFrom(datagram, 0);
    if (err) {
      this.errors.push(`undecodable datagram: ${err.message}`);
      return;
    }
    if (value.name !== 'emitBatch') this.errors.push(`unexpected call ${value.name}`);
    const { process, spans } = value.body.batch;
    for (const s of spans) {
      this.spans.push({
        service: process.serviceName,
        traceId: (u64(s.traceIdHigh) << 64n) | u64(s.traceIdLow),
        spanId: u64(s.spanId),
        parentSpanId: u64(s.parentSpanId),
        name: s.operationName,
        references: (s.references ?? []).map((r) => ({ type: r.refType, spanId: u64(r.spanId) })),
        sampled: (s.flags & 1) === 1,
        durationUs: u64(s.duration),
        tags: tagMap(s.tags),
        logs: (s.logs ?? []).map((l) => tagMap(l.fields)),
      });
    }
  }

  named(name: string): DecodedSpan[] {
    return this.spans.filter((s) => s.name === name);
  }

  close(): void {
    this.#socket.close();
  }
}

/** A jaeger-client tracer that samples everything and reports to `port` every 10 ms. */
function jaegerTracer(serviceName: string, port: number, errors: string[]): JaegerTracer {
  return jaeger.initTracer(
    {
      serviceName,
      sampler: { type: 'const', param: 1 },
      reporter: { agentHost: '127.0.0.1', agentPort: port, flushIntervalMs: 10 },
    },
    { logger: { info: () => undefined, error: (message) => errors.push(message) } },
  );
}

function closeTracer(tracer: JaegerTracer | undefined): Promise<void> {
  return new Promise((resolve) => (tracer ? tracer.close(resolve) : resolve()));
}

/** The id of a span started in this process, as the wire carries it. */
function idsOf(span: Span): { traceId: bigint; spanId: bigint } {
  const ctx = span.context();
  return { traceId: BigInt(`0x${ctx.toTraceId()}`), spanId: BigInt(`0x${ctx.toSpanId()}`) };
}

/** A tracer whose spans count the tags and logs written to them after they started. */
function countingWrites(tracer: Tracer): { tracer: Tracer; writes(): number } {
  let writes = 0;
  const counting = new Proxy(tracer, {
    get(target, property) {
      if (property !== 'startSpan') {
        const value = Reflect.get(target, property, target) as unknown;
        return typeof value === 'function' ? value.bind(target) : value;
      }
      return (name: string, options?: SpanOptions): Span => {
        const span = target.startSpan(name, options);
        for (const method of ['setTag', 'addTags', 'log'] as const) {
          const original = span[method].bind(span) as (...args: unknown[]) => unknown;
          Object.defineProperty(span, method, {
            value: (...args: unknown[]) => {
              writes++;
              return original(...args);
            },
          });
        }
        return span;
      };
    },
  });
  return { tracer: counting, writes: () => writes };
}

/** The spans of one trace as an indented tree, tags below each span, for the diagnostics (and the example's README). */
function renderTree(spans: DecodedSpan[], root: DecodedSpan): string {
  // jaeger-client's own sampler tags say nothing about pushwire.
  const hidden = new Set(['sampler.type', 'sampler.param']);
  const lines: string[] = [];
  const walk = (span: DecodedSpan, head: string, body: string): void => {
    // jaeger-client measures with Date.now(): whole milliseconds.
    const ms = Number(span.durationUs) / 1000;
    lines.push(`${head}${span.name}  [${span.service}, ${ms} ms]`);
    const children = spans
      .filter((s) => s.parentSpanId === span.spanId && s.traceId === span.traceId)
      .sort((x, y) => x.service.localeCompare(y.service));
    const guide = body + (children.length > 0 ? '│     ' : '      ');
    for (const [key, value] of Object.entries(span.tags)) {
      if (!hidden.has(key)) lines.push(`${guide}${key} = ${String(value)}`);
    }
    for (const log of span.logs) lines.push(`${guide}log: ${JSON.stringify(log)}`);
    children.forEach((child, i) => {
      const last = i === children.length - 1;
      walk(child, body + (last ? '└── ' : '├── '), body + (last ? '    ' : '│   '));
    });
  };
  walk(root, '', '');
  return lines.join('\n');
}

interface Backend {
  name: string;
  /** Two clients of one bus, as two servers would hold; `stop` frees what `setup` started. */
  setup(): Promise<{ pubsubs: [PubSubClient, PubSubClient]; stop(): Promise<void> }>;
}

const BACKENDS: Backend[] = [
  {
    name: 'a shared LocalPubSub',
    async setup() {
      const bus = new LocalPubSub();
      return { pubsubs: [bus, bus], stop: async () => undefined };
    },
  },
  {
    name: 'a real nats-server',
    async setup() {
      const broker = await startNats();
      const pubsubs: [PubSubClient, PubSubClient] = [
        new NatsPubSub({ servers: broker.url }),
        new NatsPubSub({ servers: broker.url }),
      ];
      return {
        pubsubs,
        async stop() {
          await Promise.all(pubsubs.map((p) => p.disconnect()));
          await broker.stop();
        },
      };
    },
  },
];

for (const backend of BACKENDS) {
  describe(`tracingPlugin with jaeger-client over ${backend.name}: the Jaeger wire format`, () => {
    const tracerErrors: string[] = [];
    let agent: FakeJaegerAgent;
    let tracerA: JaegerTracer | undefined;
    let tracerB: JaegerTracer | undefined;
    let a: PushApp | undefined;
    let b: PushApp | undefined;
    let stopBackend: (() => Promise<void>) | undefined;
    let scenario: Scenario;
    let caller: { traceId: bigint; spanId: bigint };

    before(async () => {
      agent = await FakeJaegerAgent.start();
      tracerA = jaegerTracer('pushwire-a', agent.port, tracerErrors);
      tracerB = jaegerTracer('pushwire-b', agent.port, tracerErrors);
      const { pubsubs, stop } = await backend.setup();
      stopBackend = stop;
      a = await startPushApp({ pubsub: pubsubs[0], plugins: pluginsWith(tracerA) });
      b = await startPushApp({ pubsub: pubsubs[1], plugins: pluginsWith(tracerB) });
      const [appA, appB, tA] = [a, b, tracerA];
      scenario = await runScenario(appA, appB, async () => {
        // The application's own span, e.g. the HTTP request that creates the task.
        const span = tA.startSpan('POST /tasks', { tags: { 'span.kind': 'server' } });
        caller = idsOf(span);
        await appA.push.publishWith({ span, trackingName: 'tasks.create' }, EVENT);
        span.finish();
      });
      await waitFor(
        () =>
          agent.named('POST /tasks').length === 1 &&
          agent.named(SPAN_NAMES.publish).length === 1 &&
          agent.named(SPAN_NAMES.dispatch).length === 2 &&
          agent.named(SPAN_NAMES.session).length === 4,
        {
          timeout: SPANS_MS,
          message: `expected the caller, publish, 2 dispatch and 4 session spans; got ${agent.spans.map((s) => s.name).join(', ')}`,
        },
      );
      // Spans are reported in the order they finish: once a marker finished after everything
      // else has arrived from each tracer, nothing else is on its way.
      for (const [tracer, name] of [
        [tracerA, 'marker-a'],
        [tracerB, 'marker-b'],
      ] as const) {
        tracer.startSpan(name).finish();
      }
      await waitFor(() => agent.named('marker-a').length + agent.named('marker-b').length === 2, {
        timeout: SPANS_MS,
        message: 'the marker spans did not arrive',
      });
    });

    after(async () => {
      await a?.close();
      await b?.close();
      await closeTracer(tracerA);
      await closeTracer(tracerB);
      agent?.close();
      await stopBackend?.();
    });

    it('decodes every datagram as Agent.emitBatch, and the tracers logged no error', () => {
      assert.deepEqual(agent.errors, []);
      assert.deepEqual(tracerErrors, []);
      assert.ok(agent.datagrams.length > 0);
    });

    it("gives the event one trace: caller's span → pushwire.publish → one pushwire.dispatch per server", (t) => {
      const trace = agent.spans.filter((s) => s.traceId === caller.traceId);
      assert.deepEqual(trace.map((s) => s.name).sort(), [
        'POST /tasks',
        SPAN_NAMES.dispatch,
        SPAN_NAMES.dispatch,
        SPAN_NAMES.publish,
      ]);
      const [root] = agent.named('POST /tasks');
      const [publish] = agent.named(SPAN_NAMES.publish);
      assert.ok(root && publish);
      assert.equal(root.spanId, caller.spanId);
      assert.equal(publish.service, 'pushwire-a');
      assert.equal(publish.parentSpanId, caller.spanId, 'publish is a child of the caller');
      const dispatches = agent.named(SPAN_NAMES.dispatch);
      assert.deepEqual(dispatches.map((d) => d.service).sort(), ['pushwire-a', 'pushwire-b']);
      for (const dispatch of dispatches) {
        assert.equal(dispatch.traceId, caller.traceId, 'the receiving server joins the trace');
        assert.equal(dispatch.parentSpanId, publish.spanId, 'dispatch is a child of publish');
        assert.ok(dispatch.sampled);
      }
      t.diagnostic(`\n${renderTree(trace, root)}`);
    });

    it('tags the publish span with the event, the subject it went to and the tracking name', () => {
      const [publish] = agent.named(SPAN_NAMES.publish);
      assert.ok(publish);
      assert.equal(publish.tags[TAGS.component], 'pushwire');
      assert.equal(publish.tags[TAGS.spanKind], 'producer');
      assert.equal(publish.tags[TAGS.destination], 'events');
      assert.equal(publish.tags[TAGS.identity], 'task');
      assert.equal(publish.tags[TAGS.type], 'create');
      assert.equal(publish.tags[TAGS.trackingName], 'tasks.create');
      assert.equal(publish.tags[TAGS.error], undefined);
    });

    it('tags each dispatch span with the event and the counts of its fan-out on that server', () => {
      const byService = new Map(agent.named(SPAN_NAMES.dispatch).map((d) => [d.service, d]));
      const onA = byService.get('pushwire-a');
      const onB = byService.get('pushwire-b');
      assert.ok(onA && onB);
      for (const d of [onA, onB]) {
        assert.equal(d.tags[TAGS.component], 'pushwire');
        assert.equal(d.tags[TAGS.spanKind], 'consumer');
        assert.equal(d.tags[TAGS.destination], 'events');
        assert.equal(d.tags[TAGS.identity], 'task');
        assert.equal(d.tags[TAGS.type], 'create');
        assert.equal(d.tags[TAGS.trackingName], 'tasks.create', 'read from the envelope');
        assert.equal(d.tags[TAGS.dropped], 0);
      }
      // A: one session gets it, the muted one is filtered by the predicate.
      assert.equal(onA.tags[TAGS.considered], 2);
      assert.equal(onA.tags[TAGS.sent], 1);
      assert.equal(onA.tags[TAGS.filtered], 1);
      assert.equal(onB.tags[TAGS.considered], 1);
      assert.equal(onB.tags[TAGS.sent], 1);
      assert.equal(onB.tags[TAGS.filtered], 0);
      assert.equal(scenario.a2.events.length, 0);
    });

    it('opens one pushwire.session span per connection attempt, each a trace of its own', (t) => {
      const sessions = agent.named(SPAN_NAMES.session);
      const accepted = sessions.filter((s) => s.tags[TAGS.outcome] === 'accepted');
      assert.equal(accepted.length, 3);
      assert.deepEqual(
        accepted.map((s) => s.tags[TAGS.sessionId]).sort(),
        [...scenario.sessionIds.a, ...scenario.sessionIds.b].sort(),
      );
      for (const s of sessions) {
        assert.equal(s.parentSpanId, 0n);
        assert.notEqual(s.traceId, caller.traceId);
        assert.equal(s.tags[TAGS.spanKind], 'server');
        assert.equal(s.tags[TAGS.peerAddress], '127.0.0.1');
        assert.equal(s.tags[TAGS.httpMethod], 'GET');
      }
      assert.equal(accepted.filter((s) => s.tags[TAGS.error] !== undefined).length, 0);
      const onB = accepted.find((s) => s.service === 'pushwire-b');
      assert.ok(onB);
      assert.equal(onB.tags[TAGS.sessionId], scenario.sessionIds.b[0]);
      assert.equal(
        onB.tags[TAGS.httpUrl],
        `/api/events?token=${REDACTED}&password=${REDACTED}&api_key=${REDACTED}&ns=%2Facme`,
      );
      assert.equal(onB.tags[`${TAGS.requestHeaderPrefix}authorization`], REDACTED);
      assert.equal(
        onB.tags[`${TAGS.requestHeaderPrefix}cookie`],
        `sid=${REDACTED}; theme=${REDACTED}`,
      );
      assert.equal(onB.tags[`${TAGS.requestHeaderPrefix}user-agent`], 'pushwire-tracing-test');
      t.diagnostic(`\n${renderTree([onB], onB)}`);
    });

    it("marks a refusal with its HTTP status and the plugin's error, the token scrubbed out", (t) => {
      const refused = agent
        .named(SPAN_NAMES.session)
        .filter((s) => s.tags[TAGS.outcome] === 'refused');
      assert.equal(refused.length, 1);
      const [span] = refused;
      assert.ok(span);
      assert.equal(span.service, 'pushwire-b');
      assert.equal(span.tags[TAGS.httpStatusCode], 401);
      assert.equal(span.tags[TAGS.error], true);
      assert.equal(span.tags[TAGS.errorCode], 'PUSH_UNAUTHORIZED');
      assert.equal(span.logs.length, 1);
      assert.equal(span.logs[0]?.event, 'error');
      assert.equal(span.logs[0]?.['error.kind'], 'UnauthorizedError');
      assert.equal(span.logs[0]?.message, `unknown token ${REDACTED}`);
      t.diagnostic(`\n${renderTree([span], span)}`);
    });

    it('never puts a token, password, API key, Authorization or Cookie value in a datagram', () => {
      for (const secret of SECRETS) {
        const found = agent.datagrams.filter((d) => d.includes(secret)).length;
        assert.equal(found, 0, `"${secret}" appears in ${found} datagram(s)`);
      }
    });
  });
}

// ---------------------------------------------------------------------------
// OpenTelemetry through its OpenTracing shim.

/**
 * OpenTelemetry's active context in async-local storage, as
 * @opentelemetry/context-async-hooks keeps it (that package is not a
 * dependency here): enough for `startActiveSpan` around an awaited publish.
 */
class AsyncLocalContextManager implements ContextManager {
  readonly #storage = new AsyncLocalStorage<Context>();

  active(): Context {
    return this.#storage.getStore() ?? ROOT_CONTEXT;
  }

  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(
    ctx: Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    return this.#storage.run(ctx, () => fn.apply(thisArg, args));
  }

  bind<T>(ctx: Context, target: T): T {
    if (typeof target !== 'function') return target;
    const run = (...args: unknown[]): unknown =>
      this.with(ctx, target as (...a: unknown[]) => unknown, undefined, ...args);
    return run as T;
  }

  enable(): this {
    return this;
  }

  disable(): this {
    this.#storage.disable();
    return this;
  }
}

/** An OpenTelemetry provider with an in-memory exporter, seen through the OpenTracing shim. */
function otelTracer(sampler?: AlwaysOffSampler): {
  exporter: InMemorySpanExporter;
  provider: BasicTracerProvider;
  shim: TracerShim;
} {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    spanProcessors: [new SimpleSpanProcessor(exporter)],
    ...(sampler ? { sampler } : {}),
  });
  // A W3C propagator for TEXT_MAP: an SDK registers one globally; this test passes it to the shim.
  const shim = new TracerShim(provider.getTracer('pushwire-test'), {
    textMapPropagator: new W3CTraceContextPropagator(),
  });
  return { exporter, provider, shim };
}

/** Everything a span could show an operator, as text. */
function spanText(span: ReadableSpan): string {
  return JSON.stringify({
    name: span.name,
    attributes: span.attributes,
    events: span.events.map((e) => ({ name: e.name, attributes: e.attributes })),
    status: span.status,
  });
}

describe("tracingPlugin through OpenTelemetry's OpenTracing shim", () => {
  const contextManager = new AsyncLocalContextManager();
  const { exporter, provider, shim } = otelTracer();
  const bus = new LocalPubSub();
  let a: PushApp | undefined;
  let b: PushApp | undefined;
  let trackingData: Array<Record<string, string> | undefined>;
  let scenario: Scenario;
  let callerSpanId = '';
  let traceId = '';

  const finished = (name: string): ReadableSpan[] =>
    exporter.getFinishedSpans().filter((s) => s.name === name);

  before(async () => {
    assert.ok(context.setGlobalContextManager(contextManager), 'no other context manager');
    // A plugin after tracing that does traced work of its own in the session phase.
    const lookup = definePlugin({
      name: 'lookup',
      async session(ctx, next) {
        const parent = tracingSpan(ctx);
        parent?.tracer().startSpan('identity lookup', { childOf: parent }).finish();
        return next();
      },
    });
    a = await startPushApp({ pubsub: bus, plugins: pluginsWith(shim, [lookup]) });
    b = await startPushApp({ pubsub: bus, plugins: pluginsWith(shim, [lookup]) });
    trackingData = await watchTrackingData(bus);
    const appA = a;
    const otel = provider.getTracer('app');
    scenario = await runScenario(a, b, () =>
      // The application's request span is the active OpenTelemetry span: publish() gets no span.
      otel.startActiveSpan('POST /tasks', async (span) => {
        callerSpanId = span.spanContext().spanId;
        traceId = span.spanContext().traceId;
        try {
          await appA.push.publish(EVENT);
        } finally {
          span.end();
        }
      }),
    );
    // SimpleSpanProcessor exports as spans end; the dispatch spans end right after the fan-out.
    await waitFor(() => finished(SPAN_NAMES.dispatch).length === 2, {
      timeout: SPANS_MS,
      message: 'expected two dispatch spans',
    });
  });

  after(async () => {
    await a?.close();
    await b?.close();
    await provider.shutdown();
    context.disable();
  });

  it('makes pushwire.publish a child of the active OpenTelemetry span, and both dispatch spans its children', () => {
    const [publish] = finished(SPAN_NAMES.publish);
    assert.ok(publish);
    assert.equal(publish.spanContext().traceId, traceId);
    assert.equal(publish.parentSpanContext?.spanId, callerSpanId);
    const dispatches = finished(SPAN_NAMES.dispatch);
    assert.equal(dispatches.length, 2);
    for (const d of dispatches) {
      assert.equal(d.spanContext().traceId, traceId);
      assert.equal(d.parentSpanContext?.spanId, publish.spanContext().spanId);
      assert.equal(d.parentSpanContext?.isRemote, true, 'extracted from trackingData');
      assert.equal(d.attributes[TAGS.identity], 'task');
    }
    assert.deepEqual(dispatches.map((d) => d.attributes[TAGS.sent]).sort(), [1, 1]);
    assert.deepEqual(dispatches.map((d) => d.attributes[TAGS.filtered]).sort(), [0, 1]);
  });

  it("carries the publish span's context in trackingData as a W3C traceparent", () => {
    const [publish] = finished(SPAN_NAMES.publish);
    assert.ok(publish);
    assert.equal(trackingData.length, 1);
    assert.deepEqual(trackingData[0], {
      traceparent: `00-${traceId}-${publish.spanContext().spanId}-01`,
    });
  });

  it('turns a refusal into an ERROR status and an exception event, the token scrubbed out', () => {
    const sessions = finished(SPAN_NAMES.session);
    assert.equal(sessions.length, 4);
    const refused = sessions.filter((s) => s.attributes[TAGS.outcome] === 'refused');
    assert.equal(refused.length, 1);
    const [span] = refused;
    assert.ok(span);
    assert.equal(span.status.code, SpanStatusCode.ERROR);
    assert.equal(span.attributes[TAGS.httpStatusCode], 401);
    const exception = span.events.find((e) => e.name === 'exception');
    assert.equal(exception?.attributes?.['exception.message'], `unknown token ${REDACTED}`);
    const accepted = sessions.filter((s) => s.attributes[TAGS.outcome] === 'accepted');
    assert.deepEqual(
      accepted.map((s) => s.attributes[TAGS.sessionId]).sort(),
      [...scenario.sessionIds.a, ...scenario.sessionIds.b].sort(),
    );
    for (const s of accepted) assert.equal(s.status.code, SpanStatusCode.UNSET);
  });

  it("gives a later plugin the phase's span (tracingSpan) to start child spans of", () => {
    const lookups = finished('identity lookup');
    const sessions = finished(SPAN_NAMES.session);
    assert.equal(lookups.length, 3, 'the refused attempt stops at the auth plugin');
    for (const l of lookups) {
      const parent = sessions.find((s) => s.spanContext().spanId === l.parentSpanContext?.spanId);
      assert.equal(parent?.attributes[TAGS.outcome], 'accepted');
    }
  });

  it('never puts a secret in an exported span', () => {
    const text = exporter.getFinishedSpans().map(spanText).join('\n');
    for (const secret of SECRETS) assert.ok(!text.includes(secret), `"${secret}" was exported`);
  });
});

// ---------------------------------------------------------------------------
// Options, sampling, and a failing tracer.

describe('tracingPlugin options, sampling and failures', () => {
  it('rejects a tracer that is not an OpenTracing tracer', () => {
    for (const tracer of [undefined, null, {}, { startSpan() {} }]) {
      assert.throws(
        () => tracingPlugin({ tracer } as unknown as TracingOptions),
        (error: unknown) => error instanceof TypeError,
      );
    }
  });

  it('registers no hook for a phase turned off, so that phase costs nothing', () => {
    const { shim } = otelTracer();
    const all = tracingPlugin({ tracer: shim });
    assert.equal(typeof all.session, 'function');
    assert.equal(typeof all.publish, 'function');
    assert.equal(typeof all.dispatch, 'function');
    const some = tracingPlugin({ tracer: shim, phases: { dispatch: false, session: false } });
    assert.equal(some.session, undefined);
    assert.equal(some.dispatch, undefined);
    assert.equal(typeof some.publish, 'function');
  });

  it('with a jaeger sampler that samples nothing: no span reported, the decision propagated, events delivered', async () => {
    const reporter = new jaeger.InMemoryReporter();
    const tracer = jaeger.initTracer(
      { serviceName: 'pushwire-off', sampler: { type: 'const', param: 0 } },
      { reporter },
    );
    const bus = new LocalPubSub();
    const a = await startPushApp({ pubsub: bus, plugins: pluginsWith(tracer) });
    const b = await startPushApp({ pubsub: bus, plugins: pluginsWith(tracer) });
    try {
      const seen = await watchTrackingData(bus);
      const client = await connectClient(b.wsUrl, { query: { token: SECRET_TOKEN } });
      assert.equal((await expectRefusal(b.wsUrl, { query: { token: 'nope' } })).status, 401);
      await a.push.publish(EVENT);
      await client.waitForEvents(1);
      // uber-trace-id is trace:span:parent:flags; flags 0 tells every server not to sample.
      const header = seen[0]?.['uber-trace-id'];
      assert.match(header ?? '', /^[0-9a-f]+:[0-9a-f]+:0:0$/);
    } finally {
      // close() waits for the dispatch in progress: every span has finished after it.
      await a.close();
      await b.close();
      await closeTracer(tracer);
    }
    assert.equal(reporter.spans.length, 0);
  });

  it('writes no tag or log to a span that is not sampled (jaeger const 0), and does to one that is', async () => {
    const writes: number[] = [];
    for (const param of [0, 1]) {
      const counting = countingWrites(
        jaeger.initTracer(
          { serviceName: 'pushwire-count', sampler: { type: 'const', param } },
          { reporter: new jaeger.InMemoryReporter() },
        ),
      );
      const a = await startPushApp({ plugins: pluginsWith(counting.tracer) });
      try {
        const client = await connectClient(a.wsUrl, { query: { token: SECRET_TOKEN } });
        assert.equal((await expectRefusal(a.wsUrl, { query: { token: 'nope' } })).status, 401);
        await a.push.publish(EVENT);
        await client.waitForEvents(1);
      } finally {
        await a.close();
      }
      writes.push(counting.writes());
    }
    assert.equal(writes[0], 0, 'unsampled: no tag computed');
    assert.ok((writes[1] ?? 0) > 0, 'sampled: tags written (the counting works)');
  });

  it('with an OpenTelemetry sampler that samples nothing: no span exported, traceparent flags 00', async () => {
    const { exporter, provider, shim } = otelTracer(new AlwaysOffSampler());
    const bus = new LocalPubSub();
    const a = await startPushApp({ pubsub: bus, plugins: pluginsWith(shim) });
    try {
      const seen = await watchTrackingData(bus);
      const client = await connectClient(a.wsUrl, { query: { token: SECRET_TOKEN } });
      await a.push.publish(EVENT);
      await client.waitForEvents(1);
      assert.match(seen[0]?.traceparent ?? '', /^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
    } finally {
      await a.close();
    }
    assert.equal(exporter.getFinishedSpans().length, 0);
    await provider.shutdown();
  });

  it('uses activeSpan() as the parent when publishWith() gets no span', async () => {
    const { exporter, provider, shim } = otelTracer();
    const caller = shim.startSpan('job');
    const a = await startPushApp({
      plugins: [tracingPlugin({ tracer: shim, activeSpan: () => caller })],
    });
    try {
      await a.push.publish(EVENT);
    } finally {
      await a.close();
    }
    caller.finish();
    const [publish] = exporter.getFinishedSpans().filter((s) => s.name === SPAN_NAMES.publish);
    assert.equal(publish?.parentSpanContext?.spanId, caller.context().toSpanId());
    await provider.shutdown();
  });

  it('records a quiet refusal (a plugin that does not call next) as refused with 403, not as an error', async () => {
    const { exporter, provider, shim } = otelTracer();
    const silent = definePlugin({ name: 'silent', session: () => undefined });
    const a = await startPushApp({ plugins: [tracingPlugin({ tracer: shim }), silent] });
    try {
      assert.equal((await expectRefusal(a.wsUrl)).status, 403);
    } finally {
      await a.close();
    }
    const [span] = exporter.getFinishedSpans();
    assert.equal(span?.attributes[TAGS.outcome], 'refused');
    assert.equal(span?.attributes[TAGS.httpStatusCode], 403);
    assert.equal(span?.status.code, SpanStatusCode.UNSET);
    await provider.shutdown();
  });

  it('a tracer that throws never stops a session, a publication or a dispatch', async () => {
    const fail = (): never => {
      throw new Error('tracer failure');
    };
    const throwingSpan = {
      context: fail,
      tracer: fail,
      setTag: fail,
      addTags: fail,
      log: fail,
      finish: fail,
    };
    const tracers = [
      { startSpan: fail, inject: fail, extract: fail },
      { startSpan: () => throwingSpan, inject: fail, extract: fail },
    ];
    for (const tracer of tracers) {
      const bus = new LocalPubSub();
      const plugins = pluginsWith(tracer as unknown as Tracer);
      const a = await startPushApp({ pubsub: bus, plugins });
      const b = await startPushApp({ pubsub: bus, plugins });
      try {
        const client = await connectClient(b.wsUrl, { query: { token: SECRET_TOKEN } });
        assert.equal((await expectRefusal(b.wsUrl, { query: { token: 'nope' } })).status, 401);
        await a.push.publish(EVENT);
        const [event] = await client.waitForEvents(1);
        assert.equal(event?.identity, 'task');
      } finally {
        await a.close();
        await b.close();
      }
    }
  });
});
