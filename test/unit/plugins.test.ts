// The plugin helpers of DESIGN.md ("The plugin chain") with bahamut's
// meanings (PROTOCOL.md section 2 for the refusals), run through compose()
// on contexts built by hand: no socket, no server.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import {
  compose,
  type DispatchContext,
  type Plugin,
  type PublishContext,
  type SessionContext,
} from '../../lib/chain.js';
import {
  ForbiddenError,
  PushError,
  ServiceUnavailableError,
  TooManyRequestsError,
  UnauthorizedError,
} from '../../lib/errors.js';
import {
  authPlugin,
  definePlugin,
  dispatchPlugin,
  initPlugin,
  publishPlugin,
  type AuthAction,
} from '../../lib/plugins.js';
import { WireEvent } from '../../lib/protocol/event.js';
import type { PushSession } from '../../lib/session.js';

// ---------------------------------------------------------------------------
// Fakes: a session, and the three contexts as the server builds them.

function fakeSession(id = 'session-1', token = 'secret'): PushSession {
  let claims: readonly string[] = [];
  let metadata: unknown;
  return {
    id,
    token,
    parameter: () => '',
    parameters: () => [],
    header: () => undefined,
    cookie: () => undefined,
    get claims() {
      return claims;
    },
    get claimsMap() {
      return Object.fromEntries(claims.map((c) => c.split('=', 2) as [string, string]));
    },
    setClaims(next) {
      claims = [...next];
    },
    pushConfig: undefined,
    get metadata() {
      return metadata;
    },
    setMetadata(next) {
      metadata = next;
    },
    clientIP: '127.0.0.1',
    peerCertificate: undefined,
    startTime: new Date(0),
    signal: new AbortController().signal,
    encodings: { read: 'application/json', write: 'application/json' },
    isOpen: false,
    transportName: 'websocket',
    droppedEvents: 0,
    directPush: () => undefined,
    close: () => undefined,
  };
}

function sessionContext(session = fakeSession()): SessionContext {
  return {
    session,
    request: { headers: {}, url: '/events' } as IncomingMessage,
    authenticated: false,
    accepted: false,
    state: {},
  };
}

/** Runs the session phase as the server does: `last` marks the session accepted. */
async function openSession(plugins: Plugin[], ctx = sessionContext()): Promise<SessionContext> {
  const chain = compose(plugins.flatMap((p) => (p.session ? [p.session] : [])));
  await chain(ctx, (c) => {
    c.accepted = true;
  });
  return ctx;
}

const EVENT = new WireEvent({
  identity: 'task',
  type: 'create',
  timestamp: new Date('2026-11-23T21:40:00.123Z'),
  entityEncoding: 'application/msgpack',
  entity: { ID: '42', name: 'hello' },
});

function dispatchContext(event = EVENT): DispatchContext {
  return {
    event,
    publication: { topic: 'events' },
    relatedIdentities: [],
    predicates: [],
    stats: { considered: 0, sent: 0, filtered: 0, dropped: 0 },
    state: {},
  };
}

/** Runs the dispatch phase; resolves to whether the fan-out (`last`) ran. */
async function dispatch(plugins: Plugin[], ctx: DispatchContext): Promise<boolean> {
  let fannedOut = false;
  await compose(plugins.flatMap((p) => (p.dispatch ? [p.dispatch] : [])))(ctx, () => {
    fannedOut = true;
  });
  return fannedOut;
}

function publishContext(): PublishContext {
  return {
    event: {
      identity: 'task',
      type: 'create',
      entity: { ID: '42' },
      timestamp: new Date('2026-11-23T21:40:00.123Z'),
    },
    publication: { topic: 'events' },
    options: {},
    subject: 'events',
    state: {},
  };
}

/** Runs the publish phase; resolves to whether the publication was sent (`last` ran). */
async function publish(plugins: Plugin[], ctx = publishContext()): Promise<boolean> {
  let sent = false;
  await compose(plugins.flatMap((p) => (p.publish ? [p.publish] : [])))(ctx, () => {
    sent = true;
  });
  return sent;
}

/** An auth plugin that records that it was asked, then answers `action`. */
function answering(action: AuthAction, asked: string[], label: string): Plugin {
  return authPlugin(() => {
    asked.push(label);
    return action;
  }, label);
}

// ---------------------------------------------------------------------------

describe('authPlugin: plugins are asked in order; ok ends with success, ko with 401, continue asks the next', () => {
  // [answers in registration order, accepted?, plugins asked]
  const table: Array<[AuthAction[], boolean, string[]]> = [
    [['ok'], true, ['p0']],
    [['ko'], false, ['p0']],
    [['continue'], true, ['p0']],
    [['continue', 'continue', 'continue'], true, ['p0', 'p1', 'p2']],
    [['ok', 'ko'], true, ['p0']],
    [['continue', 'ok', 'ko'], true, ['p0', 'p1']],
    [['continue', 'ko', 'ok'], false, ['p0', 'p1']],
    [['ko', 'ok'], false, ['p0']],
    // Go's numeric AuthAction, as a literal port returns it: OK = 0, KO = 1, Continue = 2.
    [[0], true, ['p0']],
    [[1, 'ok'], false, ['p0']],
    [[2, 2, 0, 1], true, ['p0', 'p1', 'p2']],
    [[2, 1, 0], false, ['p0', 'p1']],
  ];
  for (const [answers, accepted, asked] of table) {
    it(`${answers.join(', ')} → ${accepted ? 'accepted' : '401'}, asking ${asked.join(', ')}`, async () => {
      const log: string[] = [];
      const plugins = answers.map((a, i) => answering(a, log, `p${i}`));
      if (accepted) {
        const ctx = await openSession(plugins);
        assert.equal(ctx.accepted, true);
      } else {
        await assert.rejects(openSession(plugins), (error: unknown) => {
          assert.ok(error instanceof UnauthorizedError);
          assert.equal(error.status, 401);
          return true;
        });
      }
      assert.deepEqual(log, asked);
    });
  }

  it('accepts a session when there is no plugin at all', async () => {
    assert.equal((await openSession([])).accepted, true);
  });

  it('marks the context authenticated on ok, not on continue', async () => {
    assert.equal((await openSession([authPlugin(() => 'ok')])).authenticated, true);
    assert.equal((await openSession([authPlugin(() => 'continue')])).authenticated, false);
  });

  it('awaits an asynchronous answer', async () => {
    const log: string[] = [];
    const slow = authPlugin(async (): Promise<AuthAction> => {
      await new Promise((resolve) => setImmediate(resolve));
      log.push('slow');
      return 'ko';
    });
    await assert.rejects(openSession([slow, answering('ok', log, 'next')]), UnauthorizedError);
    assert.deepEqual(log, ['slow']);
  });

  it('hands authenticate the session being built, which it may give claims', async () => {
    const session = fakeSession('s-claims', 'jwt');
    const ctx = await openSession(
      [
        authPlugin((s) => {
          assert.equal(s, session);
          s.setClaims([`@auth:token=${s.token}`, 'org=acme']);
          return 'ok';
        }),
      ],
      sessionContext(session),
    );
    assert.deepEqual(ctx.session.claims, ['@auth:token=jwt', 'org=acme']);
  });

  it('refuses a non-function at build time', () => {
    assert.throws(() => authPlugin('ok' as never), TypeError);
  });

  it('is named auth unless told otherwise', () => {
    assert.equal(authPlugin(() => 'ok').name, 'auth');
    assert.equal(authPlugin(() => 'ok', 'jwt').name, 'jwt');
  });
});

describe('authPlugin: ok skips the later auth plugins but not the init plugins', () => {
  it('still runs an init plugin placed after an ok, which may refuse', async () => {
    const log: string[] = [];
    const init = initPlugin(() => {
      log.push('init');
      return false;
    });
    await assert.rejects(
      openSession([answering('ok', log, 'a'), answering('ko', log, 'b'), init]),
      ForbiddenError,
    );
    assert.deepEqual(log, ['a', 'init']);
  });

  it('still runs an init plugin placed between two auth plugins', async () => {
    const log: string[] = [];
    const init = initPlugin(() => {
      log.push('init');
      return true;
    });
    const ctx = await openSession([answering('ok', log, 'a'), init, answering('ko', log, 'b')]);
    assert.equal(ctx.accepted, true);
    assert.deepEqual(log, ['a', 'init']);
  });
});

describe('authPlugin: ko refuses with 401 Unauthorized', () => {
  it('throws an UnauthorizedError whose error object is the one of PROTOCOL.md section 2', async () => {
    await assert.rejects(openSession([authPlugin(() => 'ko')]), (error: unknown) => {
      assert.ok(error instanceof UnauthorizedError);
      assert.equal(error.status, 401);
      assert.deepEqual(error.toErrorObject(), {
        code: 401,
        title: 'Unauthorized',
        description: 'You are not authorized to start a session',
        subject: 'pushwire',
      });
      return true;
    });
  });

  it('never marks the session accepted', async () => {
    const ctx = sessionContext();
    await assert.rejects(openSession([authPlugin(() => 'ko')], ctx));
    assert.equal(ctx.accepted, false);
    assert.equal(ctx.authenticated, false);
  });
});

describe('authPlugin: a throw refuses with 401 and the thrown message', () => {
  it('uses the message of a thrown Error', async () => {
    const thrown = new Error('token expired');
    await assert.rejects(
      openSession([
        authPlugin(() => {
          throw thrown;
        }),
      ]),
      (error: unknown) => {
        assert.ok(error instanceof UnauthorizedError);
        assert.equal(error.status, 401);
        assert.equal(error.toErrorObject().description, 'token expired');
        assert.equal(error.cause, thrown, 'the thrown error is kept as the cause, for logs');
        return true;
      },
    );
  });

  it('uses the message of a rejection', async () => {
    await assert.rejects(
      openSession([authPlugin(() => Promise.reject(new Error('ldap unreachable')))]),
      { name: 'UnauthorizedError', status: 401, message: 'ldap unreachable' },
    );
  });

  it('uses a thrown string as the message', async () => {
    await assert.rejects(
      openSession([
        authPlugin(() => {
          throw 'bad token';
        }),
      ]),
      { status: 401, message: 'bad token' },
    );
  });

  it('falls back on the default description when the error has no message', async () => {
    await assert.rejects(
      openSession([
        authPlugin(() => {
          throw new Error();
        }),
      ]),
      { status: 401, message: 'You are not authorized to start a session' },
    );
  });

  it('does not ask the later plugins', async () => {
    const log: string[] = [];
    await assert.rejects(
      openSession([
        authPlugin(() => {
          throw new Error('x');
        }),
        answering('ok', log, 'later'),
      ]),
    );
    assert.deepEqual(log, []);
  });
});

describe('authPlugin: a thrown PushError keeps its own status', () => {
  const errors: Array<[string, PushError]> = [
    ['429', new TooManyRequestsError('slow down')],
    ['503', new ServiceUnavailableError('maintenance')],
    ['403', new ForbiddenError('banned')],
    ['a custom status', new PushError('teapot', 'PUSH_TEAPOT', 418, 4418)],
  ];
  for (const [what, thrown] of errors) {
    it(`rethrows the same error (${what})`, async () => {
      await assert.rejects(
        openSession([
          authPlugin(() => {
            throw thrown;
          }),
        ]),
        (error) => error === thrown,
      );
    });
  }
});

describe("authPlugin: an answer other than ok, ko, continue (or Go's 0, 1, 2) refuses with 401", () => {
  const answers: unknown[] = ['OK', 'yes', true, undefined, null, 3, -1, 0.5, '0'];
  for (const answer of answers) {
    it(`refuses ${JSON.stringify(answer) ?? 'undefined'}, naming the plugin`, async () => {
      await assert.rejects(
        openSession([authPlugin(() => answer as AuthAction, 'jwt')]),
        (error: unknown) => {
          assert.ok(error instanceof UnauthorizedError);
          assert.match(error.message, /auth plugin jwt answered/);
          return true;
        },
      );
    });
  }
});

describe('initPlugin: true accepts, false refuses with 403 Forbidden', () => {
  it('accepts when init returns true', async () => {
    assert.equal((await openSession([initPlugin(() => true)])).accepted, true);
  });

  it('accepts when init resolves to true', async () => {
    assert.equal((await openSession([initPlugin(async () => true)])).accepted, true);
  });

  it('refuses with a ForbiddenError when init returns false', async () => {
    await assert.rejects(openSession([initPlugin(() => false)]), (error: unknown) => {
      assert.ok(error instanceof ForbiddenError);
      assert.deepEqual(error.toErrorObject(), {
        code: 403,
        title: 'Forbidden',
        description: 'You are not allowed to start a session',
        subject: 'pushwire',
      });
      return true;
    });
  });

  for (const answer of [1, 'true', {}, undefined, null]) {
    it(`accepts only true: ${JSON.stringify(answer) ?? 'undefined'} refuses`, async () => {
      await assert.rejects(openSession([initPlugin(() => answer as boolean)]), ForbiddenError);
    });
  }

  it('runs in registration order with the other session plugins', async () => {
    const log: string[] = [];
    await openSession([
      initPlugin(() => (log.push('init 1'), true)),
      answering('continue', log, 'auth'),
      initPlugin(() => (log.push('init 2'), true)),
    ]);
    assert.deepEqual(log, ['init 1', 'auth', 'init 2']);
  });

  it('stops the chain when it refuses', async () => {
    const log: string[] = [];
    await assert.rejects(
      openSession([initPlugin(() => false), initPlugin(() => (log.push('later'), true))]),
    );
    assert.deepEqual(log, []);
  });

  it('refuses a non-function at build time', () => {
    assert.throws(() => initPlugin(true as never), TypeError);
  });
});

describe('initPlugin: a throw refuses with 403 and the thrown message', () => {
  it('uses the message of a thrown Error and keeps it as the cause', async () => {
    const thrown = new Error('namespace /acme is closed');
    await assert.rejects(
      openSession([
        initPlugin(() => {
          throw thrown;
        }),
      ]),
      (error: unknown) => {
        assert.ok(error instanceof ForbiddenError);
        assert.equal(error.status, 403);
        assert.equal(error.message, 'namespace /acme is closed');
        assert.equal(error.cause, thrown);
        return true;
      },
    );
  });

  it('uses the message of a rejection', async () => {
    await assert.rejects(openSession([initPlugin(() => Promise.reject(new Error('db down')))]), {
      name: 'ForbiddenError',
      status: 403,
      message: 'db down',
    });
  });

  it('keeps the status of a thrown PushError', async () => {
    const thrown = new TooManyRequestsError();
    await assert.rejects(
      openSession([
        initPlugin(() => {
          throw thrown;
        }),
      ]),
      (error) => error === thrown,
    );
  });
});

describe('dispatchPlugin: summarizeEvent runs once per event, shouldDispatch once per session', () => {
  it('summarizes once and hands the summary to every per-session check', async () => {
    let summaries = 0;
    const seen: Array<[string, WireEvent, unknown]> = [];
    const plugin = dispatchPlugin({
      summarizeEvent: (event) => {
        summaries++;
        return { owner: (event.entity as { ID: string }).ID };
      },
      shouldDispatch: (session, event, summary) => {
        seen.push([session.id, event, summary]);
        return session.id !== 's2';
      },
    });
    const ctx = dispatchContext();
    assert.equal(await dispatch([plugin], ctx), true);
    assert.equal(ctx.predicates.length, 1);
    const predicate = ctx.predicates[0]!;
    const answers = ['s1', 's2', 's3'].map((id) => predicate(fakeSession(id)));
    assert.deepEqual(answers, [true, false, true]);
    assert.equal(summaries, 1);
    assert.deepEqual(
      seen.map(([id]) => id),
      ['s1', 's2', 's3'],
    );
    for (const [, event, summary] of seen) {
      assert.equal(event, EVENT);
      assert.deepEqual(summary, { owner: '42' });
    }
  });

  it('awaits an asynchronous summary before the fan-out', async () => {
    let summary: unknown;
    const plugin = dispatchPlugin<string>({
      summarizeEvent: async () => {
        await new Promise((resolve) => setImmediate(resolve));
        return 'ready';
      },
      shouldDispatch: (_s, _e, s) => {
        summary = s;
        return true;
      },
    });
    const ctx = dispatchContext();
    await dispatch([plugin], ctx);
    ctx.predicates[0]!(fakeSession());
    assert.equal(summary, 'ready');
  });

  it('passes an undefined summary when there is no summarizeEvent', async () => {
    let summary: unknown = 'unset';
    const ctx = dispatchContext();
    await dispatch(
      [
        dispatchPlugin({
          shouldDispatch: (_s, _e, s) => {
            summary = s;
            return true;
          },
        }),
      ],
      ctx,
    );
    ctx.predicates[0]!(fakeSession());
    assert.equal(summary, undefined);
  });

  it('adds no predicate when there is no shouldDispatch', async () => {
    const ctx = dispatchContext();
    await dispatch([dispatchPlugin({ summarizeEvent: () => 1 })], ctx);
    assert.deepEqual(ctx.predicates, []);
  });

  it('returns what shouldDispatch returns, a promise included', async () => {
    const ctx = dispatchContext();
    await dispatch([dispatchPlugin({ shouldDispatch: async (s) => s.id === 'yes' })], ctx);
    const predicate = ctx.predicates[0]!;
    assert.equal(await predicate(fakeSession('yes')), true);
    assert.equal(await predicate(fakeSession('no')), false);
  });

  it('drops the event (the chain rejects, no fan-out) when summarizeEvent throws', async () => {
    const thrown = new Error('cannot summarize');
    const ctx = dispatchContext();
    let fannedOut = false;
    const chain = compose([
      dispatchPlugin({
        summarizeEvent: () => {
          throw thrown;
        },
      }).dispatch!,
    ]);
    await assert.rejects(
      chain(ctx, () => {
        fannedOut = true;
      }),
      (error) => error === thrown,
    );
    assert.equal(fannedOut, false);
  });

  it('calls the handlers as methods of the object it was given', async () => {
    class TenantHandler {
      readonly tenant = 'acme';
      summarizeEvent(): string {
        return this.tenant;
      }
      relatedIdentities(): string[] {
        return [`${this.tenant}-task`];
      }
      shouldDispatch(session: PushSession, _event: WireEvent, summary: string): boolean {
        return summary === this.tenant && session.id === this.tenant;
      }
    }
    const ctx = dispatchContext();
    await dispatch([dispatchPlugin(new TenantHandler())], ctx);
    assert.deepEqual(ctx.relatedIdentities, ['acme-task']);
    assert.equal(ctx.predicates[0]!(fakeSession('acme')), true);
  });

  it('reads shouldDispatch per event: a handler replaced later decides the later events', async () => {
    const handlers: { owner: string; shouldDispatch(session: PushSession): boolean } = {
      owner: 'acme',
      shouldDispatch(session) {
        return session.id === this.owner;
      },
    };
    const plugin = dispatchPlugin(handlers);
    const first = dispatchContext();
    await dispatch([plugin], first);
    handlers.shouldDispatch = function (this: { owner: string }, session) {
      return session.id !== this.owner;
    };
    const second = dispatchContext();
    await dispatch([plugin], second);
    assert.equal(first.predicates[0]!(fakeSession('acme')), true);
    assert.equal(second.predicates[0]!(fakeSession('acme')), false);
    assert.equal(second.predicates[0]!(fakeSession('other')), true, 'still called on handlers');
  });

  it('refuses a function it does not know, own or inherited, naming it (never ignored)', () => {
    assert.throws(() => dispatchPlugin({ shouldDispatsh: () => true } as never), {
      name: 'TypeError',
      message: /unknown handler shouldDispatsh/,
    });
    class Ported {
      shouldDispatch(): boolean {
        return true;
      }
      onPushSessionBegin(): void {}
    }
    assert.throws(() => dispatchPlugin(new Ported() as never), {
      name: 'TypeError',
      message: /onPushSessionBegin/,
    });
    // State and helpers a class keeps: data fields, `_`-prefixed and #private methods.
    class WithState {
      readonly owner = 'acme';
      _isOwner(session: PushSession): boolean {
        return session.id === this.owner;
      }
      shouldDispatch(session: PushSession): boolean {
        return this._isOwner(session);
      }
    }
    assert.doesNotThrow(() => dispatchPlugin(new WithState()));
  });

  it('maps onPushSessionInit to the session phase, start and stop to the lifecycle hooks', async () => {
    const events: string[] = [];
    const plugin = dispatchPlugin({
      onPushSessionInit: (session) => session.id === 'acme',
      onPushSessionStart: (session) => void events.push(`start ${session.id}`),
      onPushSessionStop: (session, info) => void events.push(`stop ${session.id} ${info.code}`),
    });
    assert.equal(typeof plugin.session, 'function');
    await plugin.onSessionStart!(fakeSession('acme'));
    await plugin.onSessionStop!(fakeSession('acme'), { code: 1000, reason: '' });
    assert.deepEqual(events, ['start acme', 'stop acme 1000']);
    assert.equal(dispatchPlugin({}).session, undefined);
  });

  const badHandlers: Array<[string, object]> = [
    ['onPushSessionInit', { onPushSessionInit: true }],
    ['onPushSessionStop', { onPushSessionStop: 'x' }],
    ['summarizeEvent', { summarizeEvent: 'owner' }],
    ['relatedIdentities', { relatedIdentities: ['user'] }],
    ['shouldDispatch', { shouldDispatch: true }],
  ];
  for (const [key, handlers] of badHandlers) {
    it(`refuses a ${key} that is not a function at build time`, () => {
      assert.throws(() => dispatchPlugin(handlers as never), {
        name: 'TypeError',
        message: new RegExp(key),
      });
    });
  }
});

describe('dispatchPlugin: relatedIdentities are appended to the event context', () => {
  it('appends in registration order, after what earlier plugins added', async () => {
    const ctx = dispatchContext();
    const fannedOut = await dispatch(
      [
        dispatchPlugin({ relatedIdentities: () => ['user', 'project'] }),
        dispatchPlugin({ relatedIdentities: (identity) => [`${identity}-audit`] }),
      ],
      ctx,
    );
    assert.equal(fannedOut, true);
    assert.deepEqual(ctx.relatedIdentities, ['user', 'project', 'task-audit']);
  });

  it("gets the event's identity first (bahamut's RelatedEventIdentities(identity)), the event second", async () => {
    const ctx = dispatchContext();
    const calls: unknown[][] = [];
    await dispatch(
      [
        dispatchPlugin({
          relatedIdentities: (...args) => {
            calls.push(args);
            return [];
          },
        }),
      ],
      ctx,
    );
    assert.deepEqual(calls, [[ctx.event.identity, ctx.event]]);
  });

  it('takes null and undefined (Go nil) as no related identity, and the event is dispatched', async () => {
    const ctx = dispatchContext();
    const fannedOut = await dispatch(
      [
        dispatchPlugin({ relatedIdentities: () => null }),
        dispatchPlugin({ relatedEventIdentities: () => undefined }),
      ],
      ctx,
    );
    assert.equal(fannedOut, true);
    assert.deepEqual(ctx.relatedIdentities, []);
  });

  it("accepts bahamut's name relatedEventIdentities, and refuses both names at once", async () => {
    const ctx = dispatchContext();
    await dispatch([dispatchPlugin({ relatedEventIdentities: (id) => [`${id}-x`] })], ctx);
    assert.deepEqual(ctx.relatedIdentities, [`${ctx.event.identity}-x`]);
    assert.throws(
      () => dispatchPlugin({ relatedIdentities: () => [], relatedEventIdentities: () => [] }),
      { name: 'TypeError', message: /not both/ },
    );
  });

  it('has added them before the fan-out runs', async () => {
    const ctx = dispatchContext();
    let atFanOut: string[] = [];
    await compose([dispatchPlugin({ relatedIdentities: () => ['user'] }).dispatch!])(ctx, (c) => {
      atFanOut = [...c.relatedIdentities];
    });
    assert.deepEqual(atFanOut, ['user']);
  });

  it('is named dispatch unless told otherwise', () => {
    assert.equal(dispatchPlugin({}).name, 'dispatch');
    assert.equal(dispatchPlugin({}, 'tenancy').name, 'tenancy');
  });
});

describe('publishPlugin: false drops the publication quietly, true lets it through', () => {
  it('publishes when shouldPublish returns true', async () => {
    assert.equal(await publish([publishPlugin(() => true)]), true);
  });

  it('drops quietly (resolves, no publication) when it returns false', async () => {
    assert.equal(await publish([publishPlugin(() => false)]), false);
  });

  it('awaits an asynchronous answer', async () => {
    assert.equal(await publish([publishPlugin(async () => true)]), true);
    assert.equal(await publish([publishPlugin(async () => false)]), false);
  });

  for (const answer of [1, 'yes', {}, undefined]) {
    it(`publishes only on true: ${JSON.stringify(answer) ?? 'undefined'} drops`, async () => {
      assert.equal(await publish([publishPlugin(() => answer as boolean)]), false);
    });
  }

  it('stops the later publish plugins when it drops', async () => {
    const log: string[] = [];
    await publish([
      publishPlugin(() => false),
      publishPlugin(() => {
        log.push('later');
        return true;
      }),
    ]);
    assert.deepEqual(log, []);
  });

  it('sees the event and the context, and may set the publication headers', async () => {
    const ctx = publishContext();
    await publish(
      [
        publishPlugin((event, c) => {
          assert.equal(event, ctx.event);
          assert.equal(c, ctx);
          c.publication.trackingName = `publish ${event.identity}`;
          return true;
        }),
      ],
      ctx,
    );
    assert.equal(ctx.publication.trackingName, 'publish task');
  });

  it('rejects publish() with what shouldPublish throws', async () => {
    const thrown = new Error('quota');
    await assert.rejects(
      publish([
        publishPlugin(() => {
          throw thrown;
        }),
      ]),
      (error) => error === thrown,
    );
  });

  it('refuses a non-function at build time', () => {
    assert.throws(() => publishPlugin(false as never), TypeError);
  });
});

describe('definePlugin is the identity: it returns the plugin it was given', () => {
  it('returns the same object with every hook', () => {
    const hooks: Plugin = {
      name: 'custom',
      session: (_ctx, next) => next(),
      dispatch: (_ctx, next) => next(),
      publish: (_ctx, next) => next(),
      onSessionStart: () => undefined,
      onSessionStop: () => undefined,
    };
    const plugin = definePlugin(hooks);
    assert.equal(plugin, hooks);
    assert.deepEqual(Object.keys(plugin), Object.keys(hooks));
  });

  it('keeps the extra members of the plugin in its type', () => {
    const plugin = definePlugin({ name: 'counter', count: 0 });
    plugin.count++;
    assert.equal(plugin.count, 1);
  });
});
