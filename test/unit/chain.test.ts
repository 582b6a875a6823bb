// compose(), the plugin chain of DESIGN.md ("The plugin chain"): the
// koa-compose cases, written as the rules a plugin author relies on.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { compose, type Middleware } from '../../lib/chain.js';
import { ChainError, PushError } from '../../lib/errors.js';

interface Ctx {
  log: string[];
  [key: string]: unknown;
}

const newCtx = (): Ctx => ({ log: [] });

/** A promise that settles on a later macrotask, so that "after next" really waits. */
const later = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('order: the first registered is outermost; code after next() runs in reverse', () => {
  it('runs the code before next() in order and the code after it in reverse', async () => {
    const mw =
      (n: number): Middleware<Ctx> =>
      async (ctx, next) => {
        ctx.log.push(`before ${n}`);
        await later();
        await next();
        await later();
        ctx.log.push(`after ${n}`);
      };
    const ctx = newCtx();
    await compose([mw(1), mw(2), mw(3)])(ctx, (c) => {
      c.log.push('last');
    });
    assert.deepEqual(ctx.log, [
      'before 1',
      'before 2',
      'before 3',
      'last',
      'after 3',
      'after 2',
      'after 1',
    ]);
  });

  it('runs synchronous middlewares in the same order', async () => {
    const ctx = newCtx();
    await compose<Ctx>([
      (c, next) => {
        c.log.push('a');
        return next().then(() => {
          c.log.push('a after');
        });
      },
      (c, next) => {
        c.log.push('b');
        return next();
      },
    ])(ctx, (c) => {
      c.log.push('last');
    });
    assert.deepEqual(ctx.log, ['a', 'b', 'last', 'a after']);
  });

  it('runs a middleware registered twice twice', async () => {
    const ctx = newCtx();
    const twice: Middleware<Ctx> = (c, next) => {
      c.log.push('x');
      return next();
    };
    await compose([twice, twice])(ctx);
    assert.deepEqual(ctx.log, ['x', 'x']);
  });

  it('is fixed at compose time: changing the array afterwards changes nothing', async () => {
    const middlewares: Middleware<Ctx>[] = [
      (c, next) => {
        c.log.push('first');
        return next();
      },
    ];
    const run = compose(middlewares);
    middlewares.push((c) => {
      c.log.push('added later');
    });
    const ctx = newCtx();
    await run(ctx);
    assert.deepEqual(ctx.log, ['first']);
  });
});

describe('the context is one object shared by every middleware and by last', () => {
  it('passes the same object and keeps what each middleware sets', async () => {
    const seen: unknown[] = [];
    const ctx = newCtx();
    await compose<Ctx>([
      async (c, next) => {
        seen.push(c);
        c.user = 'ann';
        await next();
        assert.equal(c.fromLast, true);
      },
      async (c, next) => {
        seen.push(c);
        assert.equal(c.user, 'ann');
        await next();
      },
    ])(ctx, (c) => {
      seen.push(c);
      c.fromLast = true;
    });
    assert.equal(seen.length, 3);
    for (const c of seen) assert.equal(c, ctx);
    assert.equal(ctx.fromLast, true);
  });

  it('keeps two runs of one composed chain apart', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const run = compose<Ctx>([
      async (c, next) => {
        c.log.push('in');
        if (c.wait === true) await gate;
        await next();
      },
    ]);
    const first = { log: [], wait: true };
    const second = { log: [], wait: false };
    const p1 = run(first, (c) => {
      c.log.push('last');
    });
    // The second run calls next() while the first one is still waiting: the
    // next()-twice guard is per run, so this is not a ChainError.
    await run(second, (c) => {
      c.log.push('last');
    });
    release();
    await p1;
    assert.deepEqual(first.log, ['in', 'last']);
    assert.deepEqual(second.log, ['in', 'last']);
  });
});

describe('next() called twice by one middleware rejects with a ChainError', () => {
  it('rejects the second call, and the chain with it', async () => {
    let lastCalls = 0;
    const run = compose<Ctx>([
      async (_c, next) => {
        await next();
        await next();
      },
    ]);
    await assert.rejects(
      run(newCtx(), () => {
        lastCalls++;
      }),
      (error: unknown) => {
        assert.ok(error instanceof ChainError);
        assert.ok(error instanceof PushError);
        assert.equal(error.code, 'PUSH_CHAIN');
        assert.equal(error.message, 'next() called multiple times');
        return true;
      },
    );
    assert.equal(lastCalls, 1, 'the rest of the chain runs once');
  });

  it('guards a middleware in the middle of the chain too', async () => {
    let thirdCalls = 0;
    const run = compose<Ctx>([
      (_c, next) => next(),
      async (_c, next) => {
        await next();
        await next();
      },
      () => {
        thirdCalls++;
      },
    ]);
    await assert.rejects(run(newCtx()), ChainError);
    assert.equal(thirdCalls, 1);
  });

  it('rejects a second call made before the first one settled', async () => {
    const run = compose<Ctx>([
      async (_c, next) => {
        await Promise.all([next(), next()]);
      },
    ]);
    await assert.rejects(
      run(newCtx(), () => later()),
      ChainError,
    );
  });

  it('lets an outer middleware catch the ChainError like any other error', async () => {
    const ctx = newCtx();
    await compose<Ctx>([
      async (c, next) => {
        try {
          await next();
        } catch (error) {
          c.log.push(error instanceof ChainError ? 'caught ChainError' : 'caught other');
        }
      },
      async (_c, next) => {
        await next();
        await next();
      },
    ])(ctx);
    assert.deepEqual(ctx.log, ['caught ChainError']);
  });
});

describe('a synchronous throw becomes a rejection', () => {
  const boom = new Error('boom');
  const cases: Array<[string, Middleware<Ctx>[], ((c: Ctx) => void) | undefined]> = [
    [
      'in the first middleware',
      [
        () => {
          throw boom;
        },
      ],
      undefined,
    ],
    [
      'in a later middleware',
      [
        (_c, next) => next(),
        () => {
          throw boom;
        },
      ],
      undefined,
    ],
    [
      'in last',
      [(_c, next) => next()],
      () => {
        throw boom;
      },
    ],
    [
      'in last with no middleware',
      [],
      () => {
        throw boom;
      },
    ],
  ];
  for (const [where, middlewares, last] of cases) {
    it(`returns a rejected promise, never throws, for a throw ${where}`, async () => {
      let result: Promise<void> | undefined;
      assert.doesNotThrow(() => {
        result = compose(middlewares)(newCtx(), last);
      });
      assert.ok(result instanceof Promise);
      await assert.rejects(result, (error) => error === boom);
    });
  }
});

describe('a rejection propagates to the caller, and an outer middleware can catch it', () => {
  it('rejects the chain with the error a middleware rejected with', async () => {
    const error = new PushError('nope', 'PUSH_TEST', 418, 4000);
    await assert.rejects(
      compose<Ctx>([
        (_c, next) => next(),
        async () => {
          await later();
          throw error;
        },
      ])(newCtx()),
      (e) => e === error,
    );
  });

  it('rejects with what an async last rejected with', async () => {
    const error = new Error('last failed');
    await assert.rejects(
      compose<Ctx>([(_c, next) => next()])(newCtx(), async () => {
        await later();
        throw error;
      }),
      (e) => e === error,
    );
  });

  it('runs the code after next() of outer middlewares only if they catch', async () => {
    const ctx = newCtx();
    await compose<Ctx>([
      async (c, next) => {
        try {
          await next();
        } catch (error) {
          c.log.push(`outer caught ${(error as Error).message}`);
        }
      },
      async (c, next) => {
        await next();
        c.log.push('middle after next (must not run)');
      },
      () => {
        throw new Error('inner');
      },
    ])(ctx);
    assert.deepEqual(ctx.log, ['outer caught inner']);
  });

  it('propagates an error thrown on the way back, after next()', async () => {
    const error = new Error('after');
    await assert.rejects(
      compose<Ctx>([
        (_c, next) => next(),
        async (_c, next) => {
          await next();
          throw error;
        },
      ])(newCtx()),
      (e) => e === error,
    );
  });
});

describe('an empty chain calls last', () => {
  it('calls last once with the context', async () => {
    const ctx = newCtx();
    const calls: unknown[] = [];
    await compose<Ctx>([])(ctx, (c) => {
      calls.push(c);
    });
    assert.deepEqual(calls, [ctx]);
  });

  it('resolves with nothing to do when there is no last either', async () => {
    const result = compose<Ctx>([])(newCtx());
    assert.ok(result instanceof Promise);
    assert.equal(await result, undefined);
  });
});

describe('a middleware that does not call next() stops the chain', () => {
  it('skips the later middlewares and last, and resolves', async () => {
    const ctx = newCtx();
    let lastCalled = false;
    await compose<Ctx>([
      (c, next) => {
        c.log.push('a');
        return next();
      },
      (c) => {
        c.log.push('b stops');
      },
      (c, next) => {
        c.log.push('c (must not run)');
        return next();
      },
    ])(ctx, () => {
      lastCalled = true;
    });
    assert.deepEqual(ctx.log, ['a', 'b stops']);
    assert.equal(lastCalled, false);
  });

  it('still runs the code after next() of the middlewares before it', async () => {
    const ctx = newCtx();
    await compose<Ctx>([
      async (c, next) => {
        await next();
        c.log.push('outer after');
      },
      async (c) => {
        c.log.push('stop');
      },
    ])(ctx, (c) => {
      c.log.push('last (must not run)');
    });
    assert.deepEqual(ctx.log, ['stop', 'outer after']);
  });
});

describe('return values: next() and the chain are promises that wait for the rest', () => {
  it('gives next() a promise even when the rest of the chain is synchronous', async () => {
    let fromNext: unknown;
    await compose<Ctx>([
      (_c, next) => {
        fromNext = next();
        return fromNext as Promise<void>;
      },
      () => undefined,
    ])(newCtx());
    assert.ok(fromNext instanceof Promise);
  });

  it('resolves next() only once the asynchronous rest of the chain has finished', async () => {
    const ctx = newCtx();
    await compose<Ctx>([
      async (c, next) => {
        await next();
        c.log.push('outer sees the end');
      },
      async (c, next) => {
        await later();
        await next();
        await later();
        c.log.push('inner done');
      },
    ])(ctx, async (c) => {
      await later();
      c.log.push('last done');
    });
    assert.deepEqual(ctx.log, ['last done', 'inner done', 'outer sees the end']);
  });

  it('waits on a promise a non-async middleware returns', async () => {
    const ctx = newCtx();
    const chain = compose<Ctx>([
      (c) =>
        later().then(() => {
          c.log.push('returned promise settled');
        }),
    ]);
    await chain(ctx);
    assert.deepEqual(ctx.log, ['returned promise settled']);
  });

  it('resolves to undefined, whatever the middlewares return', async () => {
    const result = await compose<Ctx>([(_c, next) => next()])(newCtx(), () => undefined);
    assert.equal(result, undefined);
  });
});

describe('a middleware that is not a function is refused at compose time', () => {
  const bad: Array<[string, unknown]> = [
    ['undefined', undefined],
    ['null', null],
    ['a string', 'auth'],
    ['a number', 42],
    ['a plugin object instead of its hook', { session: () => undefined }],
  ];
  for (const [what, value] of bad) {
    it(`throws a TypeError for ${what}`, () => {
      assert.throws(
        () => compose([(_c: Ctx, next: () => Promise<void>) => next(), value as Middleware<Ctx>]),
        { name: 'TypeError', message: 'a middleware must be a function' },
      );
    });
  }

  it('throws a TypeError when the middlewares are not a list', () => {
    assert.throws(() => compose(undefined as unknown as Middleware<Ctx>[]), TypeError);
  });
});

describe('a composed chain nests inside another as one middleware', () => {
  it('keeps the order and hands the inner chain the outer next() as its last', async () => {
    const push =
      (label: string): Middleware<Ctx> =>
      async (c, next) => {
        c.log.push(`${label} in`);
        await next();
        c.log.push(`${label} out`);
      };
    const inner = compose([push('b'), push('c')]);
    const ctx = newCtx();
    await compose<Ctx>([push('a'), (c, next) => inner(c, next), push('d')])(ctx, (c) => {
      c.log.push('last');
    });
    assert.deepEqual(ctx.log, [
      'a in',
      'b in',
      'c in',
      'd in',
      'last',
      'd out',
      'c out',
      'b out',
      'a out',
    ]);
  });

  it('stops the outer chain when the inner one stops', async () => {
    const inner = compose<Ctx>([
      (c) => {
        c.log.push('inner stops');
      },
    ]);
    const ctx = newCtx();
    await compose<Ctx>([(c, next) => inner(c, next), (c) => void c.log.push('after (no)')])(
      ctx,
      (c) => void c.log.push('last (no)'),
    );
    assert.deepEqual(ctx.log, ['inner stops']);
  });

  it('carries a rejection of the inner chain out to the outer caller', async () => {
    const error = new Error('inner');
    const inner = compose<Ctx>([
      () => {
        throw error;
      },
    ]);
    await assert.rejects(compose<Ctx>([(c, next) => inner(c, next)])(newCtx()), (e) => e === error);
  });
});
