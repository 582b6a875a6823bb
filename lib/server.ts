/**
 * The push server: one per mount of the middleware. It builds and wires
 * the modules that do the work — the session registry (registry.ts), the
 * subscription to the topic (subscription.ts), the batched fan-out
 * (fan-out.ts) and publishing (publisher.ts) — and owns what spans them:
 * the counters, the keepalive timer and shutdown. Transport-agnostic:
 * middleware.ts binds it to Express and the upgrade; transport/ holds the
 * adapters sessions are written through.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { compose, type PublishOptions } from './chain.js';
import { FanOut } from './fan-out.js';
import { describeError } from './logger.js';
import type { ResolvedOptions } from './options.js';
import type { PushEvent } from './protocol/event.js';
import { DEFAULT_PUSH_CONFIG_LIMITS } from './protocol/push-config.js';
import type { PubSubClient } from './pubsub/contract.js';
import { Publisher } from './publisher.js';
import { Recovery } from './recovery.js';
import { SessionRegistry } from './registry.js';
import type { PushSession, ServerSession } from './session.js';
import { DispatchListeners, newPushStats, type DispatchInfo, type PushStats } from './stats.js';
import { TopicSubscription } from './subscription.js';
import type { TransportName } from './transport/contract.js';
import { withTimeout } from './timing.js';

export type { DispatchInfo, PushStats } from './stats.js';

/** One push server: its sessions, its subscription, its plugins. */
export class PushServer {
  readonly options: ResolvedOptions;
  readonly topic: string;
  readonly pubsub: PubSubClient;
  /** Resolves once subscribed to the topic. */
  readonly ready: Promise<void>;

  readonly #stats: PushStats = newPushStats();
  readonly #listeners: DispatchListeners;
  readonly #registry: SessionRegistry;
  readonly #fanOut: FanOut;
  readonly #subscription: TopicSubscription;
  readonly #publisher: Publisher;
  readonly #recovery: Recovery | undefined;
  #closing = false;
  #closePromise: Promise<void> | undefined;
  #pingTimer: NodeJS.Timeout | undefined;

  constructor(pubsub: PubSubClient, topic: string, options: ResolvedOptions) {
    if (pubsub === null || typeof pubsub !== 'object' || typeof pubsub.subscribe !== 'function') {
      throw new TypeError('pushMiddleware: pubsub must implement PubSubClient');
    }
    if (typeof topic !== 'string' || topic === '') {
      throw new TypeError('pushMiddleware: topic must be a non-empty string');
    }
    this.pubsub = pubsub;
    this.topic = topic;
    this.options = options;
    const sessionMws = options.plugins.flatMap((p) => (p.session ? [p.session.bind(p)] : []));
    const dispatchMws = options.plugins.flatMap((p) => (p.dispatch ? [p.dispatch.bind(p)] : []));
    const publishMws = options.plugins.flatMap((p) => (p.publish ? [p.publish.bind(p)] : []));
    const stats = this.#stats;
    this.#listeners = new DispatchListeners((error) =>
      options.logger.warn({ err: describeError(error) }, 'pushwire: onDispatch threw'),
    );
    this.#registry = new SessionRegistry({
      options,
      stats,
      configLimits: {
        ...DEFAULT_PUSH_CONFIG_LIMITS,
        maxBytes: options.maxPushConfigBytes > 0 ? options.maxPushConfigBytes : Infinity,
        filters: options.filterLimits,
      },
      sessionChain: sessionMws.length > 0 ? compose(sessionMws) : undefined,
    });
    this.#fanOut = new FanOut(this.#registry.sessions, stats, options, this.#listeners.report);
    this.#subscription = new TopicSubscription({
      pubsub,
      topic,
      options,
      stats,
      fanOut: this.#fanOut,
      listeners: this.#listeners,
      dispatchChain: dispatchMws.length > 0 ? compose(dispatchMws) : undefined,
    });
    // History is on when the backend keeps it (its `history` option): then events carry their
    // positions and a session can resume.
    const history = pubsub.history;
    this.#recovery =
      history === undefined
        ? undefined
        : new Recovery({
            history,
            stats,
            topic,
            options,
            subscription: this.#subscription,
            fanOut: this.#fanOut,
          });
    if (history !== undefined) this.#fanOut.comparePositions = (a, b) => history.compare(a, b);
    this.#registry.attach(this.#fanOut, this.#recovery);
    this.#publisher = new Publisher({
      pubsub,
      topic,
      options,
      stats,
      publishChain: publishMws.length > 0 ? compose(publishMws) : undefined,
    });

    this.ready = this.#subscription.start();
    // `ready` is the caller's to await; this catch only keeps an ignored failure from crashing the process.
    this.ready.catch((error: unknown) => {
      this.options.logger.error({ err: describeError(error) }, 'pushwire: subscription failed');
    });
    if (options.pingInterval > 0) {
      this.#pingTimer = setInterval(() => this.#registry.keepalive(), options.pingInterval);
      this.#pingTimer.unref();
    }
  }

  /** A snapshot of the counters. */
  stats(): PushStats {
    return {
      ...this.#stats,
      sessionsOpen: this.#registry.sessions.size,
      sessionsByEncoding: { ...this.#stats.sessionsByEncoding },
      sessionsByTransport: { ...this.#stats.sessionsByTransport },
      sessionsRefused: { ...this.#stats.sessionsRefused },
      sessionsClosed: { ...this.#stats.sessionsClosed },
    };
  }

  /**
   * Calls `listener` after the fan-out of each event received from the
   * topic (not for an event dropped by a failing dispatch plugin). A throw
   * is logged and ignored. Returns a function that removes the listener.
   */
  onDispatch(listener: (info: DispatchInfo) => void): () => void {
    return this.#listeners.add(listener);
  }

  /** The open sessions. */
  sessions(): PushSession[] {
    return [...this.#registry.sessions];
  }

  /** True once close() was called. */
  get closing(): boolean {
    return this.#closing;
  }

  /** Counts a refusal (for stats and logs). */
  recordRefusal(status: number, request: IncomingMessage, error: unknown): void {
    this.#registry.recordRefusal(status, request, error);
  }

  /** Counts an attempt whose client left mid-handshake (so that every attempt is accounted for). */
  recordAbandoned(request: IncomingMessage): void {
    this.#registry.recordAbandoned(request);
  }

  /**
   * Builds a session from an upgrade request and runs the session phase.
   * Resolves to the accepted session; rejects with the PushError whose
   * status the refusal must carry.
   */
  openSession(
    request: IncomingMessage,
    transport: TransportName = 'websocket',
  ): Promise<ServerSession> {
    return this.#registry.openSession(request, transport);
  }

  /** Starts the event stream of an SSE session the session phase accepted (section 10). */
  startEventStream(session: ServerSession, res: ServerResponse): void {
    this.#registry.startEventStream(session, res);
  }

  /** Registers a WebSocket session whose handshake completed. */
  startSession(session: ServerSession, ws: WebSocket, socket: Socket): void {
    this.#registry.startSession(session, ws, socket);
  }

  /**
   * Publishes events to the topic, each through the publish phase. Rejects
   * with InvalidEventError (nothing published) or with a PubSubError once
   * the backend failed every retry.
   */
  publish(options: PublishOptions, events: PushEvent[]): Promise<void> {
    return this.#publisher.publish(options, events);
  }

  /**
   * Stops accepting sessions (503), unsubscribes, lets buffered frames flush
   * within `closeTimeout`, closes every session with 1001 and resolves.
   * Idempotent; never rejects.
   */
  close(): Promise<void> {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    this.#registry.closing = true;
    this.#publisher.closing = true;
    const deadline = Date.now() + this.options.closeTimeout;
    const left = (): number => Math.max(0, deadline - Date.now());
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    try {
      await withTimeout(this.ready, left(), () => new Error('subscription still pending'));
    } catch {
      // Not subscribed: nothing to stop.
    }
    try {
      await this.#subscription.stop();
    } catch (error) {
      this.options.logger.warn({ err: describeError(error) }, 'pushwire: unsubscribe failed');
    }
    // Events already received finish their dispatch (bounded by the deadline).
    const fanOut = this.#fanOut;
    fanOut.flush();
    if (this.#recovery !== undefined) {
      await withTimeout(this.#recovery.idle(), left(), () => new Error('replays pending')).catch(
        () => undefined,
      );
    }
    await withTimeout(this.#subscription.idle(), left(), () => new Error('dispatch pending')).catch(
      () => undefined,
    );
    fanOut.flush();
    await withTimeout(fanOut.deferredWrites(), left(), () => new Error('verdicts pending')).catch(
      () => undefined,
    );
    fanOut.uncorkAll();
    // Each session is closed as soon as its own buffer drained: a client that stopped reading
    // must not use up the deadline of the others, which would then be terminated (1006)
    // instead of getting their 1001 close handshake.
    await Promise.all(
      [...this.#registry.sessions].map(async (session) => {
        const transport = session.transport;
        if (transport === undefined) return;
        await transport.drain(left());
        await transport.closeAndWait(1001, 'server shutting down', left());
      }),
    );
  }
}
