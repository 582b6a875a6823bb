/**
 * Prometheus metrics for a push middleware, with prom-client (an optional
 * peer dependency: install it to use this module).
 *
 *   import { Registry } from 'prom-client';
 *   import { registerMetrics } from 'pushwire/plugins/metrics';
 *   const registry = new Registry();
 *   registerMetrics(push, { registry });
 *   app.get('/metrics', async (_req, res) => {
 *     res.type(registry.contentType).send(await registry.metrics());
 *   });
 *
 * Nothing is registered on prom-client's global registry: every metric goes
 * to the registry passed in (pass `register` from prom-client to use the
 * global one on purpose).
 *
 * Why it reads counters instead of hooking the events: a dispatch plugin
 * would move every event onto the core's asynchronous dispatch path. The
 * core already counts sessions, deliveries, drops and publishes
 * (`push.stats()`); the counters and gauges here copy those numbers when
 * Prometheus scrapes (`collect()`), so they cost nothing between scrapes.
 * Only the fan-out histogram observes each event, through `push.onDispatch`,
 * which is one synchronous call per event (not per session).
 */
import { Counter, Gauge, Histogram, type Registry, type RegistryContentType } from 'prom-client';
import {
  JSON_MEDIA_TYPE,
  MSGPACK_MEDIA_TYPE,
  type DispatchInfo,
  type PubSubStatus,
  type PushMiddleware,
  type PushStats,
} from '../../lib/index.js';

/** Options of {@link registerMetrics}. */
export interface MetricsOptions {
  /** The registry the metrics are registered on. Required: the library never touches prom-client's global registry by itself. */
  registry: Registry<RegistryContentType>;
  /** Prefix of every metric name. Default `pushwire_`. Use another one (or distinct registries) for several push middlewares in one process. */
  prefix?: string;
  /**
   * Buckets of the fan-out duration histogram, in seconds. Default from
   * 100 µs to 2.5 s, which covers one session to tens of thousands.
   */
  dispatchBuckets?: readonly number[];
}

/** What {@link registerMetrics} returns. */
export interface PushMetrics {
  /** The names of the registered metrics (with the prefix). */
  readonly names: readonly string[];
  /** Removes the metrics from the registry and stops listening to the push middleware and its backend; idempotent. */
  unregister(): void;
}

/** The default buckets of `<prefix>dispatch_duration_seconds`. */
export const DEFAULT_DISPATCH_BUCKETS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];

const BACKEND_STATES: readonly PubSubStatus[] = [
  'disconnected',
  'connecting',
  'connected',
  'reconnecting',
  'closed',
];

/**
 * A close code as a label value. Clients choose any code from 3000 to 4999
 * when they close, so those are grouped by thousand: the label set stays
 * bounded whatever clients send.
 */
export function closeCodeLabel(code: number): string {
  if (code >= 3000 && code < 4000) return '3xxx';
  if (code >= 4000 && code < 5000) return '4xxx';
  if (Number.isInteger(code) && code >= 1000 && code < 3000) return String(code);
  return 'other';
}

/** An HTTP status as a label value; statuses come from plugins, so anything odd is grouped. */
function statusLabel(status: number): string {
  return Number.isInteger(status) && status >= 100 && status < 600 ? String(status) : 'other';
}

/**
 * Registers pushwire's metrics for `push` on `options.registry` and returns
 * a handle to unregister them. Throws when a metric of the same name is
 * already registered there (prom-client's error) or the options are invalid.
 *
 * Metrics (with the default prefix):
 * - `pushwire_sessions_open{encoding}` gauge
 * - `pushwire_sessions_accepted_total`, `pushwire_sessions_refused_total{status}`,
 *   `pushwire_sessions_abandoned_total`, `pushwire_sessions_closed_total{code}` counters
 * - `pushwire_events_received_total`, `pushwire_events_undecodable_total`,
 *   `pushwire_dispatch_errors_total`, `pushwire_events_delivered_total`,
 *   `pushwire_events_filtered_total`, `pushwire_events_dropped_total`,
 *   `pushwire_invalid_push_configs_total` counters
 * - `pushwire_events_published_total`, `pushwire_publish_retries_total`,
 *   `pushwire_publish_failures_total` counters
 * - `pushwire_backend_state{state}` gauge (1 for the current state),
 *   `pushwire_backend_state_changes_total{state}` counter (when the backend has `onStatus`)
 * - `pushwire_dispatch_duration_seconds` histogram
 */
export function registerMetrics(push: PushMiddleware, options: MetricsOptions): PushMetrics {
  if (typeof push?.stats !== 'function' || typeof push.onDispatch !== 'function') {
    throw new TypeError('registerMetrics: the first argument must be a push middleware');
  }
  const registry = options?.registry;
  if (
    registry === undefined ||
    registry === null ||
    typeof registry.registerMetric !== 'function'
  ) {
    throw new TypeError('registerMetrics: options.registry must be a prom-client Registry');
  }
  const prefix = options.prefix ?? 'pushwire_';
  // OpenMetrics registries append `_total` to counters themselves.
  const openMetrics = registry.contentType.startsWith('application/openmetrics-text');
  const counterName = (name: string): string =>
    openMetrics ? `${prefix}${name}` : `${prefix}${name}_total`;
  const registers = [registry];
  /** Names registered so far, to unregister them (prom-client's types do not expose a metric's name). */
  const names: string[] = [];
  const cleanups: (() => void)[] = [];

  /** A counter that copies one number of push.stats() when scraped. */
  const statCounter = (name: string, help: string, read: (stats: PushStats) => number): void => {
    new Counter({
      name: counterName(name),
      help,
      registers,
      collect() {
        this.reset();
        this.inc(read(push.stats()));
      },
    });
    names.push(counterName(name));
  };

  /** A counter with one label, copied from a map of push.stats() when scraped. */
  const mapCounter = (
    name: string,
    help: string,
    label: string,
    read: (stats: PushStats) => Record<number, number>,
    toLabel: (key: number) => string,
  ): void => {
    new Counter({
      name: counterName(name),
      help,
      labelNames: [label],
      registers,
      collect() {
        this.reset();
        for (const [key, value] of Object.entries(read(push.stats()))) {
          this.inc({ [label]: toLabel(Number(key)) }, value);
        }
      },
    });
    names.push(counterName(name));
  };

  try {
    new Gauge({
      name: `${prefix}sessions_open`,
      help: 'Sessions open now, by the encoding they receive events in.',
      labelNames: ['encoding'],
      registers,
      collect() {
        // Both encodings are always reported, so that a dashboard shows 0 rather than no data.
        this.set({ encoding: JSON_MEDIA_TYPE }, 0);
        this.set({ encoding: MSGPACK_MEDIA_TYPE }, 0);
        for (const [encoding, count] of Object.entries(push.stats().sessionsByEncoding)) {
          this.set({ encoding }, count);
        }
      },
    });
    names.push(`${prefix}sessions_open`);
    new Gauge({
      name: `${prefix}sessions_open_by_transport`,
      help: 'Sessions open now, by transport: WebSocket or Server-Sent Events.',
      labelNames: ['transport'],
      registers,
      collect() {
        this.set({ transport: 'websocket' }, 0);
        this.set({ transport: 'sse' }, 0);
        for (const [transport, count] of Object.entries(push.stats().sessionsByTransport)) {
          this.set({ transport }, count);
        }
      },
    });
    names.push(`${prefix}sessions_open_by_transport`);
    statCounter(
      'sessions_accepted',
      'Sessions accepted (WebSocket handshake completed, or event stream started).',
      (s) => s.sessionsAccepted,
    );
    mapCounter(
      'sessions_refused',
      'Connection attempts refused before the handshake, by HTTP status.',
      'status',
      (s) => s.sessionsRefused,
      statusLabel,
    );
    statCounter(
      'sessions_abandoned',
      'Connection attempts whose client went away before the handshake completed or was refused.',
      (s) => s.sessionsAbandoned,
    );
    mapCounter(
      'sessions_closed',
      'Sessions closed, by WebSocket close code (client codes grouped as 3xxx and 4xxx).',
      'code',
      (s) => s.sessionsClosed,
      closeCodeLabel,
    );
    statCounter(
      'events_received',
      'Publications received from the topic.',
      (s) => s.eventsReceived,
    );
    statCounter(
      'events_undecodable',
      'Publications or entities that did not decode (dropped).',
      (s) => s.eventsUndecodable,
    );
    statCounter(
      'dispatch_errors',
      'Events not dispatched because a dispatch plugin threw or timed out.',
      (s) => s.dispatchErrors,
    );
    statCounter(
      'events_delivered',
      'Events written to sessions (one per event and session).',
      (s) => s.deliveries,
    );
    statCounter(
      'events_filtered',
      'Event and session pairs skipped by the error state, the timestamp, the push config or a plugin predicate.',
      (s) => s.filtered,
    );
    statCounter(
      'events_dropped',
      'Events not written to a session because its outbound buffer was full (slow consumer).',
      (s) => s.dropped,
    );
    statCounter(
      'invalid_push_configs',
      'Invalid push configs received from clients.',
      (s) => s.invalidConfigs,
    );
    statCounter(
      'events_published',
      'Events published (handed to the backend).',
      (s) => s.published,
    );
    statCounter('publish_retries', 'Publish attempts retried.', (s) => s.publishRetries);
    statCounter(
      'publish_failures',
      'Publishes that failed every attempt.',
      (s) => s.publishFailures,
    );
    statCounter(
      'recoveries',
      'Sessions that resumed from a position (history on), answered by a recovery frame.',
      (s) => s.recoveries,
    );
    statCounter(
      'recoveries_failed',
      'Recoveries answered recovered: false (the client must re-read state).',
      (s) => s.recoveriesFailed,
    );
    statCounter(
      'events_replayed',
      'Events replayed from history to resuming sessions.',
      (s) => s.eventsReplayed,
    );

    const pubsub = push.pubsub;
    new Gauge({
      name: `${prefix}backend_state`,
      help: 'The pub/sub backend connection state: 1 for the current state, 0 for the others.',
      labelNames: ['state'],
      registers,
      collect() {
        const current = pubsub.status;
        for (const state of BACKEND_STATES) this.set({ state }, state === current ? 1 : 0);
      },
    });
    names.push(`${prefix}backend_state`);
    if (typeof pubsub.onStatus === 'function') {
      // Transitions are counted as they happen: a reconnection between two scrapes still shows.
      const changes = new Counter({
        name: counterName('backend_state_changes'),
        help: 'Connection state changes of the pub/sub backend, by the state entered.',
        labelNames: ['state'],
        registers,
      });
      names.push(counterName('backend_state_changes'));
      for (const state of BACKEND_STATES) changes.inc({ state }, 0);
      const remove = pubsub.onStatus((state) => {
        if (BACKEND_STATES.includes(state)) changes.inc({ state });
      });
      cleanups.push(remove);
    }

    const histogram = new Histogram({
      name: `${prefix}dispatch_duration_seconds`,
      help: 'Seconds from receiving an event from the topic to the last write of its fan-out.',
      buckets: [...(options.dispatchBuckets ?? DEFAULT_DISPATCH_BUCKETS)],
      registers,
    });
    names.push(`${prefix}dispatch_duration_seconds`);
    cleanups.push(push.onDispatch((info: DispatchInfo) => histogram.observe(info.durationSeconds)));
  } catch (error) {
    // A name clash half-way: leave the registry as it was.
    for (const cleanup of cleanups) cleanup();
    for (const name of names) registry.removeSingleMetric(name);
    throw error;
  }

  let registered = true;
  return {
    names: [...names],
    unregister() {
      if (!registered) return;
      registered = false;
      for (const cleanup of cleanups) cleanup();
      for (const name of names) registry.removeSingleMetric(name);
    },
  };
}
