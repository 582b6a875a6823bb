/**
 * PROTOCOL.md sections 3 to 6 against a real Express server on port 0 and
 * real `ws` clients: the events on the wire in both encodings, how a
 * session chooses its encodings, the push config, the dispatch steps, the
 * plugin helpers' semantics, closing, keepalive, slow clients, publishing,
 * and a load test.
 *
 * Nothing sleeps. A test waits for the frame, the close or the counter that
 * proves its point, with a deadline. To prove that an event was NOT sent, it
 * sends a later marker that must arrive through the same path: one session
 * receives events in publish order, so whatever had been sent would have
 * arrived first.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { describe, it } from 'node:test';
import { decode, encode } from '@msgpack/msgpack';
import WebSocket from 'ws';
import {
  authPlugin,
  definePlugin,
  dispatchPlugin,
  InvalidEventError,
  LocalPubSub,
  publishPlugin,
  PubSubError,
  pushMiddleware,
  WireEvent,
  type Plugin,
  type PubSubClient,
  type PubSubHandler,
  type PushEvent,
  type PushSession,
  type SessionStopInfo,
} from '../../lib/index.js';
import { encodeMsgpackEvent } from '../../lib/protocol/event.js';
import { encodePublication } from '../../lib/protocol/publication.js';
import { tenantIsolationPlugin } from '../../plugins/tenant/index.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { memoryLogger } from '../helpers/logger.js';
import {
  connectClient,
  type ConnectOptions,
  type PushApp,
  type PushAppOptions,
  type ReceivedEvent,
  type TestClient,
  withPushApp,
} from '../helpers/push-app.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

const WAIT_MS = 5_000;

// Nothing async may escape as an unhandled rejection, whatever the test does to the server.
const unhandled = failOnUnhandledRejections();

// ---------------------------------------------------------------------------
// Harness

/** A connected client with the token that names its server-side session. */
interface Peer {
  client: TestClient;
  token: string;
  /** The server's side of this session (found by its token). */
  session(): PushSession;
  /** Sends a push config and waits until the server has applied it. */
  configure(config: unknown): Promise<void>;
}

interface Harness {
  app: PushApp;
  connect(opts?: ConnectOptions): Promise<Peer>;
  /** Publishes `{ identity: 'marker' }` with `n` and waits for every peer given to receive it. */
  marker(n: number, ...peers: Peer[]): Promise<void>;
}

let tokens = 0;

/** Starts an app, runs `fn`, and closes the app and every client whatever happens. */
async function withApp(opts: PushAppOptions, fn: (h: Harness) => Promise<void>): Promise<void> {
  await withPushApp(opts, (app, track) => fn(harness(app, track)));
}

/** The harness of one app; `track` is given every client it connects. */
function harness(app: PushApp, track: (c: TestClient) => TestClient): Harness {
  return {
    app,
    async connect(connectOpts = {}) {
      const token = connectOpts.query?.token ?? `peer-${++tokens}`;
      const client = track(
        await withTimeout(
          connectClient(app.wsUrl, { ...connectOpts, query: { ...connectOpts.query, token } }),
          WAIT_MS,
          `no handshake for ${token}`,
        ),
      );
      const session = (): PushSession => {
        const found = app.push.sessions().find((s) => s.token === token);
        assert.ok(found, `no session for ${token}`);
        return found;
      };
      return {
        client,
        token,
        session,
        async configure(config) {
          const s = session();
          const previous = s.pushConfig;
          client.sendConfig(config);
          await waitFor(() => s.pushConfig !== previous, {
            timeout: WAIT_MS,
            message: `the server did not apply ${JSON.stringify(config)}`,
          });
        },
      };
    },
    async marker(n, ...peers) {
      await app.push.publish({ identity: 'marker', type: 'create', entity: { marker: n } });
      await Promise.all(
        peers.map((p) =>
          waitFor(() => p.client.events.some((e) => isMarker(e, n)), {
            timeout: WAIT_MS,
            message: `marker ${n} did not reach ${p.token}`,
          }),
        ),
      );
    },
  };
}

function isMarker(e: ReceivedEvent, n?: number): boolean {
  return (
    e.identity === 'marker' && (n === undefined || (e.entity as { marker: number }).marker === n)
  );
}

/** What a client received, as `identity/type` or `identity/type:name` when the entity has a name. */
function seen(peer: Peer): string[] {
  return peer.client.events.map((e) => {
    const entity = e.entity as { name?: unknown; marker?: unknown } | null;
    if (isMarker(e)) return `marker:${String(entity?.marker)}`;
    return entity?.name === undefined
      ? `${e.identity}/${e.type}`
      : `${e.identity}/${e.type}:${String(entity.name)}`;
  });
}

/** Every frame a ws client receives, raw. */
function recordFrames(ws: WebSocket): Array<{ data: Buffer; isBinary: boolean }> {
  const frames: Array<{ data: Buffer; isBinary: boolean }> = [];
  ws.on('message', (data, isBinary) => {
    frames.push({ data: Buffer.from(data as Buffer), isBinary });
  });
  return frames;
}

/** The server's socket of a session (the outbound buffer the slow-consumer rules bound). */
function serverSocket(session: PushSession): Socket {
  const socket = (session as unknown as { transport?: { socket?: Socket } }).transport?.socket;
  assert.ok(socket, 'the session has a socket');
  return socket;
}

const task = (name: string, extra: object = {}, type = 'create'): PushEvent => ({
  identity: 'task',
  type,
  entity: { name, ...extra },
});

// ---------------------------------------------------------------------------

describe('§3 events on the wire', () => {
  // Sessions do not get events older than their start (section 5, step 2): publish in the future.
  const future = new Date(Date.now() + 3_600_000);
  const entity = { ID: '42', name: 'hello', tags: ['a', 'b'], priority: 3, done: false };

  it('JSON: a text frame holding exactly the five keys', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect();
      const frames = recordFrames(peer.client.ws);
      await h.app.push.publish({ identity: 'task', type: 'create', entity, timestamp: future });
      await peer.client.waitForEvents(1, WAIT_MS);
      const [frame] = frames;
      assert.ok(frame);
      assert.equal(frame.isBinary, false);
      const event = JSON.parse(frame.data.toString('utf8')) as Record<string, unknown>;
      assert.deepEqual(Object.keys(event).sort(), [
        'encoding',
        'entity',
        'identity',
        'timestamp',
        'type',
      ]);
      assert.deepEqual(event.entity, entity);
      assert.equal(event.identity, 'task');
      assert.equal(event.type, 'create');
      assert.equal(event.timestamp, future.toISOString());
      assert.equal(event.encoding, 'application/json');
    });
  });

  it('MessagePack: a binary frame, the entity a bin of MessagePack, the timestamp ext -1', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect({ query: { encoding: 'msgpack' } });
      const frames = recordFrames(peer.client.ws);
      await h.app.push.publish({ identity: 'task', type: 'update', entity, timestamp: future });
      await peer.client.waitForEvents(1, WAIT_MS);
      const [frame] = frames;
      assert.ok(frame);
      assert.equal(frame.isBinary, true);
      const event = decode(frame.data) as Record<string, unknown>;
      assert.deepEqual(Object.keys(event).sort(), [
        'encoding',
        'entity',
        'identity',
        'timestamp',
        'type',
      ]);
      assert.ok(event.entity instanceof Uint8Array, 'the entity is a bin');
      assert.deepEqual(decode(event.entity), entity);
      assert.ok(event.timestamp instanceof Date, 'the timestamp decodes as a timestamp');
      assert.equal(event.timestamp.getTime(), future.getTime());
      assert.equal(event.identity, 'task');
      assert.equal(event.type, 'update');
      assert.equal(event.encoding, 'application/msgpack');
      // The raw bytes: after the key `timestamp`, an extension of type -1 (0xff); after the key
      // `entity`, a bin (0xc4-0xc6), not a nested map.
      const after = (key: string): Buffer => {
        const keyBytes = Buffer.concat([Buffer.from([0xa0 | key.length]), Buffer.from(key)]);
        const at = frame.data.indexOf(keyBytes);
        assert.ok(at >= 0, `key ${key} as a fixstr`);
        return frame.data.subarray(at + keyBytes.length, at + keyBytes.length + 3);
      };
      const ts = after('timestamp');
      const isExtMinus1 =
        ((ts[0] === 0xd6 || ts[0] === 0xd7) && ts[1] === 0xff) ||
        (ts[0] === 0xc7 && ts[1] === 12 && ts[2] === 0xff);
      assert.ok(isExtMinus1, `timestamp as ext -1, got ${ts.toString('hex')}`);
      assert.ok([0xc4, 0xc5, 0xc6].includes(after('entity')[0] as number), 'entity as a bin');
    });
  });

  it('each message carries one event; any type string passes', async () => {
    await withApp({}, async (h) => {
      const json = await h.connect();
      const msgpack = await h.connect({ query: { encoding: 'msgpack' } });
      const frames = [recordFrames(json.client.ws), recordFrames(msgpack.client.ws)];
      await h.app.push.publish(
        task('a'),
        task('b', {}, 'archived'),
        { identity: 'user', type: 'delete', entity: null },
        { identity: 'task', type: 'error', entity: 'a string entity' },
      );
      for (const peer of [json, msgpack]) await peer.client.waitForEvents(4, WAIT_MS);
      for (const peer of [json, msgpack]) {
        assert.deepEqual(seen(peer), [
          'task/create:a',
          'task/archived:b',
          'user/delete',
          'task/error',
        ]);
        assert.equal(peer.client.events[3]?.entity, 'a string entity');
        assert.equal(peer.client.events[2]?.entity, null);
      }
      assert.deepEqual(
        frames.map((f) => f.length),
        [4, 4],
      );
    });
  });
});

describe('§1 encodings: Content-Type reads, Accept writes, the encoding parameter wins', () => {
  const cases: Array<{
    name: string;
    connect: ConnectOptions;
    binary: boolean;
  }> = [
    {
      name: 'Content-Type msgpack, no Accept: reads MessagePack, writes JSON',
      connect: { headers: { 'Content-Type': 'application/msgpack' }, sendEncoding: 'msgpack' },
      binary: false,
    },
    {
      name: 'Accept msgpack, no Content-Type: reads JSON, writes MessagePack',
      connect: { headers: { Accept: 'application/msgpack' }, sendEncoding: 'json' },
      binary: true,
    },
    {
      name: 'Accept "application/msgpack, */*": the first listed encoding',
      connect: { headers: { Accept: 'application/msgpack, */*' }, sendEncoding: 'json' },
      binary: true,
    },
    {
      name: 'encoding=msgpack wins over JSON headers, both ways',
      connect: {
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        query: { encoding: 'msgpack' },
        sendEncoding: 'msgpack',
      },
      binary: true,
    },
    {
      name: 'encoding=json wins over MessagePack headers, both ways',
      connect: {
        headers: { 'Content-Type': 'application/msgpack', Accept: 'application/msgpack' },
        query: { encoding: 'json' },
        sendEncoding: 'json',
      },
      binary: false,
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      await withApp({}, async (h) => {
        const peer = await h.connect({
          ...c.connect,
          query: { ...c.connect.query, enableErrors: '' },
        });
        // A config in the read encoding is valid (an invalid one would get an error event).
        await peer.configure({ identities: { task: ['create'], marker: [] } });
        await h.app.push.publish(task('filtered out', {}, 'update'), task('kept'));
        await h.marker(1, peer);
        assert.deepEqual(seen(peer), ['task/create:kept', 'marker:1']);
        for (const e of peer.client.events) assert.equal(e.binary, c.binary);
        const expected = c.binary ? 'application/msgpack' : 'application/json';
        assert.equal(peer.session().encodings.write, expected);
      });
    });
  }

  it('a config in the other encoding is invalid', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect({
        headers: { 'Content-Type': 'application/msgpack' },
        query: { enableErrors: '1' },
        sendEncoding: 'json',
      });
      peer.client.sendConfig({ identities: { task: [] } });
      const [error] = await peer.client.waitForEvents(1, WAIT_MS);
      assert.equal(error?.type, 'error');
      assert.equal(peer.session().pushConfig, undefined);
    });
  });
});

describe('§4 the push config chooses identities and types', () => {
  it('listed types only; an empty list is every type; other identities are out', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect();
      await peer.configure({ identities: { task: ['create', 'delete'], user: [], marker: [] } });
      await h.app.push.publish(
        task('1'),
        task('2', {}, 'update'),
        task('3', {}, 'delete'),
        { identity: 'user', type: 'update', entity: { name: '4' } },
        { identity: 'user', type: 'anything', entity: { name: '5' } },
        { identity: 'project', type: 'create', entity: { name: '6' } },
      );
      await h.marker(1, peer);
      assert.deepEqual(seen(peer), [
        'task/create:1',
        'task/delete:3',
        'user/update:4',
        'user/anything:5',
        'marker:1',
      ]);
    });
  });

  it('no config, an absent or an empty `identities`: every event passes', async () => {
    await withApp({}, async (h) => {
      const none = await h.connect();
      const absent = await h.connect();
      const empty = await h.connect();
      await absent.configure({ parameters: { a: 'b' } });
      await empty.configure({ identities: {} });
      await h.app.push.publish(task('1'), { identity: 'user', type: 'x', entity: { name: '2' } });
      await h.marker(1, none, absent, empty);
      for (const peer of [none, absent, empty]) {
        assert.deepEqual(seen(peer), ['task/create:1', 'user/x:2', 'marker:1']);
      }
    });
  });

  it('a new config replaces the previous one entirely', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect();
      await peer.configure({
        identities: { task: [], marker: [] },
        filters: { task: 'name == "only-this"' },
      });
      await h.app.push.publish(task('other'), task('only-this'));
      await h.marker(1, peer);
      // The new config has no filter and does not list task: the old filter and identity are gone.
      await peer.configure({ identities: { user: [], marker: [] } });
      await h.app.push.publish(task('only-this'), {
        identity: 'user',
        type: 'create',
        entity: { name: 'u' },
      });
      await h.marker(2, peer);
      await peer.configure({ identities: { task: [], marker: [] } });
      await h.app.push.publish(task('other'));
      await h.marker(3, peer);
      assert.deepEqual(seen(peer), [
        'task/create:only-this',
        'marker:1',
        'user/create:u',
        'marker:2',
        'task/create:other',
        'marker:3',
      ]);
    });
  });

  it("parameters are merged into the session for its life, as bahamut merges them; an absent one is ''", async () => {
    const reads: Array<[string, string, readonly string[], string]> = [];
    const plugin = dispatchPlugin({
      shouldDispatch(session, event) {
        if (event.identity === 'marker') return true;
        reads.push([
          session.parameter('namespace'),
          session.parameter('keep'),
          session.parameters('namespace'),
          session.parameter('absent'),
        ]);
        return session.parameter('namespace') === '/acme';
      },
    });
    await withApp({ plugins: [plugin] }, async (h) => {
      const peer = await h.connect({ query: { namespace: '/from-query', keep: 'kept' } });
      await h.app.push.publish(task('before'));
      await h.marker(1, peer);
      await peer.configure({ parameters: { namespace: ['/acme', '/other'] } });
      assert.equal(peer.session().parameter('namespace'), '/acme');
      await h.app.push.publish(task('after'));
      await h.marker(2, peer);
      // A config without parameters keeps what the earlier one merged (bahamut's session keeps it).
      await peer.configure({ identities: {} });
      await h.app.push.publish(task('kept'));
      await h.marker(3, peer);
      // A config naming a parameter replaces that one's values only.
      await peer.configure({ parameters: { namespace: '/b' } });
      await h.app.push.publish(task('replaced'));
      await h.marker(4, peer);
      assert.deepEqual(seen(peer), [
        'marker:1',
        'task/create:after',
        'marker:2',
        'task/create:kept',
        'marker:3',
        'marker:4',
      ]);
      assert.deepEqual(reads, [
        ['/from-query', 'kept', ['/from-query'], ''],
        ['/acme', 'kept', ['/acme', '/other'], ''],
        ['/acme', 'kept', ['/acme', '/other'], ''],
        ['/b', 'kept', ['/b'], ''],
      ]);
      assert.deepEqual(peer.session().parameters('absent'), []);
    });
  });

  it('parameters.token renews session.token; onTokenRenewal hooks hear each change, in order, and a throw closes with 1008', async () => {
    const heard: string[] = [];
    const gate = deferred();
    const plugin: Plugin = {
      name: 'renewals',
      async onTokenRenewal(session, token) {
        heard.push(`${token}:${session.token}`);
        // The first renewal waits: the second must not overtake it.
        if (token === 'second') await gate.promise;
        if (token === 'revoked') throw new Error('no longer valid: revoked');
      },
    };
    await withApp({ plugins: [plugin] }, async (h) => {
      const peer = await h.connect({ query: { token: 'first' } });
      const session = peer.session();
      // The harness finds a session by its token, which a renewal changes: wait on this one.
      const configure = async (config: unknown): Promise<void> => {
        const previous = session.pushConfig;
        peer.client.sendConfig(config);
        await waitFor(() => session.pushConfig !== previous, {
          timeout: WAIT_MS,
          message: `the server did not apply ${JSON.stringify(config)}`,
        });
      };
      await configure({ parameters: { token: 'first', other: 'x' } });
      await configure({ parameters: { token: 'second' } });
      assert.equal(session.token, 'second');
      assert.equal(session.parameter('token'), 'second');
      await configure({ identities: {} });
      assert.equal(session.token, 'second', 'a config without parameters.token keeps it');
      peer.client.sendConfig({ parameters: { token: 'revoked' } });
      await waitFor(() => session.token === 'revoked', {
        timeout: WAIT_MS,
        message: 'the revoked token never reached the session',
      });
      assert.deepEqual(heard, ['second:second'], 'the later renewal waits for the earlier one');
      gate.resolve();
      const closed = await withTimeout(peer.client.closed, WAIT_MS, 'not closed');
      // A plain error's message may quote the token: the reason is fixed.
      assert.deepEqual(closed, { code: 1008, reason: 'token renewal refused' });
      assert.deepEqual(heard, ['second:second', 'revoked:revoked']);
    });
  });

  it('a key the server does not know is ignored, as bahamut ignores it: the rest of the config applies', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect({ query: { enableErrors: 'true' } });
      await peer.configure({
        identities: { task: [], marker: [] },
        since: 'a position',
        future: { nested: [1, 2] },
      });
      await h.app.push.publish(task('t'), { identity: 'user', type: 'create', entity: {} });
      await h.marker(1, peer);
      assert.deepEqual(seen(peer), ['task/create:t', 'marker:1']);
      assert.equal(h.app.push.stats().invalidConfigs, 0);
    });
  });

  it('a filter passes only the events of its identity whose entity matches', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect({ query: { encoding: 'msgpack' } });
      await peer.configure({
        identities: { task: [], user: [], marker: [] },
        filters: { task: 'status == "open" and priority > 2' },
      });
      await h.app.push.publish(
        task('open-high', { status: 'open', priority: 3 }),
        task('open-low', { status: 'open', priority: 1 }),
        task('closed-high', { status: 'closed', priority: 5 }),
        task('no-fields'),
        { identity: 'user', type: 'create', entity: { name: 'unfiltered' } },
      );
      await h.marker(1, peer);
      assert.deepEqual(seen(peer), ['task/create:open-high', 'user/create:unfiltered', 'marker:1']);
    });
  });
});

describe('§4 an invalid push config', () => {
  const invalid: Array<{ name: string; config: unknown; description: RegExp; data?: object }> = [
    {
      name: 'a filter naming an identity that is not declared',
      config: { identities: { task: [] }, filters: { user: 'name == "x"' } },
      description: /user/,
      data: { identity: 'user' },
    },
    {
      name: 'a filter that does not parse',
      config: { identities: { task: [] }, filters: { task: 'name ==' } },
      description: /task/,
    },
    { name: 'a wrong shape', config: { identities: ['task'] }, description: /identities/ },
  ];

  for (const encoding of ['json', 'msgpack'] as const) {
    for (const c of invalid) {
      it(`${c.name} (${encoding}): an error event, then nothing until a valid config`, async () => {
        await withApp({}, async (h) => {
          const peer = await h.connect({ query: { encoding, enableErrors: 'true' } });
          const witness = await h.connect();
          peer.client.sendConfig(c.config);
          const [error] = await peer.client.waitForEvents(1, WAIT_MS);
          assert.ok(error);
          assert.equal(error.binary, encoding === 'msgpack', 'in the session encoding');
          assert.equal(error.type, 'error');
          assert.equal(error.identity, '');
          assert.equal(error.encoding, `application/${encoding}`);
          const entity = error.entity as Record<string, unknown>;
          assert.equal(entity.code, 400);
          assert.equal(entity.title, 'Bad Request');
          assert.equal(entity.subject, 'pushwire');
          assert.match(entity.description as string, c.description);
          if (c.data !== undefined)
            assert.deepEqual(entity.data, { ...c.data, ...(entity.data as object) });
          assert.equal(peer.session().pushConfig, undefined);

          // In the error state: an event dispatched to everyone (the witness gets it) is not sent.
          await h.app.push.publish(task('while-in-error'));
          await witness.client.waitForEvents(1, WAIT_MS);
          await peer.configure({ identities: { task: [], marker: [] } });
          await h.app.push.publish(task('after-fix'));
          await h.marker(1, peer);
          assert.deepEqual(seen(peer), ['/error', 'task/create:after-fix', 'marker:1']);
          assert.ok(h.app.push.stats().invalidConfigs >= 1);
        });
      });
    }
  }

  it('a message that does not decode is invalid too', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect({ query: { enableErrors: '' } });
      peer.client.ws.send('{"identities": ');
      const [error] = await peer.client.waitForEvents(1, WAIT_MS);
      const entity = error?.entity as Record<string, unknown>;
      assert.equal(error?.type, 'error');
      assert.equal(entity.code, 400);
      assert.match(entity.description as string, /decode/);
    });
  });

  for (const encoding of ['json', 'msgpack'] as const) {
    it(`without enableErrors (${encoding}), the server closes with 1003`, async () => {
      const stops: SessionStopInfo[] = [];
      const plugin: Plugin = { onSessionStop: (_s, info) => void stops.push(info) };
      await withApp({ plugins: [plugin] }, async (h) => {
        const peer = await h.connect({ query: { encoding } });
        peer.client.sendConfig({ identities: { task: [] }, filters: { user: 'a == 1' } });
        const closed = await withTimeout(peer.client.closed, WAIT_MS, 'no close');
        assert.equal(closed.code, 1003);
        assert.deepEqual(peer.client.events, [], 'no error event without enableErrors');
        await waitFor(() => h.app.push.sessions().length === 0, {
          timeout: WAIT_MS,
          message: 'session not unregistered',
        });
        assert.equal(stops[0]?.code, 1003);
      });
    });
  }
});

describe('§5 dispatch, step 2: events older than the session are not sent', () => {
  it('an event timestamped before the session started is skipped', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect();
      const start = peer.session().startTime.getTime();
      await h.app.push.publish(
        { ...task('old'), timestamp: new Date(start - 60_000) },
        { ...task('just-before'), timestamp: new Date(start - 1) },
        { ...task('at-start'), timestamp: new Date(start) },
        { ...task('iso-future'), timestamp: new Date(start + 1000).toISOString() },
      );
      await h.marker(1, peer);
      assert.deepEqual(seen(peer), ['task/create:at-start', 'task/create:iso-future', 'marker:1']);
    });
  });
});

describe('§5 dispatch, step 3: relatedIdentities', () => {
  it('an event passes through a related identity and its filter', async () => {
    const plugin = dispatchPlugin({
      relatedIdentities: (identity) => (identity === 'task' ? ['project'] : []),
    });
    await withApp({ plugins: [plugin] }, async (h) => {
      const peer = await h.connect();
      await peer.configure({
        identities: { project: [], marker: [] },
        filters: { project: 'status == "open"' },
      });
      await h.app.push.publish(
        task('open-task', { status: 'open' }),
        task('closed-task', { status: 'closed' }),
        { identity: 'user', type: 'create', entity: { name: 'user', status: 'open' } },
        { identity: 'project', type: 'create', entity: { name: 'open-project', status: 'open' } },
      );
      await h.marker(1, peer);
      assert.deepEqual(seen(peer), [
        'task/create:open-task',
        'project/create:open-project',
        'marker:1',
      ]);
    });
  });
});

describe('§5 dispatch, step 4: shouldDispatch', () => {
  it('true sends, false skips, per session', async () => {
    const plugin = dispatchPlugin({
      shouldDispatch: (session, event) => event.identity === 'marker' || session.token !== 'muted',
    });
    await withApp({ plugins: [plugin] }, async (h) => {
      const muted = await h.connect({ query: { token: 'muted' } });
      const open = await h.connect();
      await h.app.push.publish(task('1'));
      await h.marker(1, muted, open);
      assert.deepEqual(seen(muted), ['marker:1']);
      assert.deepEqual(seen(open), ['task/create:1', 'marker:1']);
    });
  });

  it('a throw counts as false for that session only, and is logged', async () => {
    const { logger, lines } = memoryLogger();
    const plugin = dispatchPlugin({
      shouldDispatch(session, event) {
        if (session.token === 'boom' && event.identity === 'task') throw new Error('boom');
        return true;
      },
    });
    await withApp({ plugins: [plugin], options: { logger } }, async (h) => {
      const boom = await h.connect({ query: { token: 'boom' } });
      const others = [await h.connect(), await h.connect({ query: { encoding: 'msgpack' } })];
      await h.app.push.publish(task('1'), task('2'));
      await h.marker(1, boom, ...others);
      assert.deepEqual(seen(boom), ['marker:1']);
      for (const peer of others)
        assert.deepEqual(seen(peer), ['task/create:1', 'task/create:2', 'marker:1']);
      assert.equal(
        lines.filter((l) => l.level === 'warn' && /shouldDispatch/.test(l.msg)).length,
        2,
      );
      assert.equal(
        h.app.push.stats().dispatchErrors,
        0,
        'the event was not dropped for the others',
      );
    });
  });

  it('only true sends: a truthy answer is no; with several predicates, all must say true', async () => {
    const truthy = definePlugin({
      dispatch(ctx, next) {
        // Typed boolean, but JavaScript callers can return anything.
        const marker = ctx.event.identity === 'marker';
        ctx.predicates.push(
          (session) => marker || (session.token === 'truthy' ? (1 as never) : true),
        );
        return next();
      },
    });
    const second = dispatchPlugin({
      shouldDispatch: (session, event) =>
        event.identity === 'marker' || session.token !== 'second-no',
    });
    await withApp({ plugins: [truthy, second] }, async (h) => {
      const yes = await h.connect();
      const one = await h.connect({ query: { token: 'truthy' } });
      const no = await h.connect({ query: { token: 'second-no', encoding: 'msgpack' } });
      await h.app.push.publish(task('1'), task('2'));
      await h.marker(1, yes, one, no);
      assert.deepEqual(seen(yes), ['task/create:1', 'task/create:2', 'marker:1']);
      assert.deepEqual(seen(one), ['marker:1']);
      assert.deepEqual(seen(no), ['marker:1']);
    });
  });

  it('an async shouldDispatch decides too, and keeps the order of events', async () => {
    const gate = deferred();
    const { logger, lines } = memoryLogger();
    const plugin = dispatchPlugin({
      async shouldDispatch(session, event) {
        if ((event.entity as { name?: string }).name === '1') await gate.promise;
        await Promise.resolve();
        if (event.identity === 'marker') return true;
        if (session.token === 'rejects') throw new Error('async failure');
        return session.token !== 'muted';
      },
    });
    await withApp({ plugins: [plugin], options: { logger } }, async (h) => {
      const muted = await h.connect({ query: { token: 'muted' } });
      const rejects = await h.connect({ query: { token: 'rejects' } });
      const peers = [await h.connect(), await h.connect({ query: { encoding: 'msgpack' } })];
      await h.app.push.publish(task('1'), task('2'), task('3'));
      gate.resolve();
      await h.marker(1, muted, rejects, ...peers);
      assert.deepEqual(seen(rejects), ['marker:1'], 'a rejection counts as false');
      assert.equal(lines.filter((l) => /shouldDispatch/.test(l.msg)).length, 3);
      for (const peer of peers) {
        assert.deepEqual(seen(peer), [
          'task/create:1',
          'task/create:2',
          'task/create:3',
          'marker:1',
        ]);
      }
      assert.deepEqual(seen(muted), ['marker:1']);
    });
  });

  it('summarizeEvent runs once per event whatever the number of sessions', async () => {
    const summaries: object[] = [];
    const received: object[] = [];
    const plugin = dispatchPlugin<{ n: number }>({
      summarizeEvent(event) {
        const summary = { n: summaries.length, identity: event.identity };
        summaries.push(summary);
        return summary;
      },
      shouldDispatch(_session, _event, summary) {
        received.push(summary);
        return true;
      },
    });
    await withApp({ plugins: [plugin] }, async (h) => {
      const peers = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          h.connect(i % 2 ? { query: { encoding: 'msgpack' } } : {}),
        ),
      );
      await h.app.push.publish(task('1'), task('2'));
      await h.marker(1, ...peers);
      assert.equal(summaries.length, 3, 'two events and the marker');
      assert.equal(received.length, 18, 'one check per (event, session)');
      for (let i = 0; i < 3; i++) {
        assert.equal(received.filter((s) => s === summaries[i]).length, 6);
      }
    });
  });
});

describe('§5 dispatch, step 5: each event is encoded at most once per encoding', () => {
  it('six JSON and six MessagePack sessions cost one encoding of each per event', async () => {
    const calls = { json: 0, msgpack: 0 };
    const proto = WireEvent.prototype as unknown as {
      toJson(): string;
      toMsgpack(): Uint8Array;
    };
    const { toJson, toMsgpack } = proto;
    proto.toJson = function (this: WireEvent) {
      calls.json++;
      return toJson.call(this);
    };
    proto.toMsgpack = function (this: WireEvent) {
      calls.msgpack++;
      return toMsgpack.call(this);
    };
    try {
      await withApp({}, async (h) => {
        const peers = await Promise.all(
          Array.from({ length: 12 }, (_, i) =>
            h.connect(i % 2 ? { query: { encoding: 'msgpack' } } : {}),
          ),
        );
        await h.app.push.publish(task('1'), task('2'));
        await Promise.all(peers.map((p) => p.client.waitForEvents(2, WAIT_MS)));
        assert.deepEqual(calls, { json: 2, msgpack: 2 });
      });
    } finally {
      proto.toJson = toJson;
      proto.toMsgpack = toMsgpack;
    }
  });
});

describe('§5 dispatch in batches: the events of one turn share one walk over the sessions', () => {
  it('a long burst with per-session configs: each session gets its own events, in order', async () => {
    // 70 events in one turn: more than one batch (32), alternating types, half matching a filter.
    const burst = Array.from({ length: 70 }, (_, i) =>
      task(String(i), { n: i }, i % 2 === 0 ? 'create' : 'update'),
    );
    await withApp({}, async (h) => {
      const everything = await h.connect();
      const updates = await h.connect({ query: { encoding: 'msgpack' } });
      const bigOnes = await h.connect();
      const nothing = await h.connect({ query: { encoding: 'msgpack' } });
      await updates.configure({ identities: { task: ['update'], marker: [] } });
      await bigOnes.configure({
        identities: { task: [], marker: [] },
        filters: { task: 'n >= 50' },
      });
      await nothing.configure({ identities: { marker: [] } });
      const infos: Array<{ considered: number; sent: number; filtered: number }> = [];
      const remove = h.app.push.onDispatch((info) => infos.push(info));
      await h.app.push.publish(...burst);
      await h.marker(1, everything, updates, bigOnes, nothing);
      remove();
      const names = (keep: (i: number) => boolean): string[] =>
        burst.flatMap((e, i) => (keep(i) ? [`task/${e.type}:${i}`] : []));
      assert.deepEqual(seen(everything), [...names(() => true), 'marker:1']);
      assert.deepEqual(seen(updates), [...names((i) => i % 2 === 1), 'marker:1']);
      assert.deepEqual(seen(bigOnes), [...names((i) => i >= 50), 'marker:1']);
      assert.deepEqual(seen(nothing), ['marker:1']);
      // One report per event, counted per event: sessions that got it vs those that did not.
      assert.equal(infos.length, 71);
      for (const [i, info] of infos.slice(0, 70).entries()) {
        const sent = 1 + (i % 2 === 1 ? 1 : 0) + (i >= 50 ? 1 : 0);
        assert.deepEqual(
          { considered: info.considered, sent: info.sent, filtered: info.filtered },
          { considered: 4, sent, filtered: 4 - sent },
          `event ${i}`,
        );
      }
    });
  });

  it('a dispatch plugin that is async for some events only: every session keeps the order', async () => {
    const gate = deferred();
    const plugin = definePlugin({
      // Synchronous for most events (they join the batch at once), async for "slow" ones:
      // the events after a slow one must wait for it, not overtake it.
      dispatch(ctx, next) {
        if ((ctx.event.entity as { name?: string }).name?.startsWith('slow')) {
          return gate.promise.then(next);
        }
        return next();
      },
    });
    await withApp({ plugins: [plugin] }, async (h) => {
      const peers = [await h.connect(), await h.connect({ query: { encoding: 'msgpack' } })];
      await h.app.push.publish(task('1'), task('2'), task('slow-3'), task('4'), task('5'));
      await h.app.push.publish(task('6'));
      // Events before the slow one are out already; nothing after it is.
      await Promise.all(peers.map((p) => p.client.waitForEvents(2, WAIT_MS)));
      gate.resolve();
      await h.marker(1, ...peers);
      for (const peer of peers) {
        assert.deepEqual(seen(peer), [
          'task/create:1',
          'task/create:2',
          'task/create:slow-3',
          'task/create:4',
          'task/create:5',
          'task/create:6',
          'marker:1',
        ]);
      }
    });
  });

  it('a synchronous dispatchPlugin keeps the batch: a burst is checked session by session', async () => {
    // Session-major calls prove that the three events were fanned out in one walk; had the
    // plugin sent each event through the one-at-a-time async path, they would be event-major.
    const calls: string[] = [];
    const plugin = dispatchPlugin({
      summarizeEvent: (event) => (event.entity as { name?: string }).name,
      shouldDispatch(session, _event, name) {
        if (name !== undefined) calls.push(`${session.token ?? ''}:${name}`);
        return true;
      },
    });
    await withApp({ plugins: [plugin] }, async (h) => {
      const a = await h.connect({ query: { token: 'a' } });
      const b = await h.connect({ query: { token: 'b', encoding: 'msgpack' } });
      await h.app.push.publish(task('1'), task('2'), task('3'));
      await h.marker(1, a, b);
      assert.deepEqual(calls, ['a:1', 'a:2', 'a:3', 'b:1', 'b:2', 'b:3']);
      assert.deepEqual(seen(b), ['task/create:1', 'task/create:2', 'task/create:3', 'marker:1']);
    });
  });

  it('an event that cannot be encoded for JSON in a batch: only it is skipped, counted once', async () => {
    // Its entity bytes are not MessagePack: JSON sessions cannot get it (their batch falls back
    // to one frame per event), MessagePack sessions get the publisher's bytes as they are.
    const publication = (entity: Uint8Array): Uint8Array =>
      encodePublication(
        { topic: 'events' },
        encodeMsgpackEvent('task', 'create', entity, new Date(Date.now() + 1000)),
      );
    const bus = new LocalPubSub();
    await withApp({ pubsub: bus }, async (h) => {
      const json = [await h.connect(), await h.connect()];
      const binary = await h.connect({ query: { encoding: 'msgpack' } });
      // The test client decodes every entity; this one reads the raw frames instead.
      binary.client.ws.removeAllListeners('message');
      const frames = recordFrames(binary.client.ws);
      const before = h.app.push.stats().eventsUndecodable;
      // One turn: the three publications are fanned out as one batch.
      void bus.publish('events', publication(encode({ name: '1' })));
      void bus.publish('events', publication(Uint8Array.from([0xc1])));
      void bus.publish('events', publication(encode({ name: '3' })));
      await h.marker(1, ...json);
      for (const peer of json) {
        assert.deepEqual(seen(peer), ['task/create:1', 'task/create:3', 'marker:1']);
      }
      await waitFor(() => frames.length === 4, {
        timeout: WAIT_MS,
        message: 'the MessagePack session did not get the three events and the marker',
      });
      const entities = frames.map((f) => (decode(f.data) as { entity: Uint8Array }).entity);
      assert.deepEqual([...(entities[1] ?? [])], [0xc1], "the publisher's bytes, as they are");
      assert.equal(h.app.push.stats().eventsUndecodable - before, 1);
    });
  });

  it('directPush after publish in the same turn: the published event is written first', async () => {
    await withApp({}, async (h) => {
      const peer = await h.connect();
      const session = peer.session();
      // LocalPubSub delivers before publish() resolves; the batch would flush only at the next
      // tick, after this directPush, if directPush did not flush it first.
      await h.app.push.publish(task('published'));
      session.directPush(task('direct'));
      await h.marker(1, peer);
      assert.deepEqual(seen(peer), ['task/create:published', 'task/create:direct', 'marker:1']);
    });
  });
});

describe('§5 directPush sends to one session through steps 2 and 3', () => {
  for (const encoding of ['json', 'msgpack'] as const) {
    it(`only that session, filtered by its timestamp and push config (${encoding})`, async () => {
      // A shouldDispatch that refuses every task: directPush does not go through step 4.
      const plugin = dispatchPlugin({ shouldDispatch: (_s, e) => e.identity !== 'task' });
      await withApp({ plugins: [plugin] }, async (h) => {
        const target = await h.connect({ query: { encoding } });
        const bystander = await h.connect();
        await target.configure({ identities: { task: ['create'], marker: [] } });
        const session = target.session();
        session.directPush(
          task('wrong-type', {}, 'update'),
          { ...task('too-old'), timestamp: new Date(session.startTime.getTime() - 1) },
          { identity: 'user', type: 'create', entity: { name: 'not-configured' } },
          task('sent'),
        );
        session.directPush(task('sent-too'));
        await target.client.waitForEvents(2, WAIT_MS);
        await h.marker(1, target, bystander);
        assert.deepEqual(seen(target), ['task/create:sent', 'task/create:sent-too', 'marker:1']);
        for (const e of target.client.events) assert.equal(e.binary, encoding === 'msgpack');
        assert.deepEqual(seen(bystander), ['marker:1']);
        assert.throws(
          () => session.directPush({ identity: 'task', type: '', entity: {} }),
          InvalidEventError,
        );
      });
    });
  }
});

describe('§6 closing', () => {
  it('close() flushes what was sent, then closes every session with 1001', async () => {
    const stops: number[] = [];
    const plugin: Plugin = { onSessionStop: (_s, info) => void stops.push(info.code) };
    await withApp({ plugins: [plugin] }, async (h) => {
      const peers = [await h.connect(), await h.connect({ query: { encoding: 'msgpack' } })];
      const events = Array.from({ length: 20 }, (_, i) => task(String(i)));
      await h.app.push.publish(...events);
      await h.app.push.close();
      for (const peer of peers) {
        const closed = await withTimeout(peer.client.closed, WAIT_MS, 'no close');
        assert.equal(closed.code, 1001);
        assert.equal(peer.client.events.length, 20, 'buffered events flushed before the close');
      }
      assert.equal(h.app.push.sessions().length, 0);
      assert.deepEqual(stops, [1001, 1001]);
      await h.app.push.close(); // idempotent
    });
  });

  it('a client that closes normally is unregistered with 1000', async () => {
    const stopped = deferred<SessionStopInfo>();
    const plugin: Plugin = { onSessionStop: (_s, info) => stopped.resolve(info) };
    await withApp({ plugins: [plugin] }, async (h) => {
      const peer = await h.connect();
      peer.client.ws.close(1000, 'bye');
      const info = await withTimeout(stopped.promise, WAIT_MS, 'onSessionStop');
      assert.deepEqual(info, { code: 1000, reason: 'bye' });
      assert.equal(h.app.push.sessions().length, 0);
    });
  });

  it('a client message larger than maxPayload closes with 1009', async () => {
    await withApp({ options: { maxPayload: 1024 } }, async (h) => {
      const peer = await h.connect();
      // Just under the bound is a config like any other.
      await peer.configure({ parameters: { pad: 'x'.repeat(900) } });
      peer.client.sendConfig({ parameters: { pad: 'x'.repeat(2048) } });
      const closed = await withTimeout(peer.client.closed, WAIT_MS, 'no close');
      assert.equal(closed.code, 1009);
      await waitFor(() => h.app.push.sessions().length === 0, {
        timeout: WAIT_MS,
        message: 'session not unregistered',
      });
    });
  });

  it('a plugin may close a session by policy with 1008', async () => {
    const plugin: Plugin = {
      onSessionStart: (session) => {
        if (session.token === 'evict') session.close(1008, 'evicted');
      },
    };
    await withApp({ plugins: [plugin] }, async (h) => {
      const peer = await h.connect({ query: { token: 'evict' } });
      assert.deepEqual(await withTimeout(peer.client.closed, WAIT_MS, 'no close'), {
        code: 1008,
        reason: 'evicted',
      });
    });
  });
});

describe('§6 keepalive', () => {
  it('a client that does not answer pings is terminated and unregistered', async () => {
    const stops: Array<[string, number]> = [];
    const plugin: Plugin = { onSessionStop: (s, info) => void stops.push([s.token, info.code]) };
    await withApp({ plugins: [plugin], options: { pingInterval: 50 } }, async (h) => {
      const healthy = await h.connect();
      const silent = new WebSocket(`${h.app.wsUrl}?token=silent`, { autoPong: false });
      silent.on('error', () => undefined);
      // Counted from the start: a ping may come in the same read as the handshake's response.
      let pings = 0;
      silent.on('ping', () => pings++);
      try {
        await withTimeout(once(silent, 'open'), WAIT_MS, 'silent client did not open');
        const [code] = (await withTimeout(once(silent, 'close'), WAIT_MS, 'not terminated')) as [
          number,
        ];
        assert.equal(code, 1006, 'terminated, not closed');
        assert.ok(pings >= 1, 'it was pinged first');
        await waitFor(() => stops.some(([token]) => token === 'silent'), {
          timeout: WAIT_MS,
          message: 'silent session not unregistered',
        });
        // The healthy client answered the same pings: still registered and served.
        assert.deepEqual(
          h.app.push.sessions().map((s) => s.token),
          [healthy.token],
        );
        await h.marker(1, healthy);
      } finally {
        silent.terminate();
      }
    });
  });
});

describe('§6 slow clients: a bounded outbound buffer', () => {
  const maxBufferedBytes = 256 * 1024;
  const big = 'x'.repeat(60_000);
  const frameBound = maxBufferedBytes + 64 * 1024;

  /**
   * Publishes large events in batches until the server drops one for the paused client. Each
   * batch waits for the reading client to have it, so the test never starves its own reads.
   */
  async function overflow(h: Harness, slow: Peer, fast: Peer): Promise<number> {
    const socket = serverSocket(slow.session());
    let published = 0;
    let maxSeen = 0;
    // Enough to fill the kernel's buffers on both ends, then the session's bound.
    while (h.app.push.stats().dropped === 0 && slow.session().isOpen) {
      assert.ok(published < 2_000, 'no drop after 120 MB: the buffer is not bounded');
      await h.app.push.publish(
        ...Array.from({ length: 16 }, (_, i) => task(String(published + i), { big })),
      );
      published += 16;
      maxSeen = Math.max(maxSeen, socket.writableLength);
      await fast.client.waitForEvents(published, WAIT_MS);
    }
    assert.ok(maxSeen <= frameBound, `server buffered ${maxSeen} bytes`);
    return published;
  }

  it('drop (default): events past the bound are dropped and counted; the session goes on', async () => {
    await withApp({ options: { maxBufferedBytes } }, async (h) => {
      const slow = await h.connect();
      const fast = await h.connect();
      const rawSocket = (slow.client.ws as unknown as { _socket: Socket })._socket;
      rawSocket.pause();
      const published = await overflow(h, slow, fast);
      assert.ok(serverSocket(slow.session()).writableLength <= frameBound);
      const dropped = h.app.push.stats().dropped;
      assert.ok(dropped > 0);
      assert.equal(slow.session().droppedEvents, dropped, 'only the slow session dropped');
      rawSocket.resume();
      // The marker must not meet a full buffer itself: wait for the backlog to drain.
      await waitFor(() => serverSocket(slow.session()).writableLength === 0, {
        timeout: WAIT_MS,
        message: 'the backlog did not drain once the client read again',
      });
      await h.marker(1, slow, fast);
      // Every event was either written or dropped and counted; the fast client lost none.
      assert.equal(slow.client.events.length - 1 + dropped, published);
      assert.equal(fast.client.events.length - 1, published);
      const names = slow.client.events
        .slice(0, -1)
        .map((e) => Number((e.entity as { name: string }).name));
      assert.deepEqual(
        names,
        [...names].sort((a, b) => a - b),
        'the ones written stay in order',
      );
    });
  });

  it("'close': the slow session is closed with 1008", async () => {
    const options = { maxBufferedBytes, slowConsumerPolicy: 'close' as const };
    await withApp({ options }, async (h) => {
      const slow = await h.connect();
      const fast = await h.connect();
      const rawSocket = (slow.client.ws as unknown as { _socket: Socket })._socket;
      rawSocket.pause();
      await overflow(h, slow, fast);
      rawSocket.resume();
      const closed = await withTimeout(slow.client.closed, WAIT_MS, 'slow client not closed');
      assert.equal(closed.code, 1008);
      await waitFor(() => h.app.push.sessions().length === 1, {
        timeout: WAIT_MS,
        message: 'slow session not unregistered',
      });
      await h.marker(1, fast);
    });
  });

  it("'close': the server records and reports 1008, even for a client that never reads again", async () => {
    // Issue 19: the 1008 frame waits behind the full buffer; the terminate() that follows made
    // the stats, the metrics, the logs and onSessionStop say 1006.
    const stops: SessionStopInfo[] = [];
    const logged: Array<{ msg: string; code: unknown }> = [];
    const log = (obj: object, msg?: string): void => {
      logged.push({ msg: msg ?? '', code: (obj as { code?: unknown }).code });
    };
    const logger = { debug: log, info: log, warn: log, error: log };
    const recorder = definePlugin({
      name: 'stops',
      onSessionStop: (_s, info) => void stops.push(info),
    });
    const options = { maxBufferedBytes, slowConsumerPolicy: 'close' as const, logger };
    await withApp({ options, plugins: [recorder] }, async (h) => {
      const slow = await h.connect();
      const fast = await h.connect();
      const rawSocket = (slow.client.ws as unknown as { _socket: Socket })._socket;
      rawSocket.pause();
      await overflow(h, slow, fast);
      // The client stays paused: the server ends the session on its own.
      await waitFor(() => h.app.push.sessions().length === 1, {
        timeout: WAIT_MS,
        message: 'slow session not unregistered',
      });
      assert.deepEqual(h.app.push.stats().sessionsClosed, { 1008: 1 });
      assert.deepEqual(
        stops.map((s) => s.code),
        [1008],
      );
      assert.deepEqual(
        logged.filter((l) => l.msg === 'pushwire: session closed').map((l) => l.code),
        [1008],
      );
      rawSocket.resume();
      await h.marker(1, fast);
    });
  });

  it('a burst larger than the bound, in one turn, reaches a client that reads', async () => {
    await withApp({ options: { maxBufferedBytes: 128 * 1024 } }, async (h) => {
      const peer = await h.connect();
      const burst = Array.from({ length: 24 }, (_, i) =>
        task(String(i), { big: 'y'.repeat(16_000) }),
      );
      await h.app.push.publish(...burst); // about 384 KB, dispatched in one turn
      await h.marker(1, peer);
      assert.equal(h.app.push.stats().dropped, 0);
      assert.equal(peer.client.events.length, 25);
    });
  });
});

/** A backend that fails its first `failures` publishes (Infinity: all), counting attempts. */
class FlakyPubSub implements PubSubClient {
  attempts = 0;
  readonly #inner = new LocalPubSub();
  #failures: number;
  constructor(failures: number) {
    this.#failures = failures;
  }
  get status() {
    return this.#inner.status;
  }
  connect(): Promise<void> {
    return this.#inner.connect();
  }
  disconnect(): Promise<void> {
    return this.#inner.disconnect();
  }
  subscribe(subject: string, handler: PubSubHandler) {
    return this.#inner.subscribe(subject, handler);
  }
  async publish(subject: string, payload: Uint8Array): Promise<void> {
    this.attempts++;
    if (this.#failures > 0) {
      this.#failures--;
      throw new PubSubError('the broker is busy', 'PUSH_PUBSUB_UNREACHABLE');
    }
    return this.#inner.publish(subject, payload);
  }
}

describe('publishing', () => {
  it('a backend that fails twice: publish resolves after two retries, counted', async () => {
    const pubsub = new FlakyPubSub(2);
    await withApp({ pubsub, options: { publishRetryDelay: 1 } }, async (h) => {
      const peer = await h.connect();
      await h.app.push.publish(task('persistent'));
      assert.equal(pubsub.attempts, 3);
      assert.equal(h.app.push.stats().publishRetries, 2);
      assert.equal(h.app.push.stats().publishFailures, 0);
      await peer.client.waitForEvents(1, WAIT_MS);
      assert.deepEqual(seen(peer), ['task/create:persistent']);
    });
  });

  it('a backend that always fails: publish rejects with PubSubError after 1 + 3 attempts', async () => {
    const pubsub = new FlakyPubSub(Infinity);
    await withApp({ pubsub, options: { publishRetryDelay: 1 } }, async (h) => {
      await assert.rejects(h.app.push.publish(task('lost')), (error: unknown) => {
        assert.ok(error instanceof PubSubError);
        assert.match(error.message, /4 attempts/);
        return true;
      });
      assert.equal(pubsub.attempts, 4);
      assert.equal(h.app.push.stats().publishRetries, 3);
      assert.equal(h.app.push.stats().publishFailures, 1);
    });
  });

  it('an invalid event rejects with InvalidEventError and nothing is published', async () => {
    const pubsub = new FlakyPubSub(0);
    await withApp({ pubsub }, async (h) => {
      const bad: unknown[] = [
        { identity: 'task', type: '', entity: {} },
        { identity: 'task', type: 'create' },
        { identity: 42, type: 'create', entity: {} },
        { identity: 'task', type: 'create', entity: {}, timestamp: 'not a date' },
        null,
      ];
      for (const event of bad) {
        // A valid event beside it is not published either: the call is all or nothing.
        await assert.rejects(h.app.push.publish(task('ok'), event as PushEvent), InvalidEventError);
      }
      assert.equal(pubsub.attempts, 0);
    });
  });

  it('an entity with a __proto__ key, at any depth, rejects with InvalidEventError naming it', async () => {
    // Issue 19: MessagePack decoders refuse the key, so JSON sessions (and plugins reading the
    // entity) could not have it while MessagePack sessions got it; publish() resolved.
    const pubsub = new FlakyPubSub(0);
    await withApp({ pubsub }, async (h) => {
      const cases: Array<[unknown, RegExp]> = [
        [JSON.parse('{"a":1,"__proto__":{"x":1}}'), /entity\.__proto__/],
        [{ list: [1, JSON.parse('{"b":{"__proto__":2}}')] }, /entity\.list\[1\]\.b\.__proto__/],
      ];
      for (const [entity, path] of cases) {
        await assert.rejects(
          h.app.push.publish({ identity: 'task', type: 'create', entity }),
          (error: unknown) => error instanceof InvalidEventError && path.test(error.message),
        );
      }
      // A string that merely says __proto__ is an ordinary value.
      await h.app.push.publish(task('__proto__', { note: '__proto__' }));
      assert.equal(pubsub.attempts, 1);
    });
  });

  it('an event from the topic whose entity has a __proto__ key: undecodable for every encoding, counted', async () => {
    const warnings: string[] = [];
    const warn = (_obj: object, msg?: string): void => void warnings.push(msg ?? '');
    const logger = { debug: () => undefined, info: () => undefined, warn, error: warn };
    const tenant = tenantIsolationPlugin();
    const claims = authPlugin((session) => {
      session.setClaims(['namespace=/acme']);
      return 'ok';
    });
    for (const plugins of [[], [claims, tenant]]) {
      await withApp({ options: { logger }, plugins }, async (h) => {
        const json = await h.connect();
        const msgpack = await h.connect({ query: { encoding: 'msgpack' } });
        // As a bahamut server (or an older one of ours) would publish it.
        const entity = encode(JSON.parse('{"namespace":"/acme","__proto__":{"x":1}}'));
        const event = encodeMsgpackEvent('task', 'create', entity, new Date(Date.now() + 1000));
        await h.app.pubsub.publish('events', encodePublication({ topic: 'events' }, event));
        await h.app.push.publish({
          identity: 'marker',
          type: 'create',
          entity: { marker: 1, namespace: '/acme' },
        });
        await Promise.all(
          [json, msgpack].map((p) =>
            waitFor(() => p.client.events.some((e) => isMarker(e, 1)), {
              timeout: WAIT_MS,
              message: `the marker did not reach ${p.token}`,
            }),
          ),
        );
        assert.deepEqual(seen(json), ['marker:1'], `plugins: ${plugins.length}`);
        assert.deepEqual(seen(msgpack), ['marker:1'], `plugins: ${plugins.length}`);
        assert.equal(h.app.push.stats().eventsUndecodable, 1, `plugins: ${plugins.length}`);
      });
    }
    assert.equal(warnings.filter((w) => /does not decode/.test(w)).length, 2);
  });

  it('a publish plugin that answers false drops the event quietly; a throw rejects', async () => {
    const plugin = publishPlugin((event) => {
      if (event.identity === 'forbidden') throw new Error('not this one');
      return event.identity !== 'secret';
    });
    await withApp({ plugins: [plugin] }, async (h) => {
      const peer = await h.connect();
      await h.app.push.publish({ identity: 'secret', type: 'create', entity: {} }, task('public'));
      await assert.rejects(
        h.app.push.publish({ identity: 'forbidden', type: 'create', entity: {} }),
        /not this one/,
      );
      await h.marker(1, peer);
      assert.deepEqual(seen(peer), ['task/create:public', 'marker:1']);
    });
  });

  it('`ready` rejects when the backend cannot connect; unawaited, nothing is unhandled', async () => {
    class Unreachable extends LocalPubSub {
      override async connect(): Promise<void> {
        throw new PubSubError('no broker', 'PUSH_PUBSUB_UNREACHABLE');
      }
    }
    const awaited = pushMiddleware(new Unreachable(), 'events', []);
    await assert.rejects(awaited.ready, /no broker/);
    await awaited.close();

    const { logger, lines } = memoryLogger();
    const ignored = pushMiddleware(new Unreachable(), 'events', { logger });
    await waitFor(() => lines.some((l) => l.level === 'error' && /subscription/.test(l.msg)), {
      timeout: WAIT_MS,
      message: 'the failure was not logged',
    });
    // Unhandled rejections are reported after the microtasks of a turn: let one turn pass.
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(unhandled, []);
    await ignored.close();
  });
});

describe('plugins: lifecycle hooks and the chain order', () => {
  it('onSessionStart and onSessionStop run for each session; a throwing hook is only logged', async () => {
    const { logger, lines } = memoryLogger();
    const events: string[] = [];
    const plugins: Plugin[] = [
      {
        name: 'throws',
        onSessionStart() {
          throw new Error('start hook failed');
        },
        async onSessionStop() {
          throw new Error('stop hook failed');
        },
      },
      {
        name: 'records',
        onSessionStart: (s) => void events.push(`start:${s.token}:${String(s.isOpen)}`),
        onSessionStop: (s, info) =>
          void events.push(`stop:${s.token}:${info.code}:${String(s.signal.aborted)}`),
      },
    ];
    await withApp({ plugins, options: { logger } }, async (h) => {
      const peer = await h.connect({ query: { token: 'hooked' } });
      await h.marker(1, peer);
      assert.deepEqual(events, ['start:hooked:true']);
      peer.client.ws.close(1000);
      await waitFor(() => events.length === 2, { timeout: WAIT_MS, message: 'onSessionStop' });
      assert.deepEqual(events, ['start:hooked:true', 'stop:hooked:1000:true']);
      await waitFor(() => lines.filter((l) => /hook failed/.test(l.msg)).length === 2, {
        timeout: WAIT_MS,
        message: 'both hook failures logged',
      });
    });
  });

  it('the first registered plugin is outermost in every phase', async () => {
    const trace: string[] = [];
    const tracer = (name: string): Plugin =>
      definePlugin({
        name,
        async session(_ctx, next) {
          trace.push(`session ${name}>`);
          await next();
          trace.push(`session <${name}`);
        },
        async dispatch(_ctx, next) {
          trace.push(`dispatch ${name}>`);
          await next();
          trace.push(`dispatch <${name}`);
        },
        async publish(_ctx, next) {
          trace.push(`publish ${name}>`);
          await next();
          trace.push(`publish <${name}`);
        },
      });
    await withApp({ plugins: [tracer('A'), tracer('B')] }, async (h) => {
      const peer = await h.connect();
      await h.app.push.publish(task('1'));
      await peer.client.waitForEvents(1, WAIT_MS);
      await waitFor(() => trace.length === 12, { timeout: WAIT_MS, message: 'trace' });
      for (const phase of ['session', 'publish', 'dispatch']) {
        assert.deepEqual(
          trace.filter((t) => t.startsWith(phase)),
          [`${phase} A>`, `${phase} B>`, `${phase} <B`, `${phase} <A`],
        );
      }
    });
  });
});

describe('load: 200 sessions, mixed encodings, 100 events each, in publish order', () => {
  it('every session receives every event in order, in its encoding', async () => {
    await withApp({}, async (h) => {
      const modes: ConnectOptions[] = [
        {},
        { query: { encoding: 'msgpack' } },
        { headers: { Accept: 'application/msgpack' } },
        { headers: { 'Content-Type': 'application/msgpack', Accept: 'application/json' } },
      ];
      const peers: Array<{ peer: Peer; binary: boolean }> = [];
      for (let batch = 0; batch < 4; batch++) {
        const connected = await Promise.all(
          Array.from({ length: 50 }, (_, i) => h.connect(modes[i % modes.length])),
        );
        connected.forEach((peer, i) => peers.push({ peer, binary: i % 4 === 1 || i % 4 === 2 }));
      }
      assert.equal(h.app.push.sessions().length, 200);
      const publishes: Promise<void>[] = [];
      for (let seq = 0; seq < 100; seq++) {
        publishes.push(
          h.app.push.publish({
            identity: 'task',
            type: 'update',
            entity: { seq, name: `t${seq}` },
          }),
        );
      }
      await Promise.all(publishes);
      await Promise.all(peers.map(({ peer }) => peer.client.waitForEvents(100, 15_000)));
      const expected = Array.from({ length: 100 }, (_, i) => i);
      for (const { peer, binary } of peers) {
        assert.deepEqual(
          peer.client.events.map((e) => (e.entity as { seq: number }).seq),
          expected,
        );
        assert.ok(peer.client.events.every((e) => e.binary === binary));
      }
      assert.equal(h.app.push.stats().deliveries, 20_000);
      assert.equal(h.app.push.stats().dropped, 0);
    });
  });
});
