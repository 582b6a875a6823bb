/**
 * Helpers that build plugins from plain functions, with bahamut's meanings,
 * so that a custom plugin is a few lines.
 */
import type {
  DispatchContext,
  DispatchPredicate,
  Next,
  Plugin,
  PublishContext,
  SessionStopInfo,
} from './chain.js';
import { ForbiddenError, PushError, UnauthorizedError, type PushErrorOptions } from './errors.js';
import type { PushEvent, WireEvent } from './protocol/event.js';
import type { PushSession } from './session.js';

/**
 * bahamut's AuthAction: `ok` accepts, `ko` refuses with 401, `continue` asks the next plugin.
 * Go's numeric values are accepted too, so that a ported authenticator can return them as they
 * are: 0 (`AuthActionOK`, Go's zero value), 1 (`AuthActionKO`), 2 (`AuthActionContinue`).
 */
export type AuthAction = 'ok' | 'ko' | 'continue' | 0 | 1 | 2;

/** Go's numeric AuthAction values, by their order in bahamut's `const` block. */
const NUMERIC_AUTH_ACTIONS: Readonly<Record<number, 'ok' | 'ko' | 'continue'>> = {
  0: 'ok',
  1: 'ko',
  2: 'continue',
};

/**
 * Wraps a thrown value as a PushError of the phase's default status. The
 * thrown value is kept as the cause so that logs show the plugin's own
 * stack; a value with no message (`new Error()`, `undefined`) gets the
 * phase's default description rather than `"Error"` or `"undefined"`.
 */
function asRefusal(
  error: unknown,
  make: (message: string | undefined, options: PushErrorOptions) => PushError,
): PushError {
  if (error instanceof PushError) return error;
  const message =
    error instanceof Error
      ? error.message
      : typeof error === 'string'
        ? error
        : error === undefined || error === null
          ? ''
          : String(error);
  return make(message === '' ? undefined : message, { cause: error });
}

/**
 * An authentication plugin: `authenticate(session)` answers `ok`, `ko` or
 * `continue`. `ok` skips the later auth plugins (init plugins still run);
 * `ko` refuses with 401; if every one says `continue`, the session is
 * authenticated. A throw refuses with 401 and the thrown message (a thrown
 * PushError keeps its own status). It may call `session.setClaims()`.
 */
export function authPlugin(
  authenticate: (session: PushSession) => AuthAction | Promise<AuthAction>,
  name = 'auth',
): Plugin {
  if (typeof authenticate !== 'function') throw new TypeError('authPlugin needs a function');
  return {
    name,
    async session(ctx, next) {
      if (ctx.authenticated) return next();
      let answer: AuthAction;
      try {
        answer = await authenticate(ctx.session);
      } catch (error) {
        throw asRefusal(error, (m, o) => new UnauthorizedError(m, o));
      }
      const action = typeof answer === 'number' ? (NUMERIC_AUTH_ACTIONS[answer] ?? answer) : answer;
      if (action === 'ko') throw new UnauthorizedError();
      if (action === 'ok') ctx.authenticated = true;
      else if (action !== 'continue') {
        throw new UnauthorizedError(`auth plugin ${name} answered ${String(action)}`);
      }
      return next();
    },
  };
}

/**
 * An authorization (init) plugin: `init(session)` returns true to accept,
 * false to refuse with 403. A throw refuses with 403 and its message.
 */
export function initPlugin(
  init: (session: PushSession) => boolean | Promise<boolean>,
  name = 'init',
): Plugin {
  if (typeof init !== 'function') throw new TypeError('initPlugin needs a function');
  return {
    name,
    async session(ctx, next) {
      let ok: boolean;
      try {
        ok = await init(ctx.session);
      } catch (error) {
        throw asRefusal(error, (m, o) => new ForbiddenError(m, o));
      }
      if (ok !== true) throw new ForbiddenError();
      return next();
    },
  };
}

/**
 * The functions of a dispatch plugin: bahamut's PushDispatchHandler, its
 * method names lowerCamelCased, so that a Go handler ports literally.
 */
export interface DispatchHandlers<S = unknown> {
  /** Computes once per event what `shouldDispatch` needs. A throw drops the event (logged). */
  summarizeEvent?(event: WireEvent): S | Promise<S>;
  /**
   * bahamut's `RelatedEventIdentities(identity)`: other identities whose
   * push-config entries also accept an event of this identity (the event is
   * given second). null or undefined (Go's nil) means none. A throw drops
   * the event (logged).
   */
  relatedIdentities?(identity: string, event: WireEvent): readonly string[] | null | undefined;
  /** bahamut's name for {@link DispatchHandlers.relatedIdentities}; give one of the two. */
  relatedEventIdentities?(identity: string, event: WireEvent): readonly string[] | null | undefined;
  /**
   * Per (event, session): true to send. Keep it synchronous: it runs for
   * every session. A throw counts as false for that session (logged).
   */
  shouldDispatch?(session: PushSession, event: WireEvent, summary: S): boolean | Promise<boolean>;
  /**
   * bahamut's `OnPushSessionInit`: runs in the session phase, before the
   * handshake, where this plugin is registered (after the auth plugins, as
   * bahamut runs it, when registered after them). true accepts; anything
   * else refuses with 403 "You are not authorized to initiate a push
   * session"; a throw refuses with 403 and its message (a PushError keeps
   * its status).
   */
  onPushSessionInit?(session: PushSession): boolean | Promise<boolean>;
  /** bahamut's `OnPushSessionStart`: the plugin's `onSessionStart` hook (a throw is logged). */
  onPushSessionStart?(session: PushSession): void | Promise<void>;
  /** bahamut's `OnPushSessionStop`: the plugin's `onSessionStop` hook (a throw is logged). */
  onPushSessionStop?(session: PushSession, info: SessionStopInfo): void | Promise<void>;
}

/** bahamut's text for a session that `OnPushSessionInit` refused. */
const PUSH_SESSION_INIT_REFUSED = 'You are not authorized to initiate a push session';

const DISPATCH_HANDLER_KEYS: ReadonlySet<string> = new Set([
  'summarizeEvent',
  'relatedIdentities',
  'relatedEventIdentities',
  'shouldDispatch',
  'onPushSessionInit',
  'onPushSessionStart',
  'onPushSessionStop',
]);

/**
 * The names of the functions `handlers` has, own or inherited (a class
 * implementing PushDispatchHandler has its methods on its prototype), up to
 * Object.prototype.
 */
function functionKeys(handlers: object): string[] {
  const keys = new Set<string>();
  for (
    let o: object | null = handlers;
    o !== null && o !== Object.prototype;
    o = Object.getPrototypeOf(o) as object | null
  ) {
    for (const key of Object.getOwnPropertyNames(o)) {
      if (key === 'constructor') continue;
      const descriptor = Object.getOwnPropertyDescriptor(o, key);
      if (descriptor !== undefined && typeof descriptor.value === 'function') keys.add(key);
    }
  }
  return [...keys];
}

/**
 * A dispatch plugin from bahamut-style functions, or from an object or class
 * ported from Go's PushDispatchHandler (see {@link DispatchHandlers}).
 * Throws TypeError, at creation, for a handler key that is not a function,
 * for a function of a name it does not know (so that a handler is never
 * silently ignored; a helper method of a class can be `#private` or start
 * with `_`), and when both `relatedIdentities` and `relatedEventIdentities`
 * are given.
 */
export function dispatchPlugin<S = unknown>(
  handlers: DispatchHandlers<S>,
  name = 'dispatch',
): Plugin {
  if (handlers === null || typeof handlers !== 'object') {
    throw new TypeError('dispatchPlugin needs an object of handlers');
  }
  // Checked here, like the other helpers do, so that a typo fails at startup
  // rather than dropping every event at dispatch time.
  for (const key of DISPATCH_HANDLER_KEYS) {
    const value = (handlers as Record<string, unknown>)[key];
    if (value !== undefined && typeof value !== 'function') {
      throw new TypeError(`dispatchPlugin: ${key} must be a function`);
    }
  }
  for (const key of functionKeys(handlers)) {
    if (!DISPATCH_HANDLER_KEYS.has(key) && !key.startsWith('_')) {
      throw new TypeError(
        `dispatchPlugin: unknown handler ${key} (known: ${[...DISPATCH_HANDLER_KEYS].join(', ')})`,
      );
    }
  }
  if (handlers.relatedIdentities !== undefined && handlers.relatedEventIdentities !== undefined) {
    throw new TypeError(
      'dispatchPlugin: give relatedIdentities or relatedEventIdentities, not both',
    );
  }
  const related =
    handlers.relatedIdentities !== undefined ? 'relatedIdentities' : 'relatedEventIdentities';
  // Called as methods of `handlers` (not destructured): a class implementing
  // bahamut's PushDispatchHandler reads its own fields through `this`.
  //
  // shouldDispatch runs for every (session, event): its per-event predicate is made here, once
  // per plugin, around shouldDispatch bound once (again if the handler is replaced). Made
  // inside dispatch(), and calling through `.call`, each predicate came from a closure of its
  // own, so V8 could not inline the fan-out's call of it: ~10 ns more per (session, event),
  // measured with 1,000 sessions in bursts of 10, which is most of the plugin's cost.
  let boundFrom: DispatchHandlers<S>['shouldDispatch'];
  let bound: NonNullable<DispatchHandlers<S>['shouldDispatch']> | undefined;
  const predicateFor = (
    shouldDispatch: NonNullable<DispatchHandlers<S>['shouldDispatch']>,
    event: WireEvent,
    summary: S,
  ): DispatchPredicate => {
    if (shouldDispatch !== boundFrom || bound === undefined) {
      boundFrom = shouldDispatch;
      bound = shouldDispatch.bind(handlers);
    }
    const check = bound;
    return (session) => check(session, event, summary);
  };
  const proceed = (ctx: DispatchContext, next: Next, summary: S): Promise<void> => {
    // Looked up at each event, as the other handlers are; called as a method (`this`).
    if (handlers[related] !== undefined) {
      const identities = handlers[related](ctx.event.identity, ctx.event);
      if (identities !== null && identities !== undefined) {
        for (const identity of identities) ctx.relatedIdentities.push(identity);
      }
    }
    const shouldDispatch = handlers.shouldDispatch;
    if (shouldDispatch) ctx.predicates.push(predicateFor(shouldDispatch, ctx.event, summary));
    return next();
  };
  const plugin: Plugin = {
    name,
    // Not an async function: when summarizeEvent is synchronous, next() is called in the same
    // turn, and the core then fans the event out with the others of that turn (an `await` here
    // would send every event through the one-at-a-time path).
    dispatch(ctx: DispatchContext, next) {
      const summary = handlers.summarizeEvent ? handlers.summarizeEvent(ctx.event) : undefined;
      if (isThenable(summary)) {
        return Promise.resolve(summary).then((s) => proceed(ctx, next, s as S));
      }
      return proceed(ctx, next, summary as S);
    },
  };
  if (handlers.onPushSessionInit !== undefined) {
    plugin.session = async (ctx, next) => {
      let ok: boolean;
      try {
        ok = await handlers.onPushSessionInit!(ctx.session);
      } catch (error) {
        throw asRefusal(error, (m, o) => new ForbiddenError(m ?? PUSH_SESSION_INIT_REFUSED, o));
      }
      if (ok !== true) throw new ForbiddenError(PUSH_SESSION_INIT_REFUSED);
      return next();
    };
  }
  if (handlers.onPushSessionStart !== undefined) {
    plugin.onSessionStart = (session) => handlers.onPushSessionStart!(session);
  }
  if (handlers.onPushSessionStop !== undefined) {
    plugin.onSessionStop = (session, info) => handlers.onPushSessionStop!(session, info);
  }
  return plugin;
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    value !== null &&
    (typeof value === 'object' || typeof value === 'function') &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

/**
 * A publish plugin: `shouldPublish(event)` returns false to drop the event
 * quietly. A throw makes `publish()` reject with it.
 */
export function publishPlugin(
  shouldPublish: (event: Readonly<PushEvent>, ctx: PublishContext) => boolean | Promise<boolean>,
  name = 'publish',
): Plugin {
  if (typeof shouldPublish !== 'function') throw new TypeError('publishPlugin needs a function');
  return {
    name,
    async publish(ctx, next) {
      if ((await shouldPublish(ctx.event, ctx)) === true) return next();
    },
  };
}

/** Identity helper for full control: returns the plugin, typed. */
export function definePlugin<P extends Plugin>(plugin: P): P {
  return plugin;
}
