/**
 * The subscription to the topic: receiving publications from the backend,
 * decoding them (PROTOCOL.md section 8), and running each event's
 * `dispatch` plugin chain in the order the events arrived before it joins
 * the fan-out's batch. With history on, the subscription follows the
 * topic's history instead, and each event carries its position.
 */
import type { DispatchContext, DispatchPredicate } from './chain.js';
import type { PushSession } from './session.js';
import type { FanOut } from './fan-out.js';
import { describeError } from './logger.js';
import type { ResolvedOptions } from './options.js';
import { decodePublication, type DecodedPublication } from './protocol/publication.js';
import { subscriptionSubject } from './protocol/publication.js';
import type { PubSubClient, Unsubscribe } from './pubsub/contract.js';
import { newDispatchStats, type DispatchListeners, type PushStats } from './stats.js';
import { withTimeout } from './timing.js';

const NO_IDENTITIES: readonly string[] = [];
const NO_PREDICATES: readonly DispatchPredicate[] = [];

/** A fresh context for one event's dispatch chain; `replayFor` set for a replay to one session. */
function dispatchContext(
  publication: DecodedPublication,
  replayFor: PushSession | undefined,
): DispatchContext {
  const { event, ...headers } = publication;
  const ctx: DispatchContext = {
    event,
    publication: headers,
    relatedIdentities: [],
    predicates: [],
    stats: newDispatchStats(),
    state: {},
  };
  return replayFor === undefined ? ctx : { ...ctx, replayFor };
}

/** The dispatch chain of the plugins, composed. */
export type DispatchChain = (
  ctx: DispatchContext,
  last: (ctx: DispatchContext) => Promise<void> | void,
) => Promise<void>;

/** What the subscription is built from. */
export interface TopicSubscriptionInit {
  pubsub: PubSubClient;
  topic: string;
  options: ResolvedOptions;
  stats: PushStats;
  fanOut: FanOut;
  listeners: DispatchListeners;
  dispatchChain: DispatchChain | undefined;
}

/** One server's subscription to its topic. */
export class TopicSubscription {
  /** True once the server is closing: publications received are ignored. */
  closing = false;
  readonly #pubsub: PubSubClient;
  readonly #topic: string;
  readonly #options: ResolvedOptions;
  readonly #stats: PushStats;
  readonly #fanOut: FanOut;
  readonly #listeners: DispatchListeners;
  readonly #dispatchChain: DispatchChain | undefined;
  /** Events whose dispatch plugins went async, and those waiting behind them. */
  #dispatchTail: Promise<void> = Promise.resolve();
  #waitingDispatches = 0;
  #unsubscribe: Unsubscribe | undefined;
  /** With history on: the position of the newest event received, where a client that cannot recover stands. */
  lastPosition: string | undefined;

  constructor(init: TopicSubscriptionInit) {
    this.#pubsub = init.pubsub;
    this.#topic = init.topic;
    this.#options = init.options;
    this.#stats = init.stats;
    this.#fanOut = init.fanOut;
    this.#listeners = init.listeners;
    this.#dispatchChain = init.dispatchChain;
  }

  /** Connects the backend and subscribes; resolves once publications flow. */
  async start(): Promise<void> {
    await this.#pubsub.connect();
    const history = this.#pubsub.history;
    // With history on, live events come out of the history itself (JetStream's stream, the
    // Redis stream, the ring): one ordered source, so a replay meets live delivery with no seam.
    const unsubscribe =
      history !== undefined
        ? await history.follow(this.#topic, (payload, _subject, position) =>
            this.#onPayload(payload, position),
          )
        : await this.#pubsub.subscribe(
            subscriptionSubject(this.#topic, this.#options.subjectHierarchies),
            (payload) => this.#onPayload(payload, undefined),
          );
    if (this.closing) await unsubscribe();
    else this.#unsubscribe = unsubscribe;
  }

  /** Stops receiving; publications already received still finish their dispatch. */
  async stop(): Promise<void> {
    this.closing = true;
    await this.#unsubscribe?.();
  }

  /** Resolves once every dispatch chain running or queued has finished. */
  idle(): Promise<void> {
    return this.#dispatchTail;
  }

  /**
   * Decodes a publication (copied: see below) and checks its entity; counts and logs one
   * that cannot be dispatched and returns undefined. Used for live and replayed events alike.
   */
  decode(payload: Uint8Array, position: string | undefined): DecodedPublication | undefined {
    let publication: DecodedPublication;
    try {
      // The decoded event keeps views into `payload` (entity bytes, forwarded MessagePack), and
      // a backend may reuse its buffer once this handler returns (NATS does), while the event
      // waits in the batch until the next tick: it works on a copy (one per event, not per session).
      publication = decodePublication(Uint8Array.prototype.slice.call(payload));
    } catch (error) {
      this.#stats.eventsUndecodable++;
      this.#options.logger.warn(
        { err: describeError(error), bytes: payload.byteLength, position },
        'pushwire: dropped a publication that does not decode',
      );
      return undefined;
    }
    const undecodable = publication.event.undecodableReason();
    if (undecodable !== undefined) {
      // Dropped for every session alike, before plugins read it: JSON sessions and a plugin
      // reading the entity cannot have it, so MessagePack sessions must not get it either.
      this.#stats.eventsUndecodable++;
      this.#options.logger.warn(
        {
          identity: publication.event.identity,
          type: publication.event.type,
          reason: undecodable,
          position,
        },
        'pushwire: dropped an event whose entity does not decode',
      );
      return undefined;
    }
    publication.event.position = position;
    return publication;
  }

  /**
   * Runs the dispatch chain of a replayed event for the one session it is
   * replayed to. Resolves to the context the chain reached the fan-out
   * with, or undefined when a plugin did not call next(), threw or timed
   * out (the event is then not replayed, as it would not have been sent).
   */
  async dispatchReplay(
    publication: DecodedPublication,
    session: PushSession,
  ): Promise<DispatchContext | undefined> {
    const ctx = dispatchContext(publication, session);
    const event = ctx.event;
    const chain = this.#dispatchChain;
    if (chain === undefined) return ctx;
    let reached: DispatchContext | undefined;
    try {
      await withTimeout(
        chain(ctx, (c) => {
          reached = c;
        }),
        this.#options.dispatchTimeout,
        () =>
          new Error(`dispatch plugins did not finish within ${this.#options.dispatchTimeout} ms`),
      );
    } catch (error) {
      this.#stats.dispatchErrors++;
      this.#options.logger.warn(
        { identity: event.identity, type: event.type, err: describeError(error) },
        'pushwire: event not replayed: a dispatch plugin failed',
      );
      return undefined;
    }
    return reached;
  }

  #onPayload(payload: Uint8Array, position: string | undefined): void {
    if (this.closing) return;
    this.#stats.eventsReceived++;
    // The clock is read only for onDispatch listeners (metrics): unused, it costs nothing.
    const receivedAt = this.#listeners.active ? performance.now() : -1;
    if (position !== undefined) this.lastPosition = position;
    const publication = this.decode(payload, position);
    if (publication === undefined) return;
    if (this.#dispatchChain === undefined) {
      // No plugin: nothing can be async; the event joins this turn's batch.
      const stats = receivedAt >= 0 ? newDispatchStats() : undefined;
      this.#fanOut.enqueue(
        publication.event,
        NO_IDENTITIES,
        NO_PREDICATES,
        stats,
        receivedAt,
        undefined,
      );
      return;
    }
    if (this.#waitingDispatches === 0) {
      // Nothing waits before this event: run its chain now. Plugins that call next() without
      // awaiting first (the usual shouldDispatch, an unsampled tracer) put it in this turn's batch.
      const pending = this.#runDispatch(publication, receivedAt);
      if (pending !== undefined) this.#waitBehind(() => pending);
      return;
    }
    // An earlier event's plugins are still working: wait for them, to keep the order.
    this.#waitBehind(() => this.#runDispatch(publication, receivedAt));
  }

  /** Appends a step to the queue of dispatches that must finish before later events run. */
  #waitBehind(step: () => Promise<void> | undefined): void {
    this.#waitingDispatches++;
    this.#dispatchTail = this.#dispatchTail.then(step).finally(() => {
      this.#waitingDispatches--;
    });
  }

  /**
   * Runs the dispatch chain of one event. Returns undefined when the chain
   * reached the fan-out synchronously (later events may go ahead: this one
   * is in the batch before them), else a promise that settles (never
   * rejects) once the chain finished, failed or timed out.
   */
  #runDispatch(publication: DecodedPublication, receivedAt: number): Promise<void> | undefined {
    const ctx = dispatchContext(publication, undefined);
    const event = ctx.event;
    let abandoned = false;
    let reached = false;
    const chain = this.#dispatchChain;
    if (chain === undefined) return undefined;
    // Not skipped while closing: close() flushes and waits for these so that events received
    // before it are delivered (issue 9); past closeTimeout, writes to closing sockets are no-ops.
    const run = chain(ctx, (c) => {
      if (abandoned) return undefined;
      reached = true;
      return new Promise<void>((resolve) => {
        this.#fanOut.enqueue(c.event, c.relatedIdentities, c.predicates, c.stats, -1, resolve);
      });
    });
    const failed = (error: unknown): void => {
      abandoned = true;
      this.#stats.dispatchErrors++;
      this.#options.logger.warn(
        { identity: event.identity, type: event.type, err: describeError(error) },
        'pushwire: event not dispatched: a dispatch plugin failed',
      );
    };
    const report = (): void => {
      if (receivedAt >= 0) this.#listeners.report(receivedAt, ctx.stats);
    };
    if (reached) {
      // Its place in the order is taken; what the plugins do after next() needs no timeout
      // to protect later events.
      run.then(report, failed);
      return undefined;
    }
    return withTimeout(
      run,
      this.#options.dispatchTimeout,
      () => new Error(`dispatch plugins did not finish within ${this.#options.dispatchTimeout} ms`),
    ).then(report, failed);
  }
}
