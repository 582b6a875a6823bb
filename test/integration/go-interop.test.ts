/**
 * Interop with Go (issue 18): the small Go programs of test/interop/go, which
 * carry elemental's and bahamut's struct tags and elemental's codec settings,
 * run against a real Express app with pushwire and a real nats-server.
 *
 * - `client` is manipulate's push client: gorilla/websocket, the encoding
 *   chosen by `Content-Type`/`Accept`, every message written in a TEXT frame
 *   (as wsc does, MessagePack included), events decoded into the Go structs;
 * - `publisher` publishes bahamut publications on NATS, on `<topic>` or on
 *   `<topic>.<identity>.<type>` (subject hierarchies);
 * - `subscriber` decodes what pushwire publishes on NATS as bahamut does;
 * - `fixtures` prints the bytes elemental's MessagePack handle writes, which
 *   test/interop/fixtures/ugorji-msgpack.json holds and
 *   test/helpers/go-msgpack.ts models.
 *
 * The programs are built once per run, offline, in GOPATH mode from the
 * library sources Debian installs (scripts/ensure-system-deps.sh), into a
 * temporary directory. A missing Go or library fails the suite with the
 * command that installs it: it never skips.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { WebSocketServer } from 'ws';
import { decodeEvent } from '../../client/protocol.js';
import { PushDecodeError } from '../../client/errors.js';
import { createPushClient as createNodeClient, type ReceivedEvent } from '../../client/node.js';
import {
  authPlugin,
  dispatchPlugin,
  initPlugin,
  publishPlugin,
  type AuthAction,
  type PushEvent,
  type PushSession,
  type WireEvent,
} from '../../lib/index.js';
import { LocalPubSub } from '../../lib/pubsub/local.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { jwtAuthPlugin } from '../../plugins/jwt/index.js';
import { startNats, type Broker } from '../helpers/brokers.js';
import { failOnUnhandledRejections } from '../helpers/guard.js';
import { signHs256, TEST_SECRET } from '../helpers/security.js';
import * as mp from '../helpers/go-msgpack.js';
import {
  connectClient,
  expectRefusal,
  startPushApp,
  withPushApp,
  type PushApp,
  type TestClient,
} from '../helpers/push-app.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

const run = promisify(execFile);
failOnUnhandledRejections();

const GO_SOURCES = fileURLToPath(new URL('../interop/go', import.meta.url));
const FIXTURES = fileURLToPath(new URL('../interop/fixtures/ugorji-msgpack.json', import.meta.url));
const SYSTEM_GOPATH = '/usr/share/gocode';
const PROGRAMS = ['client', 'publisher', 'subscriber', 'fixtures'] as const;
type Program = (typeof PROGRAMS)[number];
const STEP_MS = 10_000;
const TOKEN = 'secret';

/** The Debian packages whose sources the programs import, by the directory they install. */
const GO_LIBRARIES = [
  ['github.com/ugorji/go/codec', 'golang-github-ugorji-go-codec-dev'],
  ['github.com/gorilla/websocket', 'golang-github-gorilla-websocket-dev'],
  ['github.com/nats-io/nats.go', 'golang-github-nats-io-go-nats-dev'],
] as const;

/**
 * The build environment: GOPATH mode (Debian ships sources, not modules), our sources first,
 * no network (GOPROXY=off), no cgo (no C compiler needed), caches in the run's directory.
 */
function goEnv(dir: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    GO111MODULE: 'off',
    GOPATH: `${GO_SOURCES}:${SYSTEM_GOPATH}`,
    GOPROXY: 'off',
    GOFLAGS: '',
    // A developer's own `go env -w` settings (GOFLAGS=-mod=…, GOPROXY) must not change the build.
    GOENV: 'off',
    GOTOOLCHAIN: 'local',
    CGO_ENABLED: '0',
    GOCACHE: join(dir, 'cache'),
  };
}

/** Says what is missing and how to install it, or undefined when everything is there. */
async function missingGo(): Promise<string | undefined> {
  const missing: string[] = [];
  try {
    await run(process.env.GO_BIN ?? 'go', ['version']);
  } catch {
    missing.push('golang-go');
  }
  for (const [dir, pkg] of GO_LIBRARIES) {
    if (!existsSync(join(SYSTEM_GOPATH, 'src', dir))) missing.push(pkg);
  }
  if (missing.length === 0) return undefined;
  return (
    `the Go interop tests need ${missing.join(', ')}: install with ` +
    `sudo apt-get install -y ${missing.join(' ')} (or run scripts/ensure-system-deps.sh as root)`
  );
}

/** One line a Go program printed. */
type Line = Record<string, unknown> & { kind: string };

/** A running Go program: its JSON lines, and waits on them. */
interface GoProcess {
  readonly lines: Line[];
  /** Resolves with the first line of this kind (already printed or to come). */
  line(kind: string, timeout?: number): Promise<Line>;
  /** Resolves when the program exits; rejects if it failed. */
  exited(timeout?: number): Promise<Line[]>;
}

// Its own test, so that a machine without Go counts a failure (the suite's hook failing only
// cancels the tests under it), and says what to install: these tests never skip.
it('Go and the Debian packages of the Go libraries are installed', async () => {
  const missing = await missingGo();
  assert.equal(missing, undefined, missing);
});

describe('Go interop: bahamut, elemental and manipulate against pushwire', () => {
  let dir = '';
  let nats: Broker | undefined;
  let app: PushApp | undefined;
  let hierarchyApp: PushApp | undefined;
  let jwtApp: PushApp | undefined;
  /** History on: events carry a `position` key bahamut's structs have no field for. */
  let historyApp: PushApp | undefined;
  const children = new Set<ChildProcess>();
  const clients: TestClient[] = [];
  let buildMs = 0;

  const bin = (program: Program): string => join(dir, 'bin', program);

  function start(program: Program, args: string[]): GoProcess {
    const child = spawn(bin(program), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    const lines: Line[] = [];
    const waiters: Array<() => void> = [];
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      let nl: number;
      while ((nl = stdout.indexOf('\n')) >= 0) {
        const text = stdout.slice(0, nl);
        stdout = stdout.slice(nl + 1);
        if (text.trim() !== '') lines.push(JSON.parse(text) as Line);
      }
      for (const w of waiters.splice(0)) w();
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    // 'close', not 'exit': 'exit' may come before the last of stdout was read (under load it
    // did, and a publication line the program printed just before exiting was lost).
    const exit = new Promise<number | null>((resolve) => {
      child.on('close', (code) => {
        children.delete(child);
        for (const w of waiters.splice(0)) w();
        resolve(code);
      });
    });
    let done = false;
    void exit.then(() => (done = true));
    return {
      lines,
      async line(kind, timeout = STEP_MS) {
        const found = (): Line | undefined => lines.find((l) => l.kind === kind);
        const deadline = Date.now() + timeout;
        for (;;) {
          const hit = found();
          if (hit) return hit;
          if (done) throw new Error(`${program} exited without a ${kind} line: ${stderr}`);
          const left = deadline - Date.now();
          if (left <= 0) throw new Error(`${program}: no ${kind} line in ${timeout} ms: ${stderr}`);
          await withTimeout(
            new Promise<void>((resolve) => waiters.push(resolve)),
            left,
            `${program}: no ${kind} line in ${timeout} ms (stderr: ${stderr})`,
          );
        }
      },
      async exited(timeout = STEP_MS) {
        const code = await withTimeout(exit, timeout, `${program} did not exit: ${stderr}`);
        assert.equal(code, 0, `${program} failed (exit ${code}): ${stderr}`);
        return lines;
      },
    };
  }

  before(async () => {
    const missing = await missingGo();
    if (missing !== undefined) throw new Error(missing);
    dir = mkdtempSync(join(tmpdir(), 'pushwire-go-'));
    const started = Date.now();
    // One `go build` for the four: it compiles the shared libraries once, in parallel.
    await run(
      process.env.GO_BIN ?? 'go',
      ['build', '-o', join(dir, 'bin') + '/', ...PROGRAMS.map((p) => `interop/${p}`)],
      { env: goEnv(dir), cwd: GO_SOURCES, timeout: 120_000 },
    ).catch((error: Error & { stderr?: string }) => {
      throw new Error(`building the Go programs failed: ${error.stderr ?? error.message}`);
    });
    buildMs = Date.now() - started;
    nats = await startNats();
    app = await startPushApp({
      pubsub: new NatsPubSub({ servers: nats.url }),
      topic: 'events',
      plugins: [authPlugin((session) => (session.token === TOKEN ? 'ok' : 'ko'))],
    });
    jwtApp = await startPushApp({
      plugins: [
        jwtAuthPlugin({ key: TEST_SECRET }),
        dispatchPlugin({
          shouldDispatch: (session, event) =>
            (event.entity as { ID?: string }).ID !== 'for-bob' || session.claimsMap.sub === 'bob',
        }),
      ],
    });
    historyApp = await startPushApp({
      pubsub: new LocalPubSub({ history: { maxEvents: 100 } }),
      plugins: [authPlugin((session) => (session.token === TOKEN ? 'ok' : 'ko'))],
    });
    hierarchyApp = await startPushApp({
      pubsub: new NatsPubSub({ servers: nats.url }),
      topic: 'tree',
      options: { subjectHierarchies: true },
    });
  });

  after(async () => {
    for (const child of children) child.kill('SIGKILL');
    for (const client of clients) client.ws.terminate();
    for (const target of [app, hierarchyApp, jwtApp, historyApp]) {
      await target?.close();
      await target?.pubsub.disconnect();
    }
    await nats?.stop();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
    if (buildMs > 0) console.log(`# go build of ${PROGRAMS.length} programs: ${buildMs} ms`);
  });

  it('the committed fixtures are the bytes elemental writes (ugorji, canonical)', async () => {
    const { stdout } = await run(bin('fixtures'), []);
    if (process.env.UPDATE_GO_FIXTURES === '1') writeFileSync(FIXTURES, stdout);
    assert.deepEqual(
      JSON.parse(stdout),
      JSON.parse(readFileSync(FIXTURES, 'utf8')),
      'the Go fixtures changed: UPDATE_GO_FIXTURES=1 regenerates test/interop/fixtures/ugorji-msgpack.json',
    );
  });

  /** Waits until the one session with a config of this app holds it. */
  async function configured(target: PushApp, count = 1): Promise<void> {
    await waitFor(
      () => target.push.sessions().filter((s) => s.pushConfig !== undefined).length >= count,
      { timeout: STEP_MS, message: 'the Go client config never reached a session' },
    );
  }

  /** Waits until every session of the app is gone (the last test's client closed). */
  async function noSessions(target: PushApp): Promise<void> {
    await waitFor(() => target.push.sessions().length === 0, {
      timeout: STEP_MS,
      message: 'sessions of an earlier test are still open',
    });
  }

  const createTime = new Date('2031-05-06T07:08:09.123Z');
  const task = (id: string, priority: number) => ({
    ID: id,
    name: `task ${id}`,
    description: 'a description longer than thirty-one bytes, so a str8',
    priority,
    ratio: 0.5,
    archived: false,
    parentID: null,
    tags: ['a', 'b'],
    createTime,
  });
  /** A task as the Go client prints it: its Task struct through encoding/json. */
  const goTask = (id: string, priority: number) => ({
    ...task(id, priority),
    createTime: createTime.toISOString(),
  });

  for (const encoding of ['json', 'msgpack'] as const) {
    const media = `application/${encoding}`;
    // pushwire writes MessagePack events in binary frames; bahamut in text ones. Go reads both.
    const frame = encoding === 'json' ? 'text' : 'binary';

    it(`${encoding}: a manipulate-style client authenticates with its token, sends identities and filters in a text frame, and decodes the events into elemental's Event and the Task model`, async () => {
      await noSessions(app!);
      const client = start('client', [
        `-url=${app!.wsUrl}`,
        `-token=${TOKEN}`,
        `-encoding=${encoding}`,
        `-config=${JSON.stringify({
          identities: { task: ['create'], user: [] },
          filters: { task: 'priority > 2' },
        })}`,
        '-events=2',
      ]);
      await client.line('open');
      await configured(app!);
      await app!.push.publish(
        { identity: 'task', type: 'create', entity: task('1', 1) },
        { identity: 'task', type: 'update', entity: task('2', 5) },
        { identity: 'task', type: 'create', entity: task('3', 5) },
        { identity: 'project', type: 'create', entity: { ID: 'p1' } },
        { identity: 'user', type: 'delete', entity: { ID: 'u1', name: 'ann' } },
      );
      const lines = await client.exited();
      const events = lines.filter((l) => l.kind === 'event');
      assert.deepEqual(
        events.map(({ timestamp: _t, ...rest }) => rest),
        [
          {
            kind: 'event',
            frame,
            identity: 'task',
            type: 'create',
            encoding: media,
            entity: goTask('3', 5),
          },
          {
            kind: 'event',
            frame,
            identity: 'user',
            type: 'delete',
            encoding: media,
            entity: { ID: 'u1', name: 'ann' },
          },
        ],
      );
      for (const e of events) {
        assert.ok(Math.abs(Date.parse(e.timestamp as string) - Date.now()) < 60_000);
      }
      assert.equal(lines.filter((l) => l.kind === 'error').length, 0);
    });

    it(`${encoding}: with history on, the Go client decodes events that carry a position (a key elemental's Event has no field for)`, async () => {
      await noSessions(historyApp!);
      const client = start('client', [
        `-url=${historyApp!.wsUrl}`,
        `-token=${TOKEN}`,
        `-encoding=${encoding}`,
        `-config=${JSON.stringify({ identities: { task: [] } })}`,
        '-events=2',
      ]);
      await client.line('open');
      await configured(historyApp!);
      await historyApp!.push.publish(
        { identity: 'task', type: 'create', entity: task('h1', 1) },
        { identity: 'task', type: 'update', entity: task('h2', 2) },
      );
      const lines = await client.exited();
      assert.deepEqual(
        lines.filter((l) => l.kind === 'event').map((e) => [e.type, e.entity]),
        [
          ['create', goTask('h1', 1)],
          ['update', goTask('h2', 2)],
        ],
      );
      assert.equal(lines.filter((l) => l.kind === 'error').length, 0);
    });

    it(`${encoding}: a filter that does not parse gets an error event, decoded into elemental's Error`, async () => {
      await noSessions(app!);
      const client = start('client', [
        `-url=${app!.wsUrl}`,
        `-token=${TOKEN}`,
        `-encoding=${encoding}`,
        `-config=${JSON.stringify({ identities: { task: [] }, filters: { task: 'priority >>> 2' } })}`,
        '-until-error',
      ]);
      const line = await client.line('error');
      await client.exited();
      const error = line.error as Record<string, unknown>;
      assert.equal(line.frame, frame);
      assert.equal(error.code, 400);
      assert.equal(error.title, 'Bad Request');
      assert.match(String(error.description), /filter/i);
    });

    it(`${encoding}: a client with a bad token is refused with 401 before the upgrade`, async () => {
      const client = start('client', [
        `-url=${app!.wsUrl}`,
        '-token=wrong',
        `-encoding=${encoding}`,
      ]);
      const line = await client.line('refused');
      await client.exited();
      assert.equal(line.status, 401);
    });
  }

  it("json and msgpack: the Go client renews its JWT through parameters.token; the session's claims follow it, and a bad renewal closes with 1008", async () => {
    for (const encoding of ['json', 'msgpack'] as const) {
      await noSessions(jwtApp!);
      const alice = await signHs256({ sub: 'alice' }, { expiresIn: '5m' });
      const bob = await signHs256({ sub: 'bob' }, { expiresIn: '5m' });
      const renewing = start('client', [
        `-url=${jwtApp!.wsUrl}`,
        `-token=${alice}`,
        `-encoding=${encoding}`,
        `-config=${JSON.stringify({ identities: { task: [] } })}`,
        '-events=2',
        `-renew-token=${bob}`,
      ]);
      await renewing.line('open');
      await configured(jwtApp!);
      const session = jwtApp!.push.sessions()[0]!;
      assert.equal(session.claimsMap.sub, 'alice');
      await jwtApp!.push.publish({
        identity: 'task',
        type: 'create',
        entity: { ID: 'for-anyone' },
      });
      await renewing.line('renewed');
      await waitFor(() => session.claimsMap.sub === 'bob', {
        timeout: STEP_MS,
        message: `${encoding}: the renewed token never replaced the claims`,
      });
      assert.equal(session.token, bob);
      // Only a session whose claims say bob gets this one: it proves the renewal took effect.
      await jwtApp!.push.publish({ identity: 'task', type: 'create', entity: { ID: 'for-bob' } });
      const lines = await renewing.exited();
      assert.deepEqual(
        lines.filter((l) => l.kind === 'event').map((l) => (l.entity as { ID: string }).ID),
        ['for-anyone', 'for-bob'],
      );

      await noSessions(jwtApp!);
      const refused = start('client', [
        `-url=${jwtApp!.wsUrl}`,
        `-token=${alice}`,
        `-encoding=${encoding}`,
        `-config=${JSON.stringify({ identities: { task: [] } })}`,
        '-events=2',
        '-renew-token=not.a.token',
      ]);
      await refused.line('open');
      await configured(jwtApp!);
      await jwtApp!.push.publish({ identity: 'task', type: 'create', entity: { ID: 'first' } });
      const closed = await refused.line('closed');
      assert.equal(closed.code, 1008, `${encoding}: ${JSON.stringify(closed)}`);
      await refused.exited();
    }
  });

  it('the whole Go loop: a bahamut publication on NATS reaches a Go MessagePack client through pushwire, the publisher bytes forwarded', async () => {
    await noSessions(app!);
    const client = start('client', [
      `-url=${app!.wsUrl}`,
      `-token=${TOKEN}`,
      '-encoding=msgpack',
      `-config=${JSON.stringify({ identities: { task: [] }, filters: { task: 'priority > 2' } })}`,
      '-events=1',
    ]);
    await client.line('open');
    await configured(app!);
    const publisher = start('publisher', [
      `-nats=${nats!.url}`,
      '-topic=events',
      `-events=${JSON.stringify([
        { identity: 'task', type: 'create', entity: goTask('low', 1) },
        { identity: 'task', type: 'create', entity: goTask('high', 9) },
      ])}`,
    ]);
    await publisher.exited();
    const lines = await client.exited();
    const events = lines.filter((l) => l.kind === 'event');
    assert.equal(events.length, 1);
    assert.deepEqual(events[0]?.entity, goTask('high', 9));
  });

  it('bahamut publications from Go reach pushwire sessions, on <topic> and, with subject hierarchies, on <topic>.<identity>.<type>', async () => {
    const plain = await connectClient(app!.wsUrl, { query: { token: TOKEN } });
    const tree = await connectClient(hierarchyApp!.wsUrl);
    clients.push(plain, tree);
    const events = [
      { identity: 'task', type: 'create', entity: goTask('7', 3) },
      { identity: 'user', type: 'update', entity: goTask('8', 4) },
    ];
    for (const [topic, hierarchy] of [
      ['events', false],
      ['tree', true],
    ] as const) {
      const publisher = start('publisher', [
        `-nats=${nats!.url}`,
        `-topic=${topic}`,
        `-hierarchy=${hierarchy}`,
        `-events=${JSON.stringify(events)}`,
      ]);
      await publisher.exited();
    }
    for (const client of [plain, tree]) {
      const got = await client.waitForEvents(2, STEP_MS);
      assert.deepEqual(
        got.map((e) => [e.identity, e.type, e.entity]),
        // The Go time reaches a JSON session as RFC 3339 text.
        events.map((e) => [e.identity, e.type, e.entity]),
      );
    }
    plain.close();
    tree.close();
  });

  it('a Go subscriber decodes what push.publish() puts on NATS, on <topic> and on <topic>.<identity>.<type>', async () => {
    const plain = start('subscriber', [`-nats=${nats!.url}`, '-subject=events', '-count=1']);
    // The exact subject, not `tree.>`: a publication of an earlier test still in flight on
    // another `tree.` subject (not a Task) would be the one message this subscriber reads.
    const tree = start('subscriber', [
      `-nats=${nats!.url}`,
      '-subject=tree.task.delete',
      '-count=1',
    ]);
    await plain.line('ready');
    await tree.line('ready');
    await app!.push.publishWith(
      { trackingName: 'create task' },
      { identity: 'task', type: 'create', entity: task('9', 4), timestamp: createTime },
    );
    await hierarchyApp!.push.publish({
      identity: 'task',
      type: 'delete',
      entity: task('10', 2),
      timestamp: createTime,
    });
    const [fromPlain] = (await plain.exited()).filter((l) => l.kind === 'publication');
    const [fromTree] = (await tree.exited()).filter((l) => l.kind === 'publication');
    assert.deepEqual(
      { ...fromPlain, trackingData: undefined },
      {
        kind: 'publication',
        subject: 'events',
        topic: 'events',
        encoding: 'application/msgpack',
        trackingName: 'create task',
        trackingData: undefined,
        identity: 'task',
        type: 'create',
        eventEncoding: 'application/msgpack',
        timestamp: createTime.toISOString(),
        entity: goTask('9', 4),
      },
    );
    assert.equal(fromTree?.subject, 'tree.task.delete');
    assert.equal(fromTree?.topic, 'tree.task.delete');
    assert.deepEqual(fromTree?.entity, goTask('10', 2));
  });

  it("a JSON session's text frame that is not UTF-8 gets the protocol's answer for an invalid config (an error event with enableErrors, else 1003)", async () => {
    const withErrors = await connectClient(app!.wsUrl, {
      query: { token: TOKEN, enableErrors: 'true' },
    });
    const without = await connectClient(app!.wsUrl, { query: { token: TOKEN } });
    clients.push(withErrors, without);
    const notUtf8 = Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]);
    withErrors.ws.send(notUtf8, { binary: false });
    without.ws.send(notUtf8, { binary: false });
    const [event] = await withErrors.waitForEvents(1, STEP_MS);
    assert.equal(event?.type, 'error');
    assert.match(String((event?.entity as { description?: string }).description), /UTF-8|decode/i);
    assert.equal((await withTimeout(without.closed, STEP_MS, 'no close')).code, 1003);
    withErrors.close();
  });
});

describe('test/helpers/go-msgpack.ts models what elemental writes (the committed Go fixtures)', () => {
  const fixtures = JSON.parse(readFileSync(FIXTURES, 'utf8')) as Record<string, string>;
  const hex = (name: string): string => {
    const value = fixtures[name];
    assert.ok(value !== undefined, `no fixture ${name}`);
    return value;
  };
  const created = { sec: 1_700_000_000, nsec: 123_000_000 };
  const taskBytes = mp.ugorjiTask({
    ID: '1',
    name: 'task 1',
    description: 'a description longer than thirty-one bytes, so a str8',
    priority: 3,
    ratio: 0.5,
    archived: false,
    tags: ['a', 'b'],
    createTime: created,
  });
  const eventBytes = mp.canonicalMap([
    ['entity', mp.bin(taskBytes)],
    ['identity', mp.str('task')],
    ['type', mp.str('create')],
    ['timestamp', mp.goTime(1_700_000_000, 456_789_000)],
    ['encoding', mp.str('application/msgpack')],
  ]);

  it('a model struct: fields sorted by name, ints compacted, nil pointers as nil', () => {
    assert.equal(taskBytes.toString('hex'), hex('task'));
  });

  it('an Event and a Publication (omitempty), keys sorted', () => {
    assert.equal(eventBytes.toString('hex'), hex('event'));
    const publication = (extra: Array<[string, mp.Packed]>): mp.Packed =>
      mp.canonicalMap([
        ['topic', mp.str('events')],
        ['data', mp.bin(eventBytes)],
        ['encoding', mp.str('application/msgpack')],
        ...extra,
      ]);
    assert.equal(publication([]).toString('hex'), hex('publicationMinimal'));
    assert.equal(
      publication([
        ['trackingName', mp.str('create task')],
        [
          'trackingData',
          mp.canonicalMap([
            ['uber-trace-id', mp.str('1:2:0:1')],
            ['baggage', mp.str('x')],
          ]),
        ],
        ['partition', mp.goInt(3)],
        ['responseMode', mp.goInt(1)],
      ]).toString('hex'),
      hex('publication'),
    );
  });

  it('ints: the smallest signed form (int16 from 128), uint8 only for Go unsigned types', () => {
    const ints = mp.canonicalMap([
      ['a0', mp.goInt(0)],
      ['a127', mp.goInt(127)],
      ['a128', mp.goInt(128)],
      ['a200', mp.goInt(200)],
      ['a70000', mp.goInt(70000)],
      ['a2e40', mp.goInt(2 ** 40)],
      ['b-1', mp.goInt(-1)],
      ['b-33', mp.goInt(-33)],
      ['b-200', mp.goInt(-200)],
      ['c200', mp.goUint(200)],
    ]);
    assert.equal(ints.toString('hex'), hex('ints'));
  });

  it('times: the three forms of the timestamp extension; the zero time is nil', () => {
    assert.equal(mp.goTime(1_700_000_000, 0).toString('hex'), hex('time4'));
    assert.equal(mp.goTime(1_700_000_000, 456_789_000).toString('hex'), hex('time8'));
    assert.equal(mp.goTime(Date.UTC(2600, 0, 1) / 1000, 7_000_000).toString('hex'), hex('time12'));
    assert.equal(mp.nil().toString('hex'), hex('timeZero'));
  });

  it('a PushConfig and an Error as a Go client sends and receives them', () => {
    const pushConfig = mp.canonicalMap([
      [
        'identities',
        mp.canonicalMap([
          ['user', mp.array([])],
          ['task', mp.array([mp.str('create'), mp.str('update')])],
        ]),
      ],
      ['filters', mp.canonicalMap([['task', mp.str('priority > 2')]])],
      ['parameters', mp.canonicalMap([['namespace', mp.array([mp.str('/acme')])]])],
    ]);
    assert.equal(pushConfig.toString('hex'), hex('pushConfig'));
    const error = mp.canonicalMap([
      ['code', mp.goInt(400)],
      ['title', mp.str('Bad Request')],
      ['description', mp.str('unable to parse identity filters')],
      ['subject', mp.str('bahamut')],
      ['data', mp.canonicalMap([['pushconfig', mp.str('filters')]])],
      ['trace', mp.str('')],
    ]);
    assert.equal(error.toString('hex'), hex('error'));
  });
});

describe('pushwire/client decodes by the session encoding, not by the frame opcode (bahamut sends MessagePack in text frames)', () => {
  const fixtures = JSON.parse(readFileSync(FIXTURES, 'utf8')) as Record<string, string>;
  const goEvent = Buffer.from(fixtures.event ?? '', 'hex');

  it("reads the bytes of elemental's MessagePack event, as a text frame delivers them raw", () => {
    const event = decodeEvent(goEvent, 'msgpack');
    assert.equal(event.identity, 'task');
    assert.equal(event.type, 'create');
    assert.equal((event.entity as { ID: string }).ID, '1');
    assert.equal((event.entity as { priority: number }).priority, 3);
    assert.equal(event.timestamp.getTime(), 1_700_000_000_456);
  });

  it('reads a JSON event that arrives as bytes (a binary frame, or a transport that hands over bytes)', () => {
    const json = JSON.stringify({
      entity: { ID: '1' },
      identity: 'task',
      type: 'update',
      timestamp: '2031-05-06T07:08:09.123Z',
      encoding: 'application/json',
    });
    const event = decodeEvent(new TextEncoder().encode(json), 'json');
    assert.deepEqual(event.entity, { ID: '1' });
    assert.equal(event.type, 'update');
    assert.throws(() => decodeEvent(goEvent, 'json'), PushDecodeError);
  });

  it('refuses a MessagePack event that the WebSocket already decoded as text (its bytes are lost)', () => {
    assert.throws(() => decodeEvent('\u0085garbled', 'msgpack'), PushDecodeError);
  });

  // A server that writes as bahamut does (wsc): every message in a TEXT frame, MessagePack too.
  async function bahamutLikeServer(
    frames: (encoding: string) => Array<{ data: Buffer; binary: boolean }>,
  ): Promise<{ url: string; close: () => Promise<void> }> {
    const wss = new WebSocketServer({ port: 0 });
    await once(wss, 'listening');
    wss.on('connection', (socket, request) => {
      const encoding = new URL(request.url ?? '/', 'http://x').searchParams.get('encoding') ?? '';
      for (const frame of frames(encoding)) socket.send(frame.data, { binary: frame.binary });
    });
    const { port } = wss.address() as AddressInfo;
    return {
      url: `ws://127.0.0.1:${port}/events`,
      close: async () => {
        for (const socket of wss.clients) socket.terminate();
        await new Promise<void>((resolve) => wss.close(() => resolve()));
      },
    };
  }

  it("pushwire/client/node reads elemental's MessagePack event from a text frame, though it is not UTF-8", async () => {
    // The point of the test: ws (or a browser) would fail a text frame holding these bytes.
    assert.throws(() => new TextDecoder('utf-8', { fatal: true }).decode(goEvent));
    const server = await bahamutLikeServer(() => [
      { data: goEvent, binary: false },
      { data: goEvent, binary: true },
    ]);
    const client = createNodeClient(server.url, { encoding: 'msgpack', reconnect: false });
    try {
      const events: ReceivedEvent[] = [];
      const errors: Error[] = [];
      const two = deferred();
      client.on('error', (error) => errors.push(error));
      client.on('event', (event) => {
        events.push(event);
        if (events.length === 2) two.resolve();
      });
      await withTimeout(two.promise, STEP_MS, 'the client did not get both events');
      for (const event of events) {
        assert.equal(event.identity, 'task');
        assert.equal((event.entity as { priority: number }).priority, 3);
        assert.equal(event.timestamp.getTime(), 1_700_000_000_456);
      }
      assert.deepEqual(errors, []);
    } finally {
      client.close();
      await server.close();
    }
  });

  it('pushwire/client/node, on a JSON session, reads JSON in either frame and reports one that is not UTF-8 as a PushDecodeError', async () => {
    const json = (id: string): Buffer =>
      Buffer.from(
        JSON.stringify({
          entity: { ID: id },
          identity: 'task',
          type: 'create',
          timestamp: '2031-05-06T07:08:09.123Z',
          encoding: 'application/json',
        }),
      );
    const server = await bahamutLikeServer(() => [
      { data: json('1'), binary: false },
      { data: Buffer.concat([json('x').subarray(0, 20), Buffer.from([0xff])]), binary: false },
      { data: json('2'), binary: true },
    ]);
    const client = createNodeClient(server.url, { encoding: 'json', reconnect: false });
    try {
      const ids: string[] = [];
      const errors: Error[] = [];
      const done = deferred();
      client.on('error', (error) => errors.push(error));
      client.on('event', (event) => {
        ids.push((event.entity as { ID: string }).ID);
        if (ids.length === 2) done.resolve();
      });
      await withTimeout(done.promise, STEP_MS, 'the client did not get both JSON events');
      assert.deepEqual(ids, ['1', '2']);
      assert.equal(errors.length, 1);
      assert.ok(errors[0] instanceof PushDecodeError, String(errors[0]));
      assert.match(errors[0].message, /UTF-8/);
    } finally {
      client.close();
      await server.close();
    }
  });
});

describe("bahamut's handler interfaces port literally to the helpers (method names lowerCamelCased)", () => {
  // SessionAuthenticator: AuthenticateSession(Session) (AuthAction, error).
  // bahamut's constants, in the order of its `const` block: the Go values, returned as they are.
  const AuthActionOK = 0;
  const AuthActionKO = 1;
  class TokenAuthenticator {
    authenticateSession(session: PushSession): AuthAction {
      return session.token === TOKEN ? AuthActionOK : AuthActionKO;
    }
  }
  // SessionAuthorizer: IsAuthorized(Session) (bool, error).
  class NamespaceAuthorizer {
    isAuthorized(session: PushSession): boolean {
      return session.parameter('namespace') === '/acme';
    }
  }
  // PushDispatchHandler: all six methods, as one object, the way bahamut takes it.
  class OwnerDispatcher {
    readonly lifecycle: string[] = [];
    onPushSessionInit(session: PushSession): boolean {
      return session.parameter('blocked') === '';
    }
    onPushSessionStart(session: PushSession): void {
      this.lifecycle.push(`start ${session.parameter('owner')}`);
    }
    onPushSessionStop(session: PushSession): void {
      this.lifecycle.push(`stop ${session.parameter('owner')}`);
    }
    summarizeEvent(event: WireEvent): unknown {
      // Go: `var obj Owned; if err := event.Decode(&obj); err != nil {…}; return obj.Owner, nil`.
      if (event.encoding !== 'application/msgpack')
        throw new Error('a publication carries a MessagePack entity');
      return event.decode<{ owner?: string }>().owner;
    }
    relatedEventIdentities(identity: string): string[] | null {
      // Go's nil for every other identity.
      return identity === 'comment' ? ['task'] : null;
    }
    shouldDispatch(session: PushSession, _event: WireEvent, summary: unknown): boolean {
      return summary === session.parameter('owner');
    }
  }
  // PushPublishHandler: ShouldPublish(*elemental.Event) (bool, error).
  class SecretFilter {
    shouldPublish(event: Readonly<PushEvent>): boolean {
      return event.type !== 'secret';
    }
  }

  it('authenticates, authorizes, inits, dispatches by owner and related identity, vetoes publications, and runs start and stop', async () => {
    const authenticator = new TokenAuthenticator();
    const authorizer = new NamespaceAuthorizer();
    const dispatcher = new OwnerDispatcher();
    const publisher = new SecretFilter();
    const plugins = [
      authPlugin((session) => authenticator.authenticateSession(session)),
      initPlugin((session) => authorizer.isAuthorized(session)),
      dispatchPlugin(dispatcher),
      publishPlugin((event) => publisher.shouldPublish(event)),
    ];
    await withPushApp({ plugins }, async (app, track) => {
      const query = { token: TOKEN, namespace: '/acme', owner: 'ann' };
      const bad = await expectRefusal(app.wsUrl, { query: { ...query, token: 'wrong' } });
      assert.equal(bad.status, 401);
      const elsewhere = await expectRefusal(app.wsUrl, { query: { ...query, namespace: '/x' } });
      assert.equal(elsewhere.status, 403);
      const blocked = await expectRefusal(app.wsUrl, { query: { ...query, blocked: 'yes' } });
      assert.equal(blocked.status, 403);
      assert.deepEqual(
        (blocked.body as Array<{ description: string }>)[0]?.description,
        'You are not authorized to initiate a push session',
      );
      const client = track(await connectClient(app.wsUrl, { query }));
      client.sendConfig({ identities: { task: [] } });
      await waitFor(() => app.push.sessions()[0]?.pushConfig !== undefined, {
        timeout: STEP_MS,
        message: 'no config',
      });
      await app.push.publish(
        { identity: 'task', type: 'create', entity: { ID: '1', owner: 'bob' } },
        { identity: 'task', type: 'secret', entity: { ID: '2', owner: 'ann' } },
        { identity: 'comment', type: 'create', entity: { ID: '3', owner: 'ann' } },
        { identity: 'user', type: 'create', entity: { ID: '4', owner: 'ann' } },
        { identity: 'task', type: 'update', entity: { ID: '5', owner: 'ann' } },
      );
      const events = await client.waitForEvents(2, STEP_MS);
      assert.deepEqual(
        events.map((e) => `${e.identity}/${e.type}:${(e.entity as { ID: string }).ID}`),
        ['comment/create:3', 'task/update:5'],
      );
      client.close();
      await waitFor(() => dispatcher.lifecycle.length === 2, {
        timeout: STEP_MS,
        message: 'onPushSessionStop did not run',
      });
      assert.deepEqual(dispatcher.lifecycle, ['start ann', 'stop ann']);
    });
  });

  // One test per helper: each ports a Go handler method for method, its `error` results as throws.
  const describeRefusal = (refusal: { body: unknown }): string =>
    (refusal.body as Array<{ description: string }>)[0]?.description ?? '';

  it('SessionAuthenticator.AuthenticateSession → authPlugin: OK, KO, Continue (Go values) and an error', async () => {
    const AuthActionContinue = 2;
    // Go: an API-key authenticator that leaves token sessions to the next one.
    class APIKeyAuthenticator {
      authenticateSession(session: PushSession): AuthAction {
        const key = session.parameter('apiKey');
        if (key === '') return AuthActionContinue;
        if (key === 'broken') throw new Error('key store unreachable');
        return key === 'k1' ? AuthActionOK : AuthActionKO;
      }
    }
    const first = new APIKeyAuthenticator();
    const second = new TokenAuthenticator();
    const plugins = [
      authPlugin((session) => first.authenticateSession(session), 'apikey'),
      authPlugin((session) => second.authenticateSession(session), 'token'),
    ];
    await withPushApp({ plugins }, async (app, track) => {
      track(await connectClient(app.wsUrl, { query: { apiKey: 'k1', token: 'wrong' } }));
      track(await connectClient(app.wsUrl, { query: { token: TOKEN } }));
      const ko = await expectRefusal(app.wsUrl, { query: { apiKey: 'k2', token: TOKEN } });
      assert.equal(ko.status, 401);
      assert.equal(describeRefusal(ko), 'You are not authorized to start a session');
      const continued = await expectRefusal(app.wsUrl, { query: { token: 'wrong' } });
      assert.equal(continued.status, 401);
      const failed = await expectRefusal(app.wsUrl, { query: { apiKey: 'broken' } });
      assert.equal(failed.status, 401);
      assert.equal(describeRefusal(failed), 'key store unreachable');
      assert.equal(app.push.sessions().length, 2);
    });
  });

  it('SessionAuthorizer.IsAuthorized → initPlugin: true, false and an error', async () => {
    class RoleAuthorizer {
      isAuthorized(session: PushSession): boolean {
        if (session.parameter('role') === 'ghost') throw new Error('no such role: ghost');
        return session.parameter('role') === 'reader';
      }
    }
    const authorizer = new RoleAuthorizer();
    const plugins = [initPlugin((session) => authorizer.isAuthorized(session))];
    await withPushApp({ plugins }, async (app, track) => {
      track(await connectClient(app.wsUrl, { query: { role: 'reader' } }));
      const no = await expectRefusal(app.wsUrl, { query: { role: 'writer' } });
      assert.equal(no.status, 403);
      const absent = await expectRefusal(app.wsUrl);
      assert.equal(absent.status, 403, "an absent parameter is '', as in Go");
      const failed = await expectRefusal(app.wsUrl, { query: { role: 'ghost' } });
      assert.equal(failed.status, 403);
      assert.equal(describeRefusal(failed), 'no such role: ghost');
      assert.equal(app.push.sessions().length, 1);
    });
  });

  it('PushDispatchHandler, all six methods → dispatchPlugin: their errors as bahamut treats them', async () => {
    class FailingDispatcher {
      readonly started: string[] = [];
      readonly stopped: string[] = [];
      onPushSessionInit(session: PushSession): boolean {
        if (session.parameter('init') === 'error') throw new Error('init store down');
        return session.parameter('init') !== 'no';
      }
      onPushSessionStart(session: PushSession): void {
        this.started.push(session.parameter('name'));
      }
      onPushSessionStop(session: PushSession): void {
        this.stopped.push(session.parameter('name'));
      }
      summarizeEvent(event: WireEvent): unknown {
        // Go: an error drops the event for every session.
        const entity = event.decode<{ ID: string; owner?: string }>();
        if (entity.ID === 'undecodable') throw new Error('cannot summarize');
        return entity.owner ?? '';
      }
      relatedEventIdentities(identity: string): string[] | null {
        return identity === 'comment' ? ['task'] : null;
      }
      shouldDispatch(session: PushSession, event: WireEvent, summary: unknown): boolean {
        // Go: an error skips that session only.
        if (session.parameter('name') === 'fragile' && summary === 'boom') throw new Error('x');
        return event.identity !== 'task' || summary !== 'hidden';
      }
    }
    const dispatcher = new FailingDispatcher();
    await withPushApp({ plugins: [dispatchPlugin(dispatcher)] }, async (app, track) => {
      const no = await expectRefusal(app.wsUrl, { query: { init: 'no' } });
      assert.equal(no.status, 403);
      assert.equal(describeRefusal(no), 'You are not authorized to initiate a push session');
      const failed = await expectRefusal(app.wsUrl, { query: { init: 'error' } });
      assert.equal(failed.status, 403);
      assert.equal(describeRefusal(failed), 'init store down');
      const sturdy = track(await connectClient(app.wsUrl, { query: { name: 'sturdy' } }));
      const fragile = track(await connectClient(app.wsUrl, { query: { name: 'fragile' } }));
      for (const client of [sturdy, fragile]) client.sendConfig({ identities: { task: [] } });
      await waitFor(
        () =>
          app.push.sessions().length === 2 &&
          app.push.sessions().every((s) => s.pushConfig !== undefined),
        { timeout: STEP_MS, message: 'no configs' },
      );
      await app.push.publish(
        { identity: 'task', type: 'create', entity: { ID: 'undecodable' } },
        { identity: 'task', type: 'create', entity: { ID: 'hidden', owner: 'hidden' } },
        { identity: 'task', type: 'create', entity: { ID: 'boom', owner: 'boom' } },
        { identity: 'user', type: 'create', entity: { ID: 'other identity' } },
        { identity: 'comment', type: 'create', entity: { ID: 'related' } },
      );
      const ids = (events: Array<{ entity: unknown }>): string[] =>
        events.map((e) => (e.entity as { ID: string }).ID);
      assert.deepEqual(ids(await sturdy.waitForEvents(2, STEP_MS)), ['boom', 'related']);
      assert.deepEqual(ids(await fragile.waitForEvents(1, STEP_MS)), ['related']);
      assert.deepEqual(dispatcher.started.sort(), ['fragile', 'sturdy']);
      sturdy.close();
      await waitFor(() => dispatcher.stopped.length === 1, {
        timeout: STEP_MS,
        message: 'onPushSessionStop did not run',
      });
      assert.deepEqual(dispatcher.stopped, ['sturdy']);
    });
  });

  it('PushPublishHandler.ShouldPublish → publishPlugin: true publishes, false drops quietly, an error rejects publish()', async () => {
    class DraftFilter {
      shouldPublish(event: Readonly<PushEvent>): boolean {
        if (event.type === 'corrupt') throw new Error('cannot tell');
        return (event.entity as { draft?: boolean }).draft !== true;
      }
    }
    const filter = new DraftFilter();
    await withPushApp(
      { plugins: [publishPlugin((event) => filter.shouldPublish(event))] },
      async (app, track) => {
        const client = track(await connectClient(app.wsUrl));
        await app.push.publish(
          { identity: 'task', type: 'create', entity: { ID: 'draft', draft: true } },
          { identity: 'task', type: 'create', entity: { ID: 'final' } },
        );
        // Documented difference (README): Go skips only that event; publish() rejects.
        await assert.rejects(
          app.push.publish({ identity: 'task', type: 'corrupt', entity: { ID: 'x' } }),
          /cannot tell/,
        );
        await app.push.publish({ identity: 'task', type: 'create', entity: { ID: 'after' } });
        const events = await client.waitForEvents(2, STEP_MS);
        assert.deepEqual(
          events.map((e) => (e.entity as { ID: string }).ID),
          ['final', 'after'],
        );
      },
    );
  });
});
