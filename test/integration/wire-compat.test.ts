/**
 * Wire compatibility with bahamut, at the server level (PROTOCOL.md
 * sections 3 and 8), on every backend (LocalPubSub, NATS, Redis):
 *
 * - a publication built byte by byte as a Go server writes it, put straight
 *   onto the topic, is dispatched to JSON and MessagePack sessions;
 * - what `push.publish()` puts on the broker has exactly the keys and the
 *   MessagePack types a Go server expects;
 * - a publication that does not decode is dropped and counted, and the
 *   next one is still dispatched;
 * - with subject hierarchies, publications go to `<topic>.<identity>.<type>`
 *   and the servers subscribe to `<topic>.>`.
 *
 * No sleeps: tests wait for the events (or the counters) that prove the
 * point, with a deadline. To prove that something was NOT dispatched, a
 * marker is published after it by the same publisher and waited for.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import { decode } from '@msgpack/msgpack';
import { connect as natsConnect, type NatsConnection } from '@nats-io/transport-node';
import WebSocket from 'ws';
import {
  definePlugin,
  LocalPubSub,
  PubSubError,
  type Plugin,
  type PublicationHeaders,
  type PubSubClient,
} from '../../lib/index.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { RedisPubSub } from '../../lib/pubsub/redis.js';
import { startNats, startRedis, type Broker } from '../helpers/brokers.js';
import * as mp from '../helpers/go-msgpack.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import {
  connectClient,
  decodeEventFrame,
  startPushApp,
  type PushApp,
  type ReceivedEvent,
} from '../helpers/push-app.js';
import { waitFor, withTimeout } from '../helpers/wait.js';

const DELIVERY_MS = 5_000;
const MSGPACK = 'application/msgpack';

// Nothing may escape as an unhandled rejection, whatever arrives on the topic.
failOnUnhandledRejections();

// ---------------------------------------------------------------------------------------------
// Publications as a bahamut server writes them.

/** A task as a Go model (elemental) writes it: struct fields in order, ints and times Go's way. */
function goTaskEntity(id: string, createSec: number): { bytes: Buffer; json: unknown } {
  const description = 'a description longer than thirty-one bytes, so a str8';
  const bytes = mp.map([
    ['ID', mp.str(id)],
    ['name', mp.str(`task ${id}`)],
    ['description', mp.str(description)],
    ['priority', mp.int64(3)],
    ['ratio', mp.float64(0.5)],
    ['archived', mp.bool(false)],
    ['parentID', mp.nil()],
    ['tags', mp.array([mp.str('a'), mp.str('b')])],
    ['createTime', mp.goTime(createSec, 123_000_000)],
  ]);
  const json = {
    ID: id,
    name: `task ${id}`,
    description,
    priority: 3,
    ratio: 0.5,
    archived: false,
    parentID: null,
    tags: ['a', 'b'],
    createTime: new Date(createSec * 1000 + 123).toISOString(),
  };
  return { bytes, json };
}

/** What a Go publisher sent, and what a session must receive for it. */
interface GoPublication {
  bytes: Buffer;
  /** The `data` bin: the event, which MessagePack sessions get byte for byte. */
  eventBytes: Buffer;
  identity: string;
  type: string;
  entity: unknown;
  timestampIso: string;
  headers: PublicationHeaders;
}

interface GoPublicationSpec {
  id: string;
  identity?: string;
  type?: string;
  topic?: string;
  /** The event's timestamp, packed by the caller: each test picks the form. */
  timestamp: { packed: Buffer; ms: number };
  /** Sorted keys and compact ints, as elemental's ugorji codec (`Canonical: true`) writes them. */
  canonical?: boolean;
  trackingName?: string;
  trackingData?: Record<string, string>;
  partition?: number;
  responseMode?: number;
}

/**
 * A publication of an elemental `Event`, as bahamut's push writes it: the
 * `Publication` struct in declaration order (vmihailenco/msgpack, omitempty),
 * its `data` the msgpack of an `Event` whose entity is a bin.
 */
function goPublication(spec: GoPublicationSpec): GoPublication {
  const identity = spec.identity ?? 'task';
  const type = spec.type ?? 'create';
  const topic = spec.topic ?? 'events';
  const entity = goTaskEntity(spec.id, Math.floor(spec.timestamp.ms / 1000));
  const eventFields: Array<[string, Buffer]> = [
    ['entity', mp.bin(entity.bytes)],
    ['identity', mp.str(identity)],
    ['type', mp.str(type)],
    ['timestamp', spec.timestamp.packed],
    ['encoding', mp.str(MSGPACK)],
  ];
  const int = (n: number, goType: 'int32' | 'int'): Buffer =>
    spec.canonical && n >= 0 && n < 128
      ? mp.fixint(n)
      : goType === 'int32'
        ? mp.int32(n)
        : mp.int64(n);
  // bahamut's Publication, in its declaration order; empty fields are omitted (omitempty).
  const fields: Array<[string, Buffer]> = [];
  if (spec.trackingData) {
    fields.push([
      'trackingData',
      mp.map(Object.entries(spec.trackingData).map(([k, v]) => [k, mp.str(v)] as const)),
    ]);
  }
  fields.push(['topic', mp.str(topic)]);
  if (spec.trackingName) fields.push(['trackingName', mp.str(spec.trackingName)]);
  fields.push(['encoding', mp.str(MSGPACK)]);
  const byKey = (a: [string, Buffer], b: [string, Buffer]): number => (a[0] < b[0] ? -1 : 1);
  const eventBytes = mp.map(spec.canonical ? eventFields.sort(byKey) : eventFields);
  fields.push(['data', mp.bin(eventBytes)]);
  if (spec.responseMode) fields.push(['responseMode', int(spec.responseMode, 'int')]);
  if (spec.partition) fields.push(['partition', int(spec.partition, 'int32')]);
  const headers: PublicationHeaders = { topic };
  if (spec.trackingName) headers.trackingName = spec.trackingName;
  if (spec.trackingData) headers.trackingData = spec.trackingData;
  if (spec.partition) headers.partition = spec.partition;
  if (spec.responseMode) headers.responseMode = spec.responseMode;
  return {
    bytes: mp.map(spec.canonical ? fields.sort(byKey) : fields),
    eventBytes,
    identity,
    type,
    entity: entity.json,
    timestampIso: new Date(spec.timestamp.ms).toISOString(),
    headers,
  };
}

/** The four timestamp cases, all at or after now (older events are not sent to a session). */
function timestamps(): Record<
  'ext8' | 'ext12far' | 'ext4' | 'ext12now',
  { packed: Buffer; ms: number }
> {
  const sec = Math.floor(Date.now() / 1000) + 1;
  // Year 2600: beyond 2^34 seconds, where Go switches to the 12-byte form.
  const farSec = Date.UTC(2600, 0, 1) / 1000;
  assert.ok(farSec >= 2 ** 34);
  return {
    ext8: { packed: mp.goTime(sec, 456_789_000), ms: sec * 1000 + 456 },
    ext12far: { packed: mp.goTime(farSec, 7_000_000), ms: farSec * 1000 + 7 },
    ext4: { packed: mp.goTime(sec + 1, 0), ms: (sec + 1) * 1000 },
    // Any encoder may use the 12-byte form for any time; a reader must accept it.
    ext12now: { packed: mp.timestamp96(sec, 999_000_000), ms: sec * 1000 + 999 },
  };
}

// ---------------------------------------------------------------------------------------------
// Backends, apps and clients.

/** One backend under test: the server's client and a separate publisher on the same broker. */
interface BackendCase {
  name: string;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** A new, unconnected client of the backend (on LocalPubSub: the one bus). */
  client(): PubSubClient;
}

function localCase(): BackendCase {
  const bus = new LocalPubSub();
  return {
    name: 'LocalPubSub',
    async start() {},
    async stop() {
      await bus.disconnect();
    },
    client: () => bus,
  };
}

function brokerCase(kind: 'nats' | 'redis'): BackendCase & { broker(): Broker } {
  let broker: Broker | undefined;
  const url = (): string => {
    assert.ok(broker, 'the broker is started');
    return broker.url;
  };
  return {
    name: kind === 'nats' ? 'NatsPubSub' : 'RedisPubSub',
    async start() {
      broker = await (kind === 'nats' ? startNats() : startRedis());
    },
    async stop() {
      await broker?.stop();
    },
    client: () =>
      kind === 'nats' ? new NatsPubSub({ servers: url() }) : new RedisPubSub({ url: url() }),
    broker: () => {
      assert.ok(broker, 'the broker is started');
      return broker;
    },
  };
}

const backends = (): BackendCase[] => [localCase(), brokerCase('nats'), brokerCase('redis')];

/**
 * A client that keeps the raw frames it receives, to compare bytes, and
 * decodes them only when asked: a frame whose entity does not decode must
 * not throw inside the socket's listener.
 */
interface RawClient {
  ws: WebSocket;
  frames: Array<{ data: Buffer; isBinary: boolean }>;
  /** The frames decoded as PROTOCOL.md section 3 says (throws for an undecodable one). */
  events(from?: number): ReceivedEvent[];
  /** Resolves once `n` frames have arrived in total. */
  waitForFrames(n: number): Promise<void>;
}

async function connectRaw(app: PushApp, encoding: 'json' | 'msgpack'): Promise<RawClient> {
  const url = new URL(app.wsUrl);
  url.searchParams.set('encoding', encoding);
  const ws = new WebSocket(url);
  const frames: RawClient['frames'] = [];
  ws.on('message', (data: WebSocket.RawData, isBinary: boolean) => {
    frames.push({ data: Buffer.from(data as Buffer), isBinary });
  });
  ws.on('error', () => undefined);
  await withTimeout(once(ws, 'open'), DELIVERY_MS, `no handshake with ${url.href}`);
  return {
    ws,
    frames,
    events: (from = 0) => frames.slice(from).map((f) => decodeEventFrame(f.data, f.isBinary)),
    waitForFrames: (n) =>
      waitFor(() => frames.length >= n, {
        timeout: DELIVERY_MS,
        message: `expected ${n} frames on a ${encoding} session, got ${frames.length}`,
      }),
  };
}

/** A dispatch plugin that records the headers of every publication the server dispatches. */
function captureHeaders(into: PublicationHeaders[]): Plugin {
  return definePlugin({
    name: 'capture-headers',
    dispatch(ctx, next) {
      into.push({ ...ctx.publication });
      return next();
    },
  });
}

/** Everything one backend's suite runs: the publisher, two apps, their clients. */
interface Rig {
  publisher: PubSubClient;
  /** No dispatch plugin: the fast path. */
  fast: PushApp;
  /** A dispatch plugin: the chained path. */
  chained: PushApp;
  headers: PublicationHeaders[];
  clients: RawClient[];
  close(): Promise<void>;
}

async function startRig(backend: BackendCase, topic: string): Promise<Rig> {
  const publisher = backend.client();
  await publisher.connect();
  const headers: PublicationHeaders[] = [];
  const fast = await startPushApp({ pubsub: backend.client(), topic });
  const chained = await startPushApp({
    pubsub: backend.client(),
    topic,
    plugins: [captureHeaders(headers)],
  });
  // One after the other, in both orders of encodings: a server visits its sessions in the
  // order they connected, and what one session gets must not depend on the sessions before it.
  const clients: RawClient[] = [];
  clients.push(await connectRaw(fast, 'json'));
  clients.push(await connectRaw(fast, 'msgpack'));
  clients.push(await connectRaw(chained, 'msgpack'));
  clients.push(await connectRaw(chained, 'json'));
  return {
    publisher,
    fast,
    chained,
    headers,
    clients,
    async close() {
      for (const client of clients) client.ws.terminate();
      await Promise.all([fast.close(), chained.close()]);
      await Promise.all([
        fast.pubsub.disconnect(),
        chained.pubsub.disconnect(),
        publisher.disconnect(),
      ]);
    },
  };
}

/** Waits until every client has received `n` events in total. */
async function everyClientGets(clients: RawClient[], n: number): Promise<void> {
  await Promise.all(clients.map((client) => client.waitForFrames(n)));
}

// ---------------------------------------------------------------------------------------------
// (a) and (c): Go publications dispatched; undecodable ones dropped and counted.

for (const backend of backends()) {
  describe(`${backend.name}: publications from a bahamut server`, () => {
    let rig: Rig;
    before(async () => {
      await backend.start();
      rig = await startRig(backend, 'events');
    });
    after(async () => {
      await rig?.close();
      await backend.stop();
    });

    it('dispatches Go-encoded publications (every timestamp form) to JSON and MessagePack sessions', async () => {
      const ts = timestamps();
      const sent = [
        goPublication({
          id: '1',
          timestamp: ts.ext8,
          trackingName: 'create task',
          trackingData: { 'uber-trace-id': '4bf92f3577b34da6:00f067aa0ba902b7:0:1' },
          partition: 3,
          responseMode: 1,
        }),
        goPublication({ id: '2', type: 'update', timestamp: ts.ext12far }),
        goPublication({ id: '3', identity: 'user', type: 'delete', timestamp: ts.ext4 }),
        goPublication({
          id: '4',
          timestamp: ts.ext12now,
          canonical: true,
          partition: 7,
          trackingName: 'x',
        }),
      ];
      assert.deepEqual(
        rig.clients.map((c) => c.frames.length),
        [0, 0, 0, 0],
      );
      for (const publication of sent) await rig.publisher.publish('events', publication.bytes);
      await everyClientGets(rig.clients, sent.length);

      for (const client of rig.clients) {
        assert.equal(client.frames.length, sent.length);
        const events = client.events();
        sent.forEach((publication, i) => {
          const got = events[i];
          const frame = client.frames[i];
          assert.ok(got && frame, `event ${i}`);
          assert.equal(got.identity, publication.identity);
          assert.equal(got.type, publication.type);
          assert.deepEqual(
            got.binary ? decodeDates(got.entity) : got.entity,
            publication.entity,
            `entity ${i}`,
          );
          if (got.binary) {
            // MessagePack sessions get the publisher's event bytes, forwarded untouched.
            assert.equal(frame.isBinary, true);
            assert.ok(frame.data.equals(publication.eventBytes), `frame ${i} is the Go event`);
            assert.equal(got.encoding, MSGPACK);
            assert.equal((got.timestamp as Date).toISOString(), publication.timestampIso);
          } else {
            assert.equal(frame.isBinary, false);
            assert.equal(got.encoding, 'application/json');
            assert.equal(got.timestamp, publication.timestampIso);
          }
        });
      }
      // The envelope's other fields reach the dispatch plugins as Go wrote them.
      await waitFor(() => rig.headers.length >= sent.length, {
        timeout: DELIVERY_MS,
        message: 'the dispatch plugin did not see every publication',
      });
      assert.deepEqual(
        rig.headers,
        sent.map((p) => p.headers),
      );
    });

    it('drops and counts publications that do not decode, and dispatches the next one', async () => {
      const startCounts = rig.clients.map((c) => c.frames.length);
      const statsBefore = [rig.fast.push.stats(), rig.chained.push.stats()];
      const ts = timestamps();
      const good = goPublication({ id: 'after-the-bad-ones', timestamp: ts.ext8 });
      const notAnEvent = Buffer.from([0x93, 0x01, 0x02, 0x03]); // an array
      const missingIdentity = mp.map([
        ['entity', mp.bin(mp.map([]))],
        ['type', mp.str('create')],
        ['timestamp', ts.ext8.packed],
        ['encoding', mp.str(MSGPACK)],
      ]);
      const badTimestamp = mp.map([
        ['entity', mp.bin(mp.map([]))],
        ['identity', mp.str('task')],
        ['type', mp.str('create')],
        ['timestamp', mp.bool(true)],
        ['encoding', mp.str(MSGPACK)],
      ]);
      const envelope = (data: Buffer, encoding = MSGPACK): Buffer =>
        mp.map([
          ['topic', mp.str('events')],
          ['encoding', mp.str(encoding)],
          ['data', mp.bin(data)],
        ]);
      const bad: Array<[string, Buffer]> = [
        ['no bytes at all', Buffer.alloc(0)],
        ['a byte MessagePack never uses', Buffer.from([0xc1])],
        ['a truncated publication', good.bytes.subarray(0, Math.floor(good.bytes.length / 2))],
        ['a str, not a map', mp.str('hello')],
        ['JSON text', Buffer.from('{"topic":"events","data":"x"}')],
        ['a map without data', mp.map([['topic', mp.str('events')]])],
        ['data that is an int', mp.map([['data', mp.int64(1)]])],
        ['data that is not an event', envelope(notAnEvent)],
        ['an event without identity', envelope(missingIdentity)],
        ['an event whose timestamp is a bool', envelope(badTimestamp)],
        ['an unknown publication encoding', envelope(good.eventBytes, 'text/plain')],
      ];
      for (const [, bytes] of bad) await rig.publisher.publish('events', bytes);
      await rig.publisher.publish('events', good.bytes);
      await Promise.all(
        rig.clients.map((client, i) => client.waitForFrames((startCounts[i] ?? 0) + 1)),
      );
      rig.clients.forEach((client, i) => {
        const got = client.events(startCounts[i]);
        assert.deepEqual(
          got.map((e) => (e.entity as { ID?: string }).ID),
          ['after-the-bad-ones'],
          `client ${i} got only the good publication`,
        );
      });
      for (const [i, app] of [rig.fast, rig.chained].entries()) {
        const now = app.push.stats();
        const then = statsBefore[i];
        assert.ok(then);
        assert.equal(
          now.eventsUndecodable - then.eventsUndecodable,
          bad.length,
          `undecodable (app ${i})`,
        );
        assert.equal(
          now.eventsReceived - then.eventsReceived,
          bad.length + 1,
          `received (app ${i})`,
        );
      }
    });

    it('drops an event whose entity does not decode for JSON sessions, counts it, and goes on', async () => {
      const startCounts = rig.clients.map((c) => c.frames.length);
      const statsBefore = [rig.fast.push.stats(), rig.chained.push.stats()];
      const ts = timestamps();
      // A valid envelope and event, but the entity bin is not MessagePack: only a session
      // that needs the entity decoded (JSON) notices.
      const brokenEntity = mp.map([
        ['entity', mp.bin(Buffer.from([0xc1, 0xc1]))],
        ['identity', mp.str('task')],
        ['type', mp.str('create')],
        ['timestamp', ts.ext8.packed],
        ['encoding', mp.str(MSGPACK)],
      ]);
      await rig.publisher.publish(
        'events',
        mp.map([
          ['topic', mp.str('events')],
          ['encoding', mp.str(MSGPACK)],
          ['data', mp.bin(brokenEntity)],
        ]),
      );
      const good = goPublication({ id: 'after-the-broken-entity', timestamp: ts.ext8 });
      await rig.publisher.publish('events', good.bytes);
      const ids = (client: RawClient, i: number): string[] =>
        client.frames.slice(startCounts[i]).map((frame) => {
          if (!frame.isBinary)
            return (JSON.parse(frame.data.toString()) as { entity: { ID: string } }).entity.ID;
          const event = decode(frame.data) as { entity: Uint8Array };
          try {
            return (decode(event.entity) as { ID: string }).ID;
          } catch {
            return '<undecodable entity>';
          }
        });
      await waitFor(
        () => rig.clients.every((client, i) => ids(client, i).includes('after-the-broken-entity')),
        { timeout: DELIVERY_MS, message: 'the event after the broken one was not dispatched' },
      );
      rig.clients.forEach((client, i) => {
        const expected = client.frames.some((f) => f.isBinary)
          ? // MessagePack sessions forward the publisher's bytes without decoding the entity,
            // as bahamut does: the broken entity reaches them as it was published.
            ['<undecodable entity>', 'after-the-broken-entity']
          : ['after-the-broken-entity'];
        assert.deepEqual(ids(client, i), expected, `client ${i}`);
      });
      for (const [i, app] of [rig.fast, rig.chained].entries()) {
        const then = statsBefore[i];
        assert.ok(then);
        assert.equal(app.push.stats().eventsUndecodable - then.eventsUndecodable, 1, `app ${i}`);
      }
    });
  });
}

/** A MessagePack-decoded entity with its Dates as JSON would write them. */
function decodeDates(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value)) as unknown;
}

// ---------------------------------------------------------------------------------------------
// (b) What we put on the broker, read as a Go server would.

describe('what push.publish() puts on NATS', () => {
  let broker: Broker;
  let raw: NatsConnection;
  const apps: PushApp[] = [];

  before(async () => {
    broker = await startNats();
    raw = await natsConnect({ servers: broker.url });
  });
  after(async () => {
    await Promise.all(
      apps.map(async (app) => {
        await app.close();
        await app.pubsub.disconnect();
      }),
    );
    await raw?.close();
    await broker?.stop();
  });

  /** Subscribes raw to `subject` and collects what arrives. */
  async function rawInbox(subject: string): Promise<Array<{ subject: string; data: Uint8Array }>> {
    const inbox: Array<{ subject: string; data: Uint8Array }> = [];
    raw.subscribe(subject, {
      callback: (_error, msg) => {
        inbox.push({ subject: msg.subject, data: msg.data });
      },
    });
    await raw.flush();
    return inbox;
  }

  /** Checks an event map (section 3) type by type; returns the entity and the timestamp. */
  function checkEvent(data: mp.Typed): {
    identity: string;
    type: string;
    entity: unknown;
    ms: number;
  } {
    const event = mp.strKeyed(data);
    assert.deepEqual(Object.keys(event).sort(), [
      'encoding',
      'entity',
      'identity',
      'timestamp',
      'type',
    ]);
    const { entity, identity, type, timestamp, encoding } = event;
    assert.equal(entity?.type, 'bin', 'entity is a bin (of MessagePack)');
    assert.equal(identity?.type, 'str');
    assert.equal(type?.type, 'str');
    assert.equal(encoding?.type, 'str');
    assert.ok(
      timestamp?.type === 'ext' && timestamp.extType === -1,
      'timestamp is the extension -1',
    );
    assert.ok(entity?.type === 'bin' && identity?.type === 'str' && type?.type === 'str');
    assert.ok(encoding?.type === 'str' && encoding.value === MSGPACK);
    return {
      identity: identity.value,
      type: type.value,
      entity: decode(entity.value),
      ms: mp.timestampMs(timestamp),
    };
  }

  it('publishes a MessagePack map of topic (str), data (bin of the event) and encoding (str)', async () => {
    const app = await startPushApp({
      pubsub: new NatsPubSub({ servers: broker.url }),
      topic: 'wire.plain',
    });
    apps.push(app);
    const inbox = await rawInbox('wire.plain');
    const at = new Date('2031-05-06T07:08:09.123Z');
    const far = new Date('2600-01-01T00:00:00.007Z');
    const entity = {
      ID: '42',
      name: 'hello',
      priority: 3,
      ratio: 0.25,
      tags: ['x'],
      done: false,
      parent: null,
    };
    await app.push.publish(
      { identity: 'task', type: 'create', entity, timestamp: at },
      { identity: 'user', type: 'delete', entity: { ID: 'u1' }, timestamp: far },
    );
    await waitFor(() => inbox.length >= 2, {
      timeout: DELIVERY_MS,
      message: 'nothing reached NATS',
    });
    assert.equal(inbox.length, 2);

    const envelopes = inbox.map((msg) => {
      assert.equal(msg.subject, 'wire.plain');
      const publication = mp.strKeyed(mp.readTyped(msg.data));
      // Exactly bahamut's keys that are set; nothing of ours on the wire.
      assert.deepEqual(Object.keys(publication).sort(), ['data', 'encoding', 'topic']);
      const { topic, data, encoding } = publication;
      assert.ok(topic?.type === 'str' && topic.value === 'wire.plain', 'topic is a str');
      assert.ok(encoding?.type === 'str' && encoding.value === MSGPACK, 'encoding is a str');
      assert.ok(data?.type === 'bin', 'data is a bin');
      return {
        data: mp.readTyped(data.value),
        dataTimestamp: mp.strKeyed(mp.readTyped(data.value)).timestamp,
      };
    });
    const [first, second] = envelopes.map((e) => ({
      ...checkEvent(e.data),
      timestamp: e.dataTimestamp,
    }));
    assert.ok(first && second);
    assert.deepEqual(
      { identity: first.identity, type: first.type, entity: first.entity, ms: first.ms },
      { identity: 'task', type: 'create', entity, ms: at.getTime() },
    );
    assert.deepEqual(
      { identity: second.identity, type: second.type, entity: second.entity, ms: second.ms },
      { identity: 'user', type: 'delete', entity: { ID: 'u1' }, ms: far.getTime() },
    );
    // The forms a Go decoder reads: 8 bytes while the seconds fit 34 bits, 12 beyond.
    assert.equal(first.timestamp?.type === 'ext' && first.timestamp.data.length, 8);
    assert.equal(second.timestamp?.type === 'ext' && second.timestamp.data.length, 12);
  });

  it('adds trackingName (str) and trackingData (map of str) when they are set', async () => {
    const tracing = definePlugin({
      name: 'inject-trace',
      publish(ctx, next) {
        ctx.publication.trackingData = { 'uber-trace-id': 'abc:def:0:1', baggage: 'b' };
        return next();
      },
    });
    const app = await startPushApp({
      pubsub: new NatsPubSub({ servers: broker.url }),
      topic: 'wire.traced',
      plugins: [tracing],
    });
    apps.push(app);
    const inbox = await rawInbox('wire.traced');
    await app.push.publishWith(
      { trackingName: 'createTask' },
      { identity: 'task', type: 'create', entity: { ID: '7' } },
    );
    await waitFor(() => inbox.length >= 1, {
      timeout: DELIVERY_MS,
      message: 'nothing reached NATS',
    });
    const message = inbox[0];
    assert.ok(message);
    const publication = mp.strKeyed(mp.readTyped(message.data));
    assert.deepEqual(Object.keys(publication).sort(), [
      'data',
      'encoding',
      'topic',
      'trackingData',
      'trackingName',
    ]);
    const { trackingName, trackingData, data } = publication;
    assert.ok(
      trackingName?.type === 'str' && trackingName.value === 'createTask',
      'trackingName is a str',
    );
    assert.ok(trackingData?.type === 'map', 'trackingData is a map');
    const carrier = mp.strKeyed(trackingData);
    assert.deepEqual(
      Object.fromEntries(
        Object.entries(carrier).map(([k, v]) => {
          assert.equal(v.type, 'str', `trackingData.${k} is a str`);
          return [k, v.type === 'str' ? v.value : undefined];
        }),
      ),
      { 'uber-trace-id': 'abc:def:0:1', baggage: 'b' },
    );
    assert.ok(data?.type === 'bin');
    const event = checkEvent(mp.readTyped(data.value));
    assert.deepEqual(event.entity, { ID: '7' });
  });

  it("rejects a publication over NATS's max_payload (1 MiB) with a PubSubError; the next one goes through", async () => {
    const app = await startPushApp({
      pubsub: new NatsPubSub({ servers: broker.url }),
      topic: 'wire.big',
      options: { publishRetryDelay: 1 },
    });
    apps.push(app);
    const client = await connectClient(app.wsUrl);
    // The envelope adds ~100 bytes to the entity: a 1 MiB string does not fit the default limit.
    const big = { ID: 'big', blob: 'x'.repeat(1024 * 1024) };
    await assert.rejects(
      app.push.publish({ identity: 'task', type: 'create', entity: big }),
      (error: unknown) => {
        assert.ok(error instanceof PubSubError, `a PubSubError: ${String(error)}`);
        assert.match(error.message, /max_payload/);
        return true;
      },
    );
    // A refusal by the broker will not change on a retry: it fails at once.
    assert.equal(app.push.stats().publishRetries, 0);
    const fits = { ID: 'fits', blob: 'x'.repeat(1024 * 1024 - 1024) };
    await app.push.publish({ identity: 'task', type: 'create', entity: fits });
    await client.waitForEvents(1, DELIVERY_MS);
    assert.deepEqual(
      client.events.map((e) => (e.entity as { ID: string }).ID),
      ['fits'],
    );
    client.ws.terminate();
  });
});

// ---------------------------------------------------------------------------------------------
// (d) Subject hierarchies.

for (const backend of backends()) {
  describe(`${backend.name}: subject hierarchies`, () => {
    let app: PushApp;
    let observer: PubSubClient;
    before(async () => {
      await backend.start();
      observer = backend.client();
      await observer.connect();
      app = await startPushApp({
        pubsub: backend.client(),
        topic: 'hier',
        options: { subjectHierarchies: true },
      });
    });
    after(async () => {
      await app?.close();
      await Promise.all([app?.pubsub.disconnect(), observer?.disconnect()]);
      await backend.stop();
    });

    it('publishes to <topic>.<identity>.<type> and receives from <topic>.>', async () => {
      const client = await connectClient(app.wsUrl);
      const seen: string[] = [];
      await observer.subscribe('hier.>', (_payload, subject) => seen.push(subject));
      await app.push.publish(
        { identity: 'task', type: 'create', entity: { ID: '1' } },
        { identity: 'user', type: 'update', entity: { ID: '2' } },
      );
      await client.waitForEvents(2, DELIVERY_MS);
      await waitFor(() => seen.length >= 2, {
        timeout: DELIVERY_MS,
        message: 'the observer saw nothing',
      });
      assert.deepEqual(seen, ['hier.task.create', 'hier.user.update']);

      // A Go server with subject hierarchies publishes under the topic too; this server hears it.
      // One published to the bare topic is outside `hier.>`: the marker after it proves it was not sent.
      const ts = timestamps();
      const fromGo = goPublication({
        id: '3',
        type: 'delete',
        topic: 'hier.task.delete',
        timestamp: ts.ext8,
      });
      const bare = goPublication({ id: 'bare', topic: 'hier', timestamp: ts.ext8 });
      const marker = goPublication({ id: 'marker', topic: 'hier.task.create', timestamp: ts.ext8 });
      await observer.publish('hier.task.delete', fromGo.bytes);
      await observer.publish('hier', bare.bytes);
      await observer.publish('hier.task.create', marker.bytes);
      await client.waitForEvents(4, DELIVERY_MS);
      assert.deepEqual(
        client.events.map((e) => `${e.identity}.${e.type}:${(e.entity as { ID: string }).ID}`),
        ['task.create:1', 'user.update:2', 'task.delete:3', 'task.create:marker'],
      );
      client.close();
      await withTimeout(client.closed, DELIVERY_MS, 'the client did not close');
    });
  });
}
