/**
 * pushMiddleware's options (issue 19, item 6b): a key that is not an option is a TypeError
 * naming it and the closest known option, never a silently ignored setting.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LocalPubSub, pushMiddleware, type PushOptions } from '../../lib/index.js';

/** Options as a user's JavaScript (or a cast) can pass them: with keys the type does not have. */
const loose = (options: Record<string, unknown>): PushOptions => options as PushOptions;

describe('unknown option keys', () => {
  for (const [key, closest] of [
    ['maxPayloads', 'maxPayload'],
    ['endpiont', 'endpoint'],
    ['pluginz', 'plugins'],
    ['sessiontimeout', 'sessionTimeout'],
    ['maxPushConfigByte', 'maxPushConfigBytes'],
    ['histroy', undefined],
  ] as const) {
    it(`${key} is a TypeError naming ${closest ?? 'the closest option'}`, () => {
      assert.throws(
        () => pushMiddleware(new LocalPubSub(), 'events', loose({ [key]: 1 })),
        (error: unknown) => {
          assert.ok(error instanceof TypeError);
          assert.match(error.message, new RegExp(`unknown option "${key}"`));
          if (closest !== undefined) assert.match(error.message, new RegExp(`"${closest}"\\?$`));
          else assert.match(error.message, /did you mean "\w+"\?$/);
          return true;
        },
      );
    });
  }

  it('every documented option is accepted', async () => {
    const push = pushMiddleware(new LocalPubSub(), 'events', {
      plugins: [],
      endpoint: '/events',
      subjectHierarchies: false,
      allowedOrigins: ['https://example.com'],
      maxPayload: 1024,
      maxConfigsPerSecond: 5,
      pingInterval: 0,
      maxBufferedBytes: 1024,
      slowConsumerPolicy: 'drop',
      logger: { debug() {}, info() {}, warn() {}, error() {} },
      publishRetries: 1,
      publishRetryDelay: 1,
      sessionTimeout: 100,
      closeTimeout: 100,
      dispatchTimeout: 100,
      ...loose({ maxPushConfigBytes: 4096 }),
    });
    await push.ready;
    await push.close();
  });

  it('a plugin array is not checked for keys', async () => {
    const push = pushMiddleware(new LocalPubSub(), 'events', []);
    await push.close();
  });
});

describe('filterLimits', () => {
  it('applies to the push configs of the server, the others at their defaults', async () => {
    const { parsePushConfig } = await import('../../lib/protocol/push-config.js');
    const { resolveOptions } = await import('../../lib/options.js');
    const resolved = resolveOptions({ filterLimits: { maxPatternProgram: 5 } });
    assert.equal(resolved.filterLimits.maxPatternProgram, 5);
    assert.equal(resolved.filterLimits.maxMatchCost, 128 * 1024);
    const config = { identities: { task: [] }, filters: { task: 'a matches "x+y+z+"' } };
    parsePushConfig(config);
    assert.throws(() => parsePushConfig(config, { filters: resolved.filterLimits }), {
      message: /filters\.task: the patterns of the filter compile to more than 5 instructions/,
    });
  });

  it('refuses an unknown or invalid limit with a TypeError', () => {
    assert.throws(
      () =>
        pushMiddleware(new LocalPubSub(), 'events', {
          filterLimits: loose({ maxPatterns: 3 }) as never,
        }),
      { name: 'TypeError', message: /unknown filter limit "maxPatterns"/ },
    );
    assert.throws(
      () => pushMiddleware(new LocalPubSub(), 'events', { filterLimits: { maxDepth: 0 } }),
      { name: 'TypeError', message: /filter limit maxDepth must be a positive integer/ },
    );
  });
});
