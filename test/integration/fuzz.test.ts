/**
 * Proof under bad input (issue 9, item 5): random and mutated frames sent to
 * live sessions, for a bounded time (FUZZ_TIME_MS, default 12 s; FUZZ_SEED
 * replays a run). Broken JSON and MessagePack, wrong types, huge numbers of
 * identities, deep nesting (in the message and in filters), invalid UTF-8
 * in text frames, binary frames to JSON sessions, oversized messages.
 *
 * For every frame the session gets the protocol's answer (PROTOCOL.md
 * sections 4 and 6): a valid push config is applied and answered with
 * nothing; an invalid one gets an error event with `enableErrors`, else a
 * close with 1003; a message over `maxPayload` with 1009. A text frame that
 * is not UTF-8 is not closed with 1007: Go clients send MessagePack in text
 * frames (issue 18), so the frame's bytes go to the session's decoder, and
 * on a JSON session they are an invalid config like any other. Which messages are valid is
 * decided by the protocol module (its rules are specified by the unit
 * tests); here the point is what the live server does with them. Frames
 * whose validity the generator knows (valid configs, broken JSON,
 * oversized…) are also checked against that knowledge.
 *
 * Meanwhile the process must not crash, reject unhandled or log an error,
 * and two control sessions must receive every marker event, in order.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { encode as encodeMsgpack } from '@msgpack/msgpack';
import fc from 'fast-check';
import WebSocket from 'ws';
import type { Logger } from '../../lib/index.js';
import { decodePushConfigMessage, parsePushConfig } from '../../lib/protocol/push-config.js';
import {
  connectClient,
  decodeEventFrame,
  startPushApp,
  type PushApp,
  type TestClient,
} from '../helpers/push-app.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

const FUZZ_MS = Number(process.env.FUZZ_TIME_MS ?? 12_000);
const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);
const MAX_PAYLOAD = 64 * 1024;
const ANSWER_MS = 5_000;
const JSON_TYPE = 'application/json';
const MSGPACK_TYPE = 'application/msgpack';

type SessionEncoding = 'json' | 'msgpack';

/** What a generator knows about the frame it made, when it knows. */
type Known = 'valid' | 'invalid' | 'unknown';

/** One frame to send: its bytes, its opcode, what the generator knows of it. */
interface Frame {
  label: string;
  bytes: Uint8Array;
  /** Sent as a text frame (else binary). */
  text: boolean;
  known: Known;
}

/** The protocol's answer to a frame. */
type Answer = { kind: 'applied' } | { kind: 'error-event' } | { kind: 'close'; code: number };

const utf8 = new TextEncoder();

function encodeFor(encoding: SessionEncoding, value: unknown): Uint8Array {
  return encoding === 'json' ? utf8.encode(JSON.stringify(value)) : encodeMsgpack(value);
}

/** The answer PROTOCOL.md prescribes for `frame` on a session of this kind. */
function expectedAnswer(frame: Frame, encoding: SessionEncoding, enableErrors: boolean): Answer {
  if (frame.bytes.byteLength > MAX_PAYLOAD) return { kind: 'close', code: 1009 };
  let valid: boolean;
  try {
    parsePushConfig(
      decodePushConfigMessage(frame.bytes, encoding === 'json' ? JSON_TYPE : MSGPACK_TYPE),
    );
    valid = true;
  } catch {
    valid = false;
  }
  if (frame.known !== 'unknown') {
    assert.equal(valid ? 'valid' : 'invalid', frame.known, `generator vs protocol: ${frame.label}`);
  }
  if (valid) return { kind: 'applied' };
  return enableErrors ? { kind: 'error-event' } : { kind: 'close', code: 1003 };
}

// ---------------------------------------------------------------------------
// Generators

const identityName = fc.stringMatching(/^[a-z][a-z0-9_]{0,11}$/);
const typeName = fc.constantFrom('create', 'update', 'delete', 'custom');
const VALID_FILTERS = [
  'name == "x"',
  'priority > 2 and status != "done"',
  '(a == 1 or b == 2) and c exists',
  'tags contains ["urgent"]',
  'name matches "^ab+c"',
  'nested.path.value <= 1e3',
];
const INVALID_FILTERS = [
  '',
  'name ==',
  'a == date("2020")',
  '((a == 1)',
  'x matches "("',
  'a ~= 1',
];

/** A push config that follows section 4. */
const validConfig = fc
  .record(
    {
      identities: fc.dictionary(identityName, fc.array(typeName, { maxLength: 3 }), {
        minKeys: 1,
        maxKeys: 8,
      }),
      parameters: fc.dictionary(
        identityName,
        fc.oneof(
          fc.string({ maxLength: 8 }),
          fc.array(fc.string({ maxLength: 8 }), { maxLength: 3 }),
        ),
        { maxKeys: 4 },
      ),
      filter: fc.constantFrom(...VALID_FILTERS),
      withFilter: fc.boolean(),
    },
    { requiredKeys: ['identities', 'filter', 'withFilter'] },
  )
  .map(({ identities, parameters, filter, withFilter }) => {
    const first = Object.keys(identities)[0] as string;
    return {
      identities,
      ...(parameters !== undefined ? { parameters } : {}),
      ...(withFilter ? { filters: { [first]: filter } } : {}),
    };
  });

/** Configs of the right outline with a wrong part. */
const wrongTypes = fc.oneof(
  fc.record({ identities: fc.oneof(fc.integer(), fc.string(), fc.constant(true)) }),
  fc.record({
    identities: fc.dictionary(
      identityName,
      fc.oneof(fc.integer(), fc.string({ minLength: 1 }), fc.constant({})),
      { minKeys: 1 },
    ),
  }),
  fc.record({
    identities: fc.dictionary(identityName, fc.array(fc.integer(), { minLength: 1 }), {
      minKeys: 1,
    }),
  }),
  fc.record({
    identities: fc.constant({ task: [] }),
    filters: fc.dictionary(
      fc.constant('task'),
      fc.oneof(fc.integer(), fc.constant(null), fc.array(fc.string())),
      { minKeys: 1 },
    ),
  }),
  fc.record({
    identities: fc.constant({ task: [] }),
    filters: fc.record({ task: fc.constantFrom(...INVALID_FILTERS) }),
  }),
  fc.record({
    identities: fc.constant({ task: [] }),
    filters: fc.record({ user: fc.constantFrom(...VALID_FILTERS) }),
  }),
  fc.record({
    parameters: fc.dictionary(identityName, fc.oneof(fc.integer(), fc.constant({ a: 1 })), {
      minKeys: 1,
    }),
  }),
  // An unknown key is ignored (section 4): it is the wrongly typed known key that makes this invalid.
  fc.record({ identities: fc.oneof(fc.integer(), fc.string()), unknown: fc.jsonValue() }),
  fc.constantFrom(null, 0, 'config', [], [1, 2], true),
);

function frameOf(encoding: SessionEncoding, value: unknown, label: string, known: Known): Frame {
  return { label, bytes: encodeFor(encoding, value), text: encoding === 'json', known };
}

/** Flips, inserts and deletes bytes of a valid frame. */
function mutate(bytes: Uint8Array, edits: Array<[number, number, number]>): Uint8Array {
  const out = [...bytes];
  for (const [op, at, value] of edits) {
    const i = out.length === 0 ? 0 : at % out.length;
    if (op === 0) out[i] = value;
    else if (op === 1) out.splice(i, 0, value);
    else out.splice(i, 1);
  }
  return Uint8Array.from(out);
}

/** Nesting `depth` levels deep, in the session's encoding (as bytes: msgpack's encoder recurses). */
function nested(encoding: SessionEncoding, depth: number, inside: boolean): Uint8Array {
  if (encoding === 'json') {
    const core = '['.repeat(depth) + ']'.repeat(depth);
    return utf8.encode(inside ? `{"identities":{"task":${core}}}` : core);
  }
  // fixarray of one element (0x91) `depth` times, then nil.
  const core = new Uint8Array(depth + 1).fill(0x91);
  core[depth] = 0xc0;
  if (!inside) return core;
  const head = encodeMsgpack({ identities: { task: 0 } });
  return Uint8Array.from([...head.subarray(0, head.length - 1), ...core]);
}

const INVALID_UTF8 = [
  [0xff],
  [0xc3, 0x28],
  [0xed, 0xa0, 0x80], // a UTF-16 surrogate
  [0xf0, 0x28, 0x8c, 0x28],
  [0xc0, 0xaf], // overlong '/'
  [0xe2, 0x82], // truncated
];

function frameArb(encoding: SessionEncoding): fc.Arbitrary<Frame> {
  return fc.oneof(
    { weight: 4, arbitrary: validConfig.map((c) => frameOf(encoding, c, 'valid config', 'valid')) },
    {
      weight: 1,
      // Keys a newer client may send (section 4: ignored), beside a valid config.
      arbitrary: fc
        .tuple(
          validConfig,
          fc.oneof(fc.string({ maxLength: 20 }), fc.integer()),
          fc.dictionary(identityName, fc.integer(), { maxKeys: 3 }),
        )
        .map(([c, since, future]) =>
          frameOf(encoding, { ...c, since, future }, 'valid config with unknown keys', 'valid'),
        ),
    },
    { weight: 3, arbitrary: wrongTypes.map((c) => frameOf(encoding, c, 'wrong types', 'invalid')) },
    {
      weight: 2,
      arbitrary: fc
        .jsonValue({ maxDepth: 4 })
        .map((v) => frameOf(encoding, v, 'random JSON value', 'unknown')),
    },
    {
      weight: 3,
      arbitrary: fc
        .tuple(
          validConfig,
          fc.array(
            fc.tuple(fc.integer({ min: 0, max: 2 }), fc.nat(), fc.integer({ min: 0, max: 255 })),
            { minLength: 1, maxLength: 6 },
          ),
        )
        .map(([c, edits]) => ({
          ...frameOf(encoding, c, 'mutated config', 'unknown'),
          bytes: mutate(encodeFor(encoding, c), edits),
        })),
    },
    {
      weight: 2,
      arbitrary: fc.tuple(validConfig, fc.nat()).map(([c, cut]) => {
        const bytes = encodeFor(encoding, c);
        return {
          ...frameOf(encoding, c, 'truncated config', 'invalid'),
          bytes: bytes.subarray(0, cut % bytes.length),
        };
      }),
    },
    {
      weight: 2,
      // Random bytes in a binary frame: broken MessagePack, or a binary frame to a JSON session.
      arbitrary: fc.uint8Array({ maxLength: 600 }).map((bytes): Frame => ({
        label: 'random binary frame',
        bytes,
        text: false,
        known: 'unknown',
      })),
    },
    {
      weight: 1,
      arbitrary: fc.string({ maxLength: 200 }).map((s): Frame => ({
        label: 'random text frame',
        bytes: utf8.encode(s),
        text: true,
        known: 'unknown',
      })),
    },
    {
      weight: 2,
      arbitrary: fc
        .tuple(validConfig, fc.constantFrom(...INVALID_UTF8), fc.nat())
        .map(([c, bad, at]): Frame => {
          const bytes = utf8.encode(JSON.stringify(c));
          const i = at % (bytes.length + 1);
          return {
            label: 'invalid UTF-8 in a text frame',
            bytes: Uint8Array.from([...bytes.subarray(0, i), ...bad, ...bytes.subarray(i)]),
            text: true,
            // JSON must be UTF-8 (an invalid config); on a MessagePack session the bytes are
            // MessagePack, whatever the opcode, and may or may not decode.
            known: encoding === 'json' ? 'invalid' : 'unknown',
          };
        }),
    },
    {
      weight: 1,
      // The other encoding's bytes in the other opcode: MessagePack as text, JSON as binary.
      arbitrary: validConfig.map((c): Frame => {
        const other: SessionEncoding = encoding === 'json' ? 'msgpack' : 'json';
        return {
          label: 'the other encoding and opcode',
          bytes: encodeFor(other, c),
          text: other === 'json',
          known: 'unknown',
        };
      }),
    },
    {
      weight: 1,
      arbitrary: fc.integer({ min: 990, max: 2500 }).map((n) => {
        const identities: Record<string, string[]> = {};
        for (let i = 0; i < n; i++) identities[`i${i}`] = [];
        return frameOf(encoding, { identities }, `${n} identities`, n > 1000 ? 'invalid' : 'valid');
      }),
    },
    {
      weight: 1,
      arbitrary: fc
        .tuple(fc.integer({ min: 100, max: 30_000 }), fc.boolean())
        .map(([depth, inside]): Frame => ({
          label: `nesting ${depth} deep${inside ? ' inside identities' : ''}`,
          bytes: nested(encoding, depth, inside),
          text: encoding === 'json',
          known: 'invalid',
        })),
    },
    {
      weight: 1,
      arbitrary: fc.integer({ min: 10, max: 20_000 }).map((depth) =>
        frameOf(
          encoding,
          {
            identities: { task: [] },
            filters: { task: `${'('.repeat(depth)}a == 1${')'.repeat(depth)}` },
          },
          `filter nested ${depth} deep`,
          'unknown',
        ),
      ),
    },
    {
      weight: 1,
      arbitrary: fc.integer({ min: 1, max: 6000 }).map((n) =>
        frameOf(
          encoding,
          {
            identities: { task: [] },
            filters: { task: Array.from({ length: n }, (_, i) => `a${i} == ${i}`).join(' and ') },
          },
          `filter of ${n} comparisons`,
          'unknown',
        ),
      ),
    },
    {
      weight: 1,
      arbitrary: fc.integer({ min: MAX_PAYLOAD + 1, max: MAX_PAYLOAD * 2 }).map((size): Frame => ({
        label: `${size} bytes`,
        bytes: encodeFor(encoding, {
          identities: { task: [] },
          parameters: { pad: 'x'.repeat(size) },
        }),
        text: encoding === 'json',
        known: 'unknown',
      })),
    },
  );
}

const FRAME_ARBS: Record<SessionEncoding, fc.Arbitrary<Frame>> = {
  json: frameArb('json'),
  msgpack: frameArb('msgpack'),
};

const sessionArb = fc
  .record({
    encoding: fc.constantFrom<SessionEncoding>('json', 'msgpack'),
    enableErrors: fc.boolean(),
  })
  .chain(({ encoding, enableErrors }) =>
    fc.record({
      encoding: fc.constant(encoding),
      enableErrors: fc.constant(enableErrors),
      // A few frames per session: fewer than any per-session config rate limit.
      frames: fc.array(FRAME_ARBS[encoding], { minLength: 1, maxLength: 3 }),
    }),
  );

// ---------------------------------------------------------------------------
// A raw client that records what the server answers

class FuzzClient {
  readonly ws: WebSocket;
  readonly errors: unknown[] = [];
  readonly closed = deferred<number>();
  #errorWaiters: Array<() => void> = [];
  readonly id = randomUUID();

  constructor(url: string) {
    this.ws = new WebSocket(url, { headers: { 'x-fuzz-id': this.id } });
    this.ws.on('message', (data, isBinary) => {
      const event = decodeEventFrame(data, isBinary);
      if (event.type !== 'error') return; // markers and other events the config lets through
      this.errors.push(event.entity);
      for (const resolve of this.#errorWaiters.splice(0)) resolve();
    });
    this.ws.on('close', (code) => {
      this.closed.resolve(code);
      for (const resolve of this.#errorWaiters.splice(0)) resolve();
    });
    this.ws.on('error', () => undefined);
  }

  async open(): Promise<void> {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        this.ws.once('open', () => resolve());
        this.ws.once('unexpected-response', (_req, res) =>
          reject(new Error(`HTTP ${res.statusCode}`)),
        );
      }),
      ANSWER_MS,
      'the fuzz session did not open',
    );
  }

  /** Resolves once `n` error events arrived, or the socket closed. */
  async errorEvents(n: number): Promise<void> {
    const deadline = Date.now() + ANSWER_MS;
    while (this.errors.length < n && !this.closed.settled) {
      const d = deferred<void>();
      this.#errorWaiters.push(() => d.resolve());
      await withTimeout(
        d.promise,
        Math.max(1, deadline - Date.now()),
        `expected ${n} error events, got ${this.errors.length}`,
      );
    }
  }

  send(frame: Frame): Promise<void> {
    return new Promise((resolve, reject) =>
      // ws does not validate what it sends: a text frame carries these bytes as they are.
      this.ws.send(frame.bytes, { binary: !frame.text }, (error) =>
        error ? reject(error) : resolve(),
      ),
    );
  }
}

function isErrorObject(entity: unknown): boolean {
  const e = entity as { code?: unknown; title?: unknown; subject?: unknown };
  return e?.code === 400 && e.title === 'Bad Request' && e.subject === 'pushwire';
}

// ---------------------------------------------------------------------------

describe('fuzz: bad frames to live sessions', () => {
  const problems: string[] = [];
  const onUnhandled = (reason: unknown): void => {
    problems.push(`unhandledRejection: ${String((reason as Error)?.stack ?? reason)}`);
  };
  const onUncaught = (error: Error): void => {
    problems.push(`uncaughtException: ${error.stack ?? error.message}`);
  };
  const logged: string[] = [];
  const logger: Logger = {
    debug: () => undefined,
    info: () => undefined,
    warn: () => undefined,
    error: (obj, msg) => logged.push(`${msg} ${JSON.stringify(obj)}`),
  };
  let app: PushApp;
  let controls: TestClient[] = [];
  let markers = 0;
  let ticker: NodeJS.Timeout | undefined;
  const publishMarker = (): Promise<void> =>
    app.push.publish({ identity: 'marker', type: 'create', entity: { seq: markers++ } });

  before(async () => {
    process.on('unhandledRejection', onUnhandled);
    process.on('uncaughtException', onUncaught);
    app = await startPushApp({ options: { logger, maxPayload: MAX_PAYLOAD, pingInterval: 0 } });
    controls = await Promise.all([
      connectClient(app.wsUrl),
      connectClient(app.wsUrl, { query: { encoding: 'msgpack' } }),
    ]);
    for (const control of controls) control.sendConfig({ identities: { marker: [] } });
    await waitFor(() => app.push.sessions().every((s) => s.pushConfig !== undefined), {
      timeout: 5000,
      message: 'the control sessions did not apply their config',
    });
    ticker = setInterval(
      () => void publishMarker().catch((e: unknown) => problems.push(String(e))),
      20,
    );
  });

  after(async () => {
    clearInterval(ticker);
    await app?.close();
    process.off('unhandledRejection', onUnhandled);
    process.off('uncaughtException', onUncaught);
  });

  it(`answers every frame as the protocol says, for ${FUZZ_MS} ms`, async (t) => {
    let runs = 0;
    let frames = 0;
    let inBody = 0;
    const seen = new Map<string, number>();
    const answers = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(sessionArb, async ({ encoding, enableErrors, frames: batch }) => {
        runs++;
        const t0 = performance.now();
        const url = new URL(app.wsUrl);
        if (encoding === 'msgpack') url.searchParams.set('encoding', 'msgpack');
        if (enableErrors) url.searchParams.set('enableErrors', '');
        const client = new FuzzClient(url.toString());
        await client.open();
        const server = () => app.push.sessions().find((s) => s.header('x-fuzz-id') === client.id);
        await waitFor(() => server() !== undefined, {
          timeout: ANSWER_MS,
          message: 'session not registered',
        });
        let expectedErrors = 0;
        try {
          for (const frame of batch) {
            frames++;
            const kind = frame.label.replace(/[0-9]+/g, 'N');
            seen.set(kind, (seen.get(kind) ?? 0) + 1);
            const expected = expectedAnswer(frame, encoding, enableErrors);
            const answerKey = expected.kind === 'close' ? `close ${expected.code}` : expected.kind;
            answers.set(answerKey, (answers.get(answerKey) ?? 0) + 1);
            const before = server()?.pushConfig;
            await client.send(frame).catch(() => undefined);
            if (expected.kind === 'close') {
              const code = await withTimeout(
                client.closed.promise,
                ANSWER_MS,
                `no close for ${frame.label}`,
              );
              assert.equal(code, expected.code, `close code for ${frame.label}`);
              return;
            }
            if (expected.kind === 'error-event') {
              expectedErrors++;
              await client.errorEvents(expectedErrors);
              assert.ok(!client.closed.settled, `closed instead of an error event: ${frame.label}`);
              assert.ok(isErrorObject(client.errors.at(-1)), JSON.stringify(client.errors.at(-1)));
              continue;
            }
            await waitFor(() => server()?.pushConfig !== before || client.closed.settled, {
              timeout: ANSWER_MS,
              interval: 2,
              message: `the valid config was not applied: ${frame.label}`,
            });
            assert.ok(!client.closed.settled, `closed after a valid config: ${frame.label}`);
          }
          // The session still answers, and with nothing more than expected: an invalid sentinel
          // gets the answer after every earlier one (a session's messages are handled in order).
          await client.send({
            label: 'sentinel',
            bytes: encodeFor(encoding, 'sentinel'),
            text: encoding === 'json',
            known: 'invalid',
          });
          if (enableErrors) {
            await client.errorEvents(expectedErrors + 1);
            assert.equal(
              client.errors.length,
              expectedErrors + 1,
              'one error event per invalid frame',
            );
          } else {
            assert.equal(
              await withTimeout(client.closed.promise, ANSWER_MS, 'no close for the sentinel'),
              1003,
            );
          }
        } finally {
          client.ws.terminate();
          inBody += performance.now() - t0;
        }
      }),
      {
        plugins: [fc.interruptAfterTimeLimit(FUZZ_MS)],
        numRuns: 1_000_000,
        ...(SEED !== undefined ? { seed: SEED } : {}),
      },
    );
    t.diagnostic(
      `fuzz: ${runs} sessions, ${frames} frames in ${FUZZ_MS} ms (${inBody.toFixed(0)} ms in sessions); answers ${JSON.stringify(Object.fromEntries(answers))}; kinds ${JSON.stringify(Object.fromEntries(seen))}`,
    );
    assert.ok(runs >= 50, `only ${runs} runs in ${FUZZ_MS} ms`);
  });

  it('kept every control session receiving, crashed nothing, logged no error', async () => {
    clearInterval(ticker);
    await publishMarker();
    const last = markers - 1;
    for (const control of controls) {
      await control.waitForEvents(markers, 10_000);
      const seqs = control.events.map((e) => (e.entity as { seq: number }).seq);
      assert.deepEqual(
        seqs,
        Array.from({ length: last + 1 }, (_, i) => i),
        'every marker, in order',
      );
    }
    assert.deepEqual(problems, []);
    assert.deepEqual(logged, []);
    await waitFor(() => app.push.stats().sessionsOpen === controls.length, {
      timeout: 5000,
      message: 'fuzz sessions were not all unregistered',
    });
  });
});
