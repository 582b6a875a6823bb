/**
 * The plugin chain: koa-style composition of the middlewares of one phase,
 * and the types of plugins and of each phase's context.
 */
import { ChainError } from './errors.js';

/** Calls the rest of the chain; resolves when it has finished. */
export type Next = () => Promise<void>;

/**
 * A middleware of one phase: it may act before and after `await next()`,
 * stop the chain by returning without calling `next()`, or throw (a
 * PushError's status or close code is used; any other error gets the
 * phase's default).
 */
export type Middleware<C> = (ctx: C, next: Next) => Promise<void> | void;

/**
 * Composes middlewares, the first outermost. The returned function runs
 * them on `ctx`, then `last` (the phase's own work) if every one called
 * `next()`. Calling `next()` twice in one middleware rejects with a
 * {@link ChainError}; a synchronous throw becomes a rejection.
 */
export function compose<C>(
  middlewares: readonly Middleware<C>[],
): (ctx: C, last?: (ctx: C) => Promise<void> | void) => Promise<void> {
  for (const mw of middlewares) {
    if (typeof mw !== 'function') throw new TypeError('a middleware must be a function');
  }
  const chain = [...middlewares];
  return function run(ctx, last) {
    let index = -1;
    const dispatch = (i: number): Promise<void> => {
      if (i <= index) return Promise.reject(new ChainError());
      index = i;
      const fn = i === chain.length ? last : chain[i];
      if (fn === undefined) return Promise.resolve();
      try {
        // last receives ctx only; middlewares get next bound to the following index.
        return Promise.resolve(
          i === chain.length
            ? (fn as (ctx: C) => Promise<void> | void)(ctx)
            : (fn as Middleware<C>)(ctx, () => dispatch(i + 1)),
        );
      } catch (error) {
        return Promise.reject(error);
      }
    };
    return dispatch(0);
  };
}

// ---------------------------------------------------------------------------
// The three phases and their contexts.

import type { IncomingMessage } from 'node:http';
import type { PushEvent, WireEvent } from './protocol/event.js';
import type { PublicationHeaders } from './protocol/publication.js';
import type { PushSession } from './session.js';

/**
 * Per-attempt state plugins share; extend it with interface merging
 * (`declare module 'pushwire' { interface SessionState { user: User } }`).
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface SessionState {}

/** The context of the `session` phase: one connection attempt, before the handshake. */
export interface SessionContext {
  /** The session being built. */
  readonly session: PushSession;
  /** The upgrade request, as Express middleware left it (`req.user`, `req.session`…). */
  readonly request: IncomingMessage;
  /** Set by an auth plugin that said `ok`: later auth plugins are not asked. */
  authenticated: boolean;
  /** True once every plugin called `next()`: the session is accepted. */
  accepted: boolean;
  /** Free-form state shared by the plugins of this attempt. */
  readonly state: SessionState & Record<string, unknown>;
}

/**
 * A per-session check added in the dispatch phase: true to send the event
 * to that session. Synchronous on the fast path; a promise costs a microtask
 * per session. A throw counts as false for that session only.
 */
export type DispatchPredicate = (session: PushSession) => boolean | Promise<boolean>;

/** Counts of one event's fan-out on this server, filled when the fan-out ends. */
export interface DispatchStats {
  /** Open sessions considered. */
  considered: number;
  /** Sessions the event was written to. */
  sent: number;
  /** Sessions skipped by the error state, the timestamp, the push config or a predicate. */
  filtered: number;
  /** Sessions whose buffer was full (slow consumers). */
  dropped: number;
}

/** The context of the `dispatch` phase: one event received from the topic. */
export interface DispatchContext {
  /** The event; reading `entity` decodes it once for every plugin and filter. */
  readonly event: WireEvent;
  /** The publication's headers (topic, trackingData…). */
  readonly publication: Readonly<PublicationHeaders>;
  /** Identities that also count as the event's for push configs; push to add. */
  readonly relatedIdentities: string[];
  /** Per-session checks, all of which must pass; push to add. */
  readonly predicates: DispatchPredicate[];
  /** Filled by the fan-out when `next()` resolves. */
  readonly stats: DispatchStats;
  /** Free-form state shared by the plugins of this event. */
  readonly state: Record<string, unknown>;
  /**
   * Set when the event is replayed from the topic's history to one resuming
   * session (docs/PROTOCOL.md, "Recovery"): the chain runs for that session
   * alone, and its predicates decide for it exactly as for a live event.
   */
  readonly replayFor?: PushSession;
}

/** Options of one `publishWith()` call, visible to publish plugins. */
export interface PublishOptions {
  /** The caller's span (or span context), for a tracing plugin. */
  span?: unknown;
  /** The operation that publishes (the publication's `trackingName`). */
  trackingName?: string;
}

/** The context of the `publish` phase: one event being published. */
export interface PublishContext {
  /** The event, its timestamp resolved. */
  readonly event: Readonly<PushEvent> & { readonly timestamp: Date };
  /** The publication's headers; a plugin may set `trackingName` and `trackingData`. */
  readonly publication: PublicationHeaders;
  /** The options the caller passed. */
  readonly options: PublishOptions;
  /** The subject the publication goes to. */
  readonly subject: string;
  /** Free-form state shared by the plugins of this publication. */
  readonly state: Record<string, unknown>;
}

/** Why a session stopped. */
export interface SessionStopInfo {
  /** The WebSocket close code. */
  code: number;
  /** The close reason. */
  reason: string;
}

/**
 * A plugin: an object of optional hooks. Phases are middlewares composed in
 * registration order, the first outermost. Lifecycle hooks run after the
 * fact; what they throw or reject is logged and ignored.
 */
export interface Plugin {
  /** A name for logs. */
  name?: string;
  /** Around session init, before the handshake. A throw refuses (PushError status, else 403). */
  session?: Middleware<SessionContext>;
  /**
   * Around the fan-out of each event from the topic. A throw drops the event (logged).
   * Calling `next()` before awaiting anything keeps the event in the batch of its turn (one
   * walk over the sessions for all of them); awaiting first holds the events after it until
   * this one is done, so that their order is kept.
   */
  dispatch?: Middleware<DispatchContext>;
  /** Around each publication. Not calling next() drops it quietly; a throw rejects publish(). */
  publish?: Middleware<PublishContext>;
  /** After the handshake, once the session is registered. */
  onSessionStart?(session: PushSession): void | Promise<void>;
  /** After the session closed and was unregistered. */
  onSessionStop?(session: PushSession, info: SessionStopInfo): void | Promise<void>;
  /**
   * After a valid push config changed the session's token (its `parameters.token`, as Go
   * clients renew a token), with that token (`session.token` is already it). For auth plugins
   * to re-verify: a throw or rejection closes the session, with a thrown PushError's close
   * code (1008 for an UnauthorizedError) or 1008. Not called for a config that leaves the
   * token as it was. Renewals of one session are handled one at a time, in order.
   */
  onTokenRenewal?(session: PushSession, token: string): void | Promise<void>;
}
