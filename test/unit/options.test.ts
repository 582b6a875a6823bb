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
