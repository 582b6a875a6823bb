// The wire protocol, PROTOCOL.md: one describe per rule of sections 1
// (encodings), 3 (events), 4 (push config) and 8 (publication envelope),
// then the pieces the server builds them with: WebSocket frames, subjects,
// cookies and claims, and the error objects of section 2.
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import assert from 'node:assert/strict';
import { decode, encode, ExtData, ExtensionCodec } from '@msgpack/msgpack';
import {
  BadRequestError,
  ChainError,
  ERROR_SUBJECT,
  ForbiddenError,
  InvalidEventError,
  InvalidPushConfigError,
  NotConnectedError,
  PolicyViolationError,
  PubSubError,
  PushError,
  ServiceUnavailableError,
  UnsupportedMediaTypeError,
  statusTitle,
  TooManyRequestsError,
  UnauthorizedError,
} from '../../lib/errors.js';
import { buildFrame, buildTextFrame } from '../../lib/frame.js';
import {
  encodingFromAccept,
  encodingFromContentType,
  encodingFromParameter,
  negotiateEncodings,
  UnsupportedEncodingError,
  type Encoding,
} from '../../lib/protocol/encoding.js';
import {
  decodeJsonEvent,
  decodeMsgpackEvent,
  encodeEntity,
  encodeJsonEvent,
  encodeMsgpackEvent,
  EventFormatError,
  normalizeTimestamp,
  wireEventFrom,
  type PushEvent,
  type WireEvent,
} from '../../lib/protocol/event.js';
import {
  decodePublication,
  encodePublication,
  publicationSubject,
  ResponseMode,
  subscriptionSubject,
} from '../../lib/protocol/publication.js';
import {
  DEFAULT_PUSH_CONFIG_LIMITS,
  decodePushConfigMessage,
  parsePushConfig,
  PushConfigError,
  type ConfigTarget,
} from '../../lib/protocol/push-config.js';
import { subjectMatches } from '../../lib/pubsub/contract.js';
import { claimsToMap, parseCookies } from '../../lib/session.js';

const JSON_TYPE = 'application/json';
const MSGPACK_TYPE = 'application/msgpack';

// ---------------------------------------------------------------------------
// MessagePack written by hand, the way a Go bahamut server writes it
// (vmihailenco/msgpack): struct fields as str keys in declaration order,
// `[]byte` as bin, `int32` as 0xd2 and `int` as 0xd3 (no compaction),
// `time.Time` as the timestamp extension -1. Independent of the decoder
// under test.

const bytes = (...parts: Array<Uint8Array | number[]>): Buffer =>
  Buffer.concat(parts.map((p) => (p instanceof Uint8Array ? p : Buffer.from(p))));

function mpStr(value: string): Buffer {
  const b = Buffer.from(value, 'utf8');
  if (b.length < 32) return bytes([0xa0 | b.length], b);
  if (b.length < 256) return bytes([0xd9, b.length], b);
  throw new RangeError('mpStr: test strings stay under 256 bytes');
}

function mpBin(value: Uint8Array): Buffer {
  if (value.length < 256) return bytes([0xc4, value.length], value);
  const head = Buffer.alloc(3);
  head[0] = 0xc5;
  head.writeUInt16BE(value.length, 1);
  return bytes(head, value);
}

function mpMap(entries: ReadonlyArray<readonly [string, Uint8Array]>): Buffer {
  if (entries.length >= 16) throw new RangeError('mpMap: a fixmap holds at most 15 entries');
  return bytes([0x80 | entries.length], ...entries.flatMap(([k, v]) => [mpStr(k), v]));
}

function mpInt32(value: number): Buffer {
  const b = Buffer.alloc(5);
  b[0] = 0xd2;
  b.writeInt32BE(value, 1);
  return b;
}

function mpInt64(value: number): Buffer {
  const b = Buffer.alloc(9);
  b[0] = 0xd3;
  b.writeBigInt64BE(BigInt(value), 1);
  return b;
}

/** The timestamp extension (-1) in its 8-byte form: nsec (30 bits) then sec (34 bits). */
function mpTimestamp64(sec: number, nsec: number): Buffer {
  const b = Buffer.alloc(10);
  b[0] = 0xd7;
  b[1] = 0xff;
  b.writeBigUInt64BE((BigInt(nsec) << 34n) | BigInt(sec), 2);
  return b;
}

/** sec and nsec of a timestamp extension's data, in any of its three forms. */
function timestampParts(data: Uint8Array): { sec: number; nsec: number } {
  const view = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (view.length === 4) return { sec: view.readUInt32BE(0), nsec: 0 };
  if (view.length === 8) {
    const both = view.readBigUInt64BE(0);
    return { sec: Number(both & 0x3ffffffffn), nsec: Number(both >> 34n) };
  }
  if (view.length === 12)
    return { nsec: view.readUInt32BE(0), sec: Number(view.readBigInt64BE(4)) };
  throw new Error(`a timestamp extension of ${view.length} bytes`);
}

/** Decodes MessagePack keeping every timestamp extension as raw ExtData, to prove its type. */
function decodeRawTimestamps(data: Uint8Array): unknown {
  const codec = new ExtensionCodec();
  codec.register({
    type: -1,
    encode: () => null,
    decode: (ext) => new ExtData(-1, Uint8Array.from(ext)),
  });
  return decode(data, { extensionCodec: codec });
}

const asMap = (value: unknown): Record<string, unknown> => {
  assert.ok(value !== null && typeof value === 'object' && !Array.isArray(value), 'a map');
  return value as Record<string, unknown>;
};

const sameBytes = (actual: unknown, expected: Uint8Array, message?: string): void => {
  assert.ok(actual instanceof Uint8Array, message ?? 'a bin (Uint8Array)');
  assert.deepEqual(Buffer.from(actual), Buffer.from(expected), message);
};

// The event of PROTOCOL.md section 3.
const WHEN = new Date('2026-11-23T21:40:00.123Z');
const WHEN_SEC = Math.floor(WHEN.getTime() / 1000);
const ENTITY = { ID: '42', name: 'hello' };
/** The entity as Go writes it: a map of two str → str. */
const GO_ENTITY = mpMap([
  ['ID', mpStr('42')],
  ['name', mpStr('hello')],
]);

/** elemental's Event as a Go server writes it; `time.Now()` has nanoseconds. */
function goEvent(overrides: Record<string, Uint8Array | undefined> = {}): Buffer {
  const fields: Record<string, Uint8Array | undefined> = {
    entity: mpBin(GO_ENTITY),
    identity: mpStr('task'),
    type: mpStr('create'),
    timestamp: mpTimestamp64(WHEN_SEC, 123_456_789),
    encoding: mpStr(MSGPACK_TYPE),
    ...overrides,
  };
  return mpMap(
    Object.entries(fields).flatMap(([k, v]) => (v === undefined ? [] : [[k, v] as const])),
  );
}

// ===========================================================================
// Section 1: encodings.

describe('section 1: Content-Type chooses how the server reads client messages', () => {
  const table: Array<[string | undefined, Encoding]> = [
    [undefined, JSON_TYPE],
    ['', JSON_TYPE],
    ['application/json', JSON_TYPE],
    ['application/json; charset=utf-8', JSON_TYPE],
    ['application/json;charset=UTF-8', JSON_TYPE],
    ['APPLICATION/JSON', JSON_TYPE],
    ['*/*', JSON_TYPE],
    ['application/*', JSON_TYPE],
    ['application/msgpack', MSGPACK_TYPE],
    ['application/msgpack; charset=binary', MSGPACK_TYPE],
    [' Application/MsgPack ', MSGPACK_TYPE],
  ];
  for (const [header, expected] of table) {
    it(`${header === undefined ? 'absent' : JSON.stringify(header)} → ${expected}`, () => {
      assert.equal(encodingFromContentType(header), expected);
    });
  }
});

describe('section 1: Accept chooses how the server writes events; the first encoding listed wins', () => {
  const table: Array<[string | undefined, Encoding]> = [
    [undefined, JSON_TYPE],
    ['', JSON_TYPE],
    ['   ', JSON_TYPE],
    ['application/json', JSON_TYPE],
    ['application/json; charset=utf-8', JSON_TYPE],
    ['*/*', JSON_TYPE],
    ['application/*', JSON_TYPE],
    ['application/msgpack', MSGPACK_TYPE],
    ['application/msgpack;q=1.0', MSGPACK_TYPE],
    ['application/msgpack, */*', MSGPACK_TYPE],
    ['application/json, application/msgpack', JSON_TYPE],
    ['application/msgpack, application/json', MSGPACK_TYPE],
    ['text/html, application/msgpack', MSGPACK_TYPE],
    ['text/html,application/xhtml+xml, */*;q=0.8', JSON_TYPE],
    ['image/png, application/*', JSON_TYPE],
  ];
  for (const [header, expected] of table) {
    it(`${header === undefined ? 'absent' : JSON.stringify(header)} → ${expected}`, () => {
      assert.equal(encodingFromAccept(header), expected);
    });
  }
});

describe('section 1: the encoding parameter (extension) names json or msgpack', () => {
  const table: Array<[string, Encoding]> = [
    ['json', JSON_TYPE],
    ['msgpack', MSGPACK_TYPE],
    ['JSON', JSON_TYPE],
    [' msgpack ', MSGPACK_TYPE],
    ['application/json', JSON_TYPE],
    ['application/msgpack', MSGPACK_TYPE],
  ];
  for (const [value, expected] of table) {
    it(`${JSON.stringify(value)} → ${expected}`, () => {
      assert.equal(encodingFromParameter(value), expected);
    });
  }
});

describe('section 1: each direction is chosen on its own; the encoding parameter sets both and wins', () => {
  // [Content-Type, Accept, encoding parameter, read, write]
  const table: Array<
    [string | undefined, string | undefined, string | undefined, Encoding, Encoding]
  > = [
    [undefined, undefined, undefined, JSON_TYPE, JSON_TYPE],
    ['application/msgpack', undefined, undefined, MSGPACK_TYPE, JSON_TYPE],
    [undefined, 'application/msgpack', undefined, JSON_TYPE, MSGPACK_TYPE],
    ['application/msgpack', 'application/msgpack', undefined, MSGPACK_TYPE, MSGPACK_TYPE],
    ['application/json', 'application/json', 'msgpack', MSGPACK_TYPE, MSGPACK_TYPE],
    ['application/msgpack', 'application/msgpack', 'json', JSON_TYPE, JSON_TYPE],
    // The parameter wins even over headers that would be refused on their own.
    ['text/plain', 'text/html', 'msgpack', MSGPACK_TYPE, MSGPACK_TYPE],
  ];
  for (const [contentType, accept, parameter, read, write] of table) {
    it(`Content-Type ${contentType ?? '-'}, Accept ${accept ?? '-'}, encoding ${parameter ?? '-'} → read ${read}, write ${write}`, () => {
      assert.deepEqual(negotiateEncodings(contentType, accept, parameter), { read, write });
    });
  }
});

describe('section 1: any other media type is an UnsupportedEncodingError naming its source', () => {
  const table: Array<[string, () => unknown, string, string]> = [
    ['Content-Type', () => encodingFromContentType('text/plain'), 'Content-Type', 'text/plain'],
    [
      'Content-Type',
      () => encodingFromContentType('application/x-msgpack'),
      'Content-Type',
      'application/x-msgpack',
    ],
    [
      'Content-Type',
      () => encodingFromContentType('multipart/form-data; boundary=x'),
      'Content-Type',
      'multipart/form-data',
    ],
    ['Accept', () => encodingFromAccept('text/html'), 'Accept', 'text/html'],
    ['Accept', () => encodingFromAccept('image/png, text/plain'), 'Accept', 'image/png'],
    ['Accept', () => encodingFromAccept('application/xml'), 'Accept', 'application/xml'],
    ['encoding', () => encodingFromParameter('xml'), 'encoding', 'xml'],
    ['encoding', () => encodingFromParameter(''), 'encoding', '""'],
    ['encoding', () => encodingFromParameter('messagepack'), 'encoding', 'messagepack'],
    [
      'Content-Type, through negotiation',
      () => negotiateEncodings('text/xml', undefined, undefined),
      'Content-Type',
      'text/xml',
    ],
    [
      'Accept, through negotiation',
      () => negotiateEncodings(undefined, 'text/xml', undefined),
      'Accept',
      'text/xml',
    ],
    [
      'encoding, through negotiation',
      () => negotiateEncodings('application/json', 'application/json', 'yaml'),
      'encoding',
      'yaml',
    ],
  ];
  for (const [what, call, source, quoted] of table) {
    it(`${what}: ${quoted}`, () => {
      assert.throws(call, (error: unknown) => {
        assert.ok(error instanceof UnsupportedEncodingError);
        assert.equal(error.name, 'UnsupportedEncodingError');
        assert.equal(error.source, source);
        assert.ok(error.message.startsWith(`unsupported ${source}: `), error.message);
        assert.ok(error.message.includes(quoted), error.message);
        return true;
      });
    });
  }

  it('quotes at most 100 characters of the value', () => {
    assert.throws(
      () => encodingFromContentType(`text/${'x'.repeat(10_000)}`),
      (error: unknown) => error instanceof Error && error.message.length < 150,
    );
  });
});

// ===========================================================================
// Section 3: events.

describe('section 3: a MessagePack event is a map of exactly five keys; entity is a bin of MessagePack bytes', () => {
  const entityBytes = encodeEntity(ENTITY);
  const event = encodeMsgpackEvent('task', 'create', entityBytes, WHEN);

  it('is a fixmap of five entries', () => {
    assert.equal(event[0], 0x85);
  });

  it('has the keys entity, identity, type, timestamp, encoding, in that order', () => {
    assert.deepEqual(Object.keys(asMap(decode(event))), [
      'entity',
      'identity',
      'type',
      'timestamp',
      'encoding',
    ]);
  });

  it('holds the entity as a bin of its MessagePack bytes, not as a nested map', () => {
    const map = asMap(decode(event));
    sameBytes(map.entity, entityBytes);
    assert.deepEqual(decode(map.entity as Uint8Array), ENTITY);
    // Proven on the bytes too: the value after the key "entity" is a bin8 (0xc4).
    const at = event.indexOf(0xa6) + 7; // fixstr(6) "entity", then the value
    assert.equal(Buffer.from(event.subarray(at - 6, at)).toString(), 'entity');
    assert.equal(event[at], 0xc4);
    assert.equal(event[at + 1], entityBytes.length);
  });

  it('says identity, type and application/msgpack as str', () => {
    const map = asMap(decode(event));
    assert.equal(map.identity, 'task');
    assert.equal(map.type, 'create');
    assert.equal(map.encoding, MSGPACK_TYPE);
  });
});

describe('section 3: the MessagePack timestamp is the timestamp extension, type -1', () => {
  it('is ExtData of type -1 holding the seconds and nanoseconds of the date', () => {
    const event = encodeMsgpackEvent('task', 'create', encodeEntity(ENTITY), WHEN);
    const ts = asMap(decodeRawTimestamps(event)).timestamp;
    assert.ok(ts instanceof ExtData, 'an extension, not a string or a number');
    assert.equal(ts.type, -1);
    assert.deepEqual(timestampParts(ts.data as Uint8Array), { sec: WHEN_SEC, nsec: 123_000_000 });
  });

  it('is fixext8 with type byte 0xff on the wire', () => {
    const event = Buffer.from(encodeMsgpackEvent('task', 'create', encodeEntity(1), WHEN));
    const key = mpStr('timestamp');
    const at = event.indexOf(key) + key.length;
    assert.ok(at > key.length - 1);
    assert.deepEqual([...event.subarray(at, at + 2)], [0xd7, 0xff]);
  });

  const dates: Array<[string, Date]> = [
    ['a whole second (4-byte form)', new Date('2026-11-23T21:40:00Z')],
    ['milliseconds (8-byte form)', WHEN],
    ['before 1970 (12-byte form)', new Date('1969-07-20T20:17:40.5Z')],
    ['after 2514 (12-byte form)', new Date('2600-01-01T00:00:00.001Z')],
  ];
  for (const [what, date] of dates) {
    it(`round-trips ${what} as type -1`, () => {
      const event = encodeMsgpackEvent('task', 'create', encodeEntity(null), date);
      const ts = asMap(decodeRawTimestamps(event)).timestamp as ExtData;
      assert.equal(ts.type, -1);
      const { sec, nsec } = timestampParts(ts.data as Uint8Array);
      assert.equal(sec * 1000 + nsec / 1e6, date.getTime());
      assert.equal(decodeMsgpackEvent(event).timestamp.getTime(), date.getTime());
    });
  }

  it('reads the nanoseconds a Go server writes, down to the millisecond', () => {
    assert.equal(decodeMsgpackEvent(goEvent()).timestamp.toISOString(), '2026-11-23T21:40:00.123Z');
  });
});

describe('section 3: a JSON event is text with the five keys in order and an ISO 8601 timestamp', () => {
  const expected =
    '{"entity":{"ID":"42","name":"hello"},"identity":"task","type":"create",' +
    '"timestamp":"2026-11-23T21:40:00.123Z","encoding":"application/json"}';

  it('writes the example of PROTOCOL.md section 3, byte for byte', () => {
    assert.equal(encodeJsonEvent('task', 'create', JSON.stringify(ENTITY), WHEN), expected);
  });

  it('is what a WireEvent writes for JSON sessions, whatever it was decoded from', () => {
    assert.equal(
      wireEventFrom({ identity: 'task', type: 'create', entity: ENTITY }, WHEN).toJson(),
      expected,
    );
    assert.equal(decodeMsgpackEvent(goEvent()).toJson(), expected);
  });

  it('escapes identity and type as JSON strings', () => {
    const text = encodeJsonEvent('ta"sk\n', 'cré\\ate', '1', WHEN);
    assert.deepEqual(JSON.parse(text), {
      entity: 1,
      identity: 'ta"sk\n',
      type: 'cré\\ate',
      timestamp: '2026-11-23T21:40:00.123Z',
      encoding: JSON_TYPE,
    });
  });

  it('writes a null entity as null', () => {
    const event = wireEventFrom({ identity: 'task', type: 'delete', entity: null }, WHEN);
    assert.equal(asMap(JSON.parse(event.toJson())).entity, null);
  });
});

describe('section 3: a received event decodes its entity lazily, and once', () => {
  it('does not decode the entity to read identity, type and timestamp', () => {
    const event = decodeMsgpackEvent(goEvent());
    assert.equal(event.identity, 'task');
    assert.equal(event.type, 'create');
    assert.equal(event.entityEncoding, MSGPACK_TYPE);
    assert.equal(event.entityDecoded, false);
  });

  it('decodes on the first read and returns the same object afterwards', () => {
    const event = decodeMsgpackEvent(goEvent());
    const first = event.entity;
    assert.equal(event.entityDecoded, true);
    assert.deepEqual(first, ENTITY);
    assert.equal(event.entity, first);
  });

  it('writes JSON from the entity already decoded, without decoding it again', () => {
    const event = decodeMsgpackEvent(goEvent());
    const entity = event.entity as Record<string, string>;
    // Had toJson decoded again, it would not see this change.
    entity.name = 'changed in place';
    assert.equal(asMap(asMap(JSON.parse(event.toJson())).entity).name, 'changed in place');
  });

  it('decodes an entity that does not decode only once, and throws the same EventFormatError each time', () => {
    const event = decodeMsgpackEvent(goEvent({ entity: mpBin(Uint8Array.of(0xc1)) }));
    let first: unknown;
    assert.throws(
      () => event.entity,
      (error: unknown) => {
        first = error;
        return (
          error instanceof EventFormatError && /the entity does not decode/.test(error.message)
        );
      },
    );
    assert.throws(
      () => event.entity,
      (error) => error === first,
    );
    assert.equal(event.entityDecoded, false);
  });

  it('cannot write JSON for an entity that does not decode', () => {
    const event = decodeMsgpackEvent(goEvent({ entity: mpBin(Uint8Array.of(0x92, 0x01)) }));
    assert.throws(() => event.toJson(), EventFormatError);
  });
});

describe("section 3: a server forwards the publisher's MessagePack bytes unchanged", () => {
  it('returns the very bytes of a Go event, nanoseconds and all, without decoding the entity', () => {
    const bytes = goEvent();
    const event = decodeMsgpackEvent(bytes);
    assert.equal(event.toMsgpack(), bytes);
    assert.equal(event.entityDecoded, false);
  });

  it('returns the very bytes of an event this library encoded', () => {
    const bytes = encodeMsgpackEvent('task', 'create', encodeEntity(ENTITY), WHEN);
    assert.equal(decodeMsgpackEvent(bytes).toMsgpack(), bytes);
  });

  it('forwards even an entity that does not decode: MessagePack sessions never need it', () => {
    const bytes = goEvent({ entity: mpBin(Uint8Array.of(0xc1)) });
    assert.equal(decodeMsgpackEvent(bytes).toMsgpack(), bytes);
  });

  // A publisher that strays from section 3 is not forwarded as it is: the
  // server re-encodes the event so that its own clients always get section 3.
  const strays: Array<[string, Buffer]> = [
    ['a timestamp written as a string', goEvent({ timestamp: mpStr(WHEN.toISOString()) })],
    ['a timestamp written as milliseconds', goEvent({ timestamp: mpInt64(WHEN.getTime()) })],
    ['no encoding key', goEvent({ encoding: undefined })],
    ['an empty encoding', goEvent({ encoding: mpStr('') })],
    ['the entity as a nested map', goEvent({ entity: GO_ENTITY })],
  ];
  for (const [what, bytes] of strays) {
    it(`re-encodes an event with ${what} into the five keys of section 3`, () => {
      const out = decodeMsgpackEvent(bytes).toMsgpack();
      assert.notDeepEqual(Buffer.from(out), bytes);
      const map = asMap(decodeRawTimestamps(out));
      assert.deepEqual(Object.keys(map), ['entity', 'identity', 'type', 'timestamp', 'encoding']);
      assert.ok(map.timestamp instanceof ExtData && map.timestamp.type === -1);
      assert.equal(map.encoding, MSGPACK_TYPE);
      assert.ok(map.entity instanceof Uint8Array);
      assert.deepEqual(decode(map.entity), ENTITY);
    });
  }

  it('re-encodes, without decoding, the entity bytes of an event it cannot forward', () => {
    const event = decodeMsgpackEvent(goEvent({ encoding: undefined }));
    const map = asMap(decode(event.toMsgpack()));
    sameBytes(map.entity, GO_ENTITY);
    assert.equal(event.entityDecoded, false);
  });
});

describe('section 3: an entity encoded as JSON inside a MessagePack event', () => {
  const jsonEntity = Buffer.from('{"ID":"42","name":"hello"}');
  const bytes = goEvent({ entity: mpBin(jsonEntity), encoding: mpStr(JSON_TYPE) });

  it('is read as JSON', () => {
    const event = decodeMsgpackEvent(bytes);
    assert.equal(event.entityEncoding, JSON_TYPE);
    assert.deepEqual(event.entity, ENTITY);
  });

  it('is written to JSON sessions as the entity itself', () => {
    assert.deepEqual(asMap(JSON.parse(decodeMsgpackEvent(bytes).toJson())).entity, ENTITY);
  });

  it('is re-encoded for MessagePack sessions as a bin of MessagePack bytes, not forwarded', () => {
    const out = decodeMsgpackEvent(bytes).toMsgpack();
    assert.notEqual(out, bytes);
    const map = asMap(decode(out));
    assert.equal(map.encoding, MSGPACK_TYPE);
    assert.ok(map.entity instanceof Uint8Array);
    assert.deepEqual(decode(map.entity), ENTITY);
  });

  const broken: Array<[string, string]> = [
    ['text that is not JSON', '{"ID": 42'],
    ['text that would add keys to the event', '{"ID":"42"},"identity":"admin","x":{}'],
    ['an empty entity', ''],
  ];
  for (const [what, text] of broken) {
    it(`is never written to JSON sessions when it is ${what}`, () => {
      const event = decodeMsgpackEvent(
        goEvent({ entity: mpBin(Buffer.from(text)), encoding: mpStr(JSON_TYPE) }),
      );
      assert.throws(() => event.toJson(), EventFormatError);
    });
  }
});

describe('section 3: a malformed event is an EventFormatError', () => {
  const table: Array<[string, Uint8Array, RegExp]> = [
    ['no bytes', new Uint8Array(0), /does not decode/],
    ['a byte MessagePack never uses', Uint8Array.of(0xc1), /does not decode/],
    ['truncated bytes', goEvent().subarray(0, 40), /does not decode/],
    ['trailing bytes', bytes(goEvent(), [0x00]), /does not decode/],
    ['an array', encode(['task', 'create']), /not a map/],
    ['a string', encode('task'), /not a map/],
    ['nil', encode(null), /not a map/],
    ['a bin', encode(Uint8Array.of(1, 2)), /not a map/],
    ['no identity', goEvent({ identity: undefined }), /identity/],
    ['an identity that is not a string', goEvent({ identity: mpInt32(7) }), /identity/],
    ['no type', goEvent({ type: undefined }), /type/],
    ['a type that is not a string', goEvent({ type: mpBin(Buffer.from('create')) }), /type/],
    ['no timestamp', goEvent({ timestamp: undefined }), /timestamp/],
    ['a timestamp that is not a date', goEvent({ timestamp: mpStr('yesterday') }), /timestamp/],
    [
      'a timestamp of another extension type',
      goEvent({ timestamp: bytes([0xd6, 0x05, 0, 0, 0, 1]) }),
      /timestamp/,
    ],
    ['an unsupported encoding', goEvent({ encoding: mpStr('application/xml') }), /encoding/],
    ['an encoding that is not a string', goEvent({ encoding: mpInt32(1) }), /encoding/],
    ['a __proto__ key', mpMap([['__proto__', mpMap([])]]), /does not decode/],
  ];
  for (const [what, data, message] of table) {
    it(`refuses ${what}`, () => {
      assert.throws(
        () => decodeMsgpackEvent(data),
        (error: unknown) => error instanceof EventFormatError && message.test(error.message),
      );
    });
  }

  const jsonTable: Array<[string, string]> = [
    ['text that is not JSON', '{"identity":'],
    ['a JSON array', '["task"]'],
    ['no type', '{"identity":"task","timestamp":"2026-11-23T21:40:00Z","entity":{}}'],
    ['a bad timestamp', '{"identity":"task","type":"create","timestamp":"soon","entity":{}}'],
  ];
  for (const [what, text] of jsonTable) {
    it(`refuses, in JSON, ${what}`, () => {
      assert.throws(() => decodeJsonEvent(Buffer.from(text)), EventFormatError);
    });
  }

  it('reads a well-formed JSON event, its entity nested', () => {
    const event = decodeJsonEvent(
      Buffer.from(encodeJsonEvent('task', 'update', JSON.stringify(ENTITY), WHEN)),
    );
    assert.equal(event.identity, 'task');
    assert.equal(event.type, 'update');
    assert.equal(event.timestamp.getTime(), WHEN.getTime());
    assert.deepEqual(event.entity, ENTITY);
  });
});

describe('section 3: an application event is { identity, type, entity, timestamp? }', () => {
  const valid: Array<[string, PushEvent, number | undefined]> = [
    ['a Date', { identity: 'task', type: 'create', entity: {}, timestamp: WHEN }, WHEN.getTime()],
    [
      'an RFC 3339 string',
      { identity: 'task', type: 'create', entity: {}, timestamp: '2026-11-23T21:40:00.123Z' },
      WHEN.getTime(),
    ],
    [
      'milliseconds',
      { identity: 'task', type: 'create', entity: {}, timestamp: WHEN.getTime() },
      WHEN.getTime(),
    ],
    [
      'a null entity and an empty identity (error events)',
      { identity: '', type: 'error', entity: null },
      undefined,
    ],
  ];
  for (const [what, event, expected] of valid) {
    it(`accepts ${what}`, () => {
      const before = Date.now();
      const at = normalizeTimestamp(event).getTime();
      if (expected === undefined) assert.ok(at >= before && at <= Date.now(), 'defaults to now');
      else assert.equal(at, expected);
    });
  }

  const invalid: Array<[string, unknown, RegExp]> = [
    ['null', null, /must be an object/],
    ['a string', 'task created', /must be an object/],
    ['no identity', { type: 'create', entity: {} }, /identity/],
    ['an identity that is not a string', { identity: 1, type: 'create', entity: {} }, /identity/],
    ['no type', { identity: 'task', entity: {} }, /type/],
    ['an empty type', { identity: 'task', type: '', entity: {} }, /type/],
    ['no entity', { identity: 'task', type: 'create' }, /entity/],
    [
      'a timestamp that is not a date',
      { identity: 'task', type: 'create', entity: {}, timestamp: 'soon' },
      /timestamp/,
    ],
    [
      'an invalid Date',
      { identity: 'task', type: 'create', entity: {}, timestamp: new Date(NaN) },
      /timestamp/,
    ],
  ];
  for (const [what, event, message] of invalid) {
    it(`refuses ${what}`, () => {
      assert.throws(
        () => normalizeTimestamp(event as PushEvent),
        (error: unknown) => error instanceof EventFormatError && message.test(error.message),
      );
    });
  }
});

// ===========================================================================
// Section 4: the push config.

const target = (identity: string, type: string, entity: unknown = {}): ConfigTarget => ({
  identity,
  type,
  entity,
});

describe('section 4: the shapes a push config may have', () => {
  it('accepts the example of PROTOCOL.md section 4', () => {
    const config = parsePushConfig({
      identities: { task: ['create', 'update'], user: [] },
      filters: { task: 'status == "open" and priority > 2' },
      parameters: { namespace: ['/acme'] },
    });
    assert.deepEqual(
      config.identities,
      new Map([
        ['task', new Set(['create', 'update'])],
        ['user', null],
      ]),
    );
    assert.deepEqual([...config.filters.keys()], ['task']);
    assert.equal(config.hasFilters, true);
    assert.deepEqual({ ...config.parameters }, { namespace: ['/acme'] });
  });

  const accepted: Array<[string, unknown]> = [
    ['an empty object', {}],
    ['nulls, as Go writes nil maps', { identities: null, filters: null, parameters: null }],
    ['empty maps', { identities: {}, filters: {}, parameters: {} }],
    ['a null list of types, as Go writes a nil slice', { identities: { task: null } }],
    ['parameters as strings', { parameters: { namespace: '/acme' } }],
    ['an empty list of parameter values', { parameters: { namespace: [] } }],
  ];
  for (const [what, value] of accepted) {
    it(`accepts ${what}`, () => {
      assert.ok(parsePushConfig(value));
    });
  }

  it('keeps since (the history extension) as a string, outside the selector', () => {
    const config = parsePushConfig({ identities: { task: [] }, since: 'abc:12' });
    assert.equal(config.input.since, 'abc:12');
    assert.equal(parsePushConfig({ since: 42 }).input.since, '', 'not a string: no position');
    assert.equal(
      config.selector.key,
      parsePushConfig({ identities: { task: [] } }).selector.key,
      'since does not change which events pass',
    );
  });

  it('ignores keys it does not know, as bahamut does (a newer client must not be cut off)', () => {
    const config = parsePushConfig({
      identities: { task: ['create'] },
      identity: { user: [] },
      future: { nested: [1, 2] },
    });
    assert.deepEqual(Object.keys(config.input), ['identities']);
    assert.equal(
      config.selector.key,
      parsePushConfig({ identities: { task: ['create'] } }).selector.key,
      'an unknown key does not change what the config selects',
    );
    assert.equal(config.allows({ identity: 'user', type: 'create', entity: {} }, []), false);
    assert.equal(config.allows({ identity: 'task', type: 'create', entity: {} }, []), true);
  });

  const refused: Array<[string, unknown, RegExp]> = [
    ['null', null, /the push config must be an object/],
    ['a list', [], /the push config must be an object/],
    ['a string', '{}', /the push config must be an object/],
    ['a number', 1, /the push config must be an object/],
    ['a date (a MessagePack timestamp)', new Date(), /the push config must be an object/],
    ['identities as a list', { identities: ['task'] }, /identities must be an object/],
    ['identities as a string', { identities: 'task' }, /identities must be an object/],
    ['identities as a date', { identities: new Date() }, /identities must be an object/],
    [
      'types as a string',
      { identities: { task: 'create' } },
      /identities\.task must be a list of event types/,
    ],
    [
      'types that are not strings',
      { identities: { task: [1] } },
      /identities\.task must be a list/,
    ],
    [
      'a null type among types',
      { identities: { task: ['create', null] } },
      /identities\.task must be a list/,
    ],
    [
      'types as a map',
      { identities: { task: { create: true } } },
      /identities\.task must be a list/,
    ],
    [
      'filters as a list',
      { identities: { task: [] }, filters: ['x == 1'] },
      /filters must be an object/,
    ],
    [
      'a filter that is not a string',
      { identities: { task: [] }, filters: { task: 1 } },
      /filters\.task must be a string/,
    ],
    ['parameters as a list', { parameters: ['a'] }, /parameters must be an object/],
    [
      'a parameter that is a number',
      { parameters: { page: 1 } },
      /parameters\.page must be a string or a list of strings/,
    ],
    [
      'a parameter list holding a number',
      { parameters: { page: ['1', 2] } },
      /parameters\.page must be/,
    ],
    ['a parameter that is a map', { parameters: { page: {} } }, /parameters\.page must be/],
  ];
  for (const [what, value, message] of refused) {
    it(`refuses ${what}, saying what is wrong`, () => {
      assert.throws(
        () => parsePushConfig(value),
        (error: unknown) => error instanceof PushConfigError && message.test(error.message),
      );
    });
  }

  it('says which identity or parameter is wrong in data', () => {
    assert.throws(() => parsePushConfig({ identities: { task: 'x' } }), {
      data: { identity: 'task' },
    });
    assert.throws(() => parsePushConfig({ parameters: { page: 1 } }), {
      data: { parameter: 'page' },
    });
  });

  it('keeps the config as the client sent it, normalized, in input', () => {
    const config = parsePushConfig({
      identities: { task: null, user: ['create'] },
      parameters: { a: 'x' },
    });
    assert.deepEqual({ ...config.input.identities }, { task: [], user: ['create'] });
    assert.deepEqual({ ...config.input.parameters }, { a: ['x'] });
  });
});

describe('section 4: identities absent or empty let every event pass', () => {
  for (const value of [{}, { identities: null }, { identities: {} }]) {
    it(`${JSON.stringify(value)} passes any identity and type`, () => {
      const config = parsePushConfig(value);
      assert.equal(config.identities, null);
      assert.equal(config.allows(target('task', 'create'), []), true);
      assert.equal(config.allows(target('anything', 'whatever'), []), true);
    });
  }
});

describe('section 4: an identity passes with the listed types, or every type when the list is empty or null', () => {
  const config = parsePushConfig({
    identities: { task: ['create', 'update'], user: [], file: null },
  });
  // [identity, type, passes]
  const table: Array<[string, string, boolean]> = [
    ['task', 'create', true],
    ['task', 'update', true],
    ['task', 'delete', false],
    ['task', 'CREATE', false],
    ['user', 'create', true],
    ['user', 'anything', true],
    ['file', 'delete', true],
    ['project', 'create', false],
    ['Task', 'create', false],
  ];
  for (const [identity, type, passes] of table) {
    it(`${identity}/${type} → ${passes ? 'passes' : 'does not pass'}`, () => {
      assert.equal(config.allows(target(identity, type), []), passes);
    });
  }
});

describe('section 4: a filter must name an identity that is a key of identities', () => {
  const table: Array<[string, unknown]> = [
    ['no identities', { filters: { task: 'a == 1' } }],
    ['empty identities', { identities: {}, filters: { task: 'a == 1' } }],
    ['another identity only', { identities: { user: [] }, filters: { task: 'a == 1' } }],
  ];
  for (const [what, value] of table) {
    it(`refuses a filter on task with ${what}`, () => {
      assert.throws(() => parsePushConfig(value), {
        name: 'PushConfigError',
        message: 'filters.task names an identity that is not in identities',
        data: { identity: 'task' },
      });
    });
  }

  it('refuses a filter that does not parse, saying where', () => {
    assert.throws(
      () => parsePushConfig({ identities: { task: [] }, filters: { task: 'status ==' } }),
      (error: unknown) => {
        assert.ok(error instanceof PushConfigError);
        assert.match(error.message, /^filters\.task: /);
        assert.equal(error.data?.identity, 'task');
        assert.equal(typeof error.data?.column, 'number');
        return true;
      },
    );
  });

  it('refuses a blank filter', () => {
    assert.throws(
      () => parsePushConfig({ identities: { task: [] }, filters: { task: '  ' } }),
      PushConfigError,
    );
  });
});

describe('section 5 step 3: allows() with related identities and filters', () => {
  const config = parsePushConfig({
    identities: { task: ['create'], user: [], project: [] },
    filters: { project: 'status == open' },
  });
  const open = { status: 'open' };
  const closed = { status: 'closed' };
  // [identity, type, entity, related identities, passes]
  const table: Array<[string, string, unknown, string[], boolean]> = [
    ['task', 'create', closed, [], true],
    ['task', 'update', closed, [], false],
    ['file', 'create', closed, [], false],
    ['file', 'create', closed, ['user'], true],
    ['file', 'create', closed, ['task'], true],
    ['file', 'update', closed, ['task'], false],
    ['file', 'update', closed, ['other', 'user'], true],
    ['project', 'update', open, [], true],
    ['project', 'update', closed, [], false],
    ['file', 'update', open, ['project'], true],
    ['file', 'update', closed, ['project'], false],
    ['project', 'update', closed, ['user'], true],
    ['task', 'update', closed, ['project'], false],
  ];
  for (const [identity, type, entity, related, passes] of table) {
    it(`${identity}/${type} ${JSON.stringify(entity)} related [${related.join(', ')}] → ${passes}`, () => {
      assert.equal(config.allows(target(identity, type, entity), related), passes);
    });
  }

  it('reads the entity only when a filter needs it', () => {
    let reads = 0;
    const counting = (identity: string): ConfigTarget => ({
      identity,
      type: 'create',
      get entity() {
        reads++;
        return open;
      },
    });
    config.allows(counting('task'), []);
    config.allows(counting('user'), []);
    assert.equal(reads, 0);
    config.allows(counting('project'), []);
    assert.equal(reads, 1);
  });

  it('remembers its verdict per numbered event, for events checked in turns', () => {
    const reads = new Map<number, number>();
    const numbered = (memoKey: number, status: string): ConfigTarget => ({
      identity: 'project',
      type: 'create',
      memoKey,
      get entity() {
        reads.set(memoKey, (reads.get(memoKey) ?? 0) + 1);
        return { status };
      },
    });
    // Keys far apart in the numbering, and two that share a memo slot (32 apart).
    const events = [numbered(1_000_001, 'open'), numbered(1_000_002, 'closed')];
    const sameSlot = numbered(1_000_033, 'closed');
    const related: string[] = [];
    for (let round = 0; round < 3; round++) {
      for (const event of events) {
        assert.equal(config.allows(event, related), event === events[0]);
      }
    }
    assert.deepEqual([...reads.values()], [1, 1], 'one evaluation per event');
    assert.equal(config.allows(sameSlot, related), false);
    assert.equal(config.allows(events[0] as ConfigTarget, related), true, 'not a stale verdict');
    // Other related identities are another question.
    assert.equal(config.allows(events[1] as ConfigTarget, ['user']), true);
  });

  it('keeps none of the events it judged alive (selectors outlive sessions)', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const selector = parsePushConfig({
      identities: { project: [] },
      filters: { project: 'n > 1' },
    });
    // Judged in a scope of its own: once it returns, only the selector could keep the event.
    const ref = ((): WeakRef<WireEvent> => {
      const event = wireEventFrom(
        { identity: 'project', type: 'create', entity: { n: 2, pad: 'x'.repeat(1000) } },
        new Date(),
      );
      assert.equal(selector.allows(event, []), true);
      return new WeakRef(event);
    })();
    // A WeakRef holds its target until the current job ends.
    await new Promise<void>((resolve) => setImmediate(resolve));
    gc();
    assert.equal(ref.deref(), undefined);
  });

  it('matches no filter with an entity that does not decode', () => {
    const broken: ConfigTarget = {
      identity: 'project',
      type: 'create',
      get entity(): unknown {
        throw new EventFormatError('the entity does not decode');
      },
    };
    assert.equal(config.allows(broken, []), false);
    assert.equal(config.allows(broken, ['user']), true);
  });
});

describe('section 4: parameters are a string or a list of strings per name', () => {
  it('reads a string as a list of one', () => {
    const config = parsePushConfig({ parameters: { namespace: '/acme', tag: ['a', 'b'] } });
    assert.deepEqual(config.parameters.namespace, ['/acme']);
    assert.deepEqual(config.parameters.tag, ['a', 'b']);
  });

  it('has no parameter a client did not send, not even those of Object.prototype', () => {
    const config = parsePushConfig({ parameters: { a: 'x' } });
    assert.equal(config.parameters.constructor, undefined);
    assert.equal(config.parameters.toString, undefined);
  });
});

describe('section 4: a __proto__ key is a plain key, never a prototype', () => {
  const text =
    '{"identities":{"__proto__":["create"],"task":[]},' +
    '"filters":{"__proto__":"x == 1"},"parameters":{"__proto__":"p"}}';

  it('is an identity like any other', () => {
    const config = parsePushConfig(JSON.parse(text));
    assert.equal(config.allows(target('__proto__', 'create', { x: 1 }), []), true);
    assert.equal(config.allows(target('__proto__', 'create', { x: 2 }), []), false);
    assert.equal(config.allows(target('__proto__', 'update', { x: 1 }), []), false);
    assert.equal(config.allows(target('toString', 'create'), []), false);
    assert.equal(config.allows(target('constructor', 'create'), []), false);
  });

  it('stays a key of input and of parameters', () => {
    const config = parsePushConfig(JSON.parse(text));
    assert.deepEqual(Object.keys(config.input.identities ?? {}), ['__proto__', 'task']);
    assert.deepEqual(Object.keys(config.input.filters ?? {}), ['__proto__']);
    assert.deepEqual(Object.keys(config.parameters), ['__proto__']);
    assert.deepEqual(config.parameters['__proto__'], ['p']);
  });

  it('leaves Object.prototype alone', () => {
    parsePushConfig(JSON.parse(text));
    assert.equal(({} as Record<string, unknown>).x, undefined);
    assert.equal(Object.getPrototypeOf({}), Object.prototype);
    assert.deepEqual(Object.keys(Object.prototype), []);
  });

  it('names Object.prototype members as identities without finding them there', () => {
    const config = parsePushConfig({ identities: { toString: [], hasOwnProperty: ['x'] } });
    assert.equal(config.allows(target('toString', 'create'), []), true);
    assert.equal(config.allows(target('hasOwnProperty', 'create'), []), false);
    assert.equal(config.allows(target('valueOf', 'create'), []), false);
  });
});

describe('section 4: limits bound the work a config asks for', () => {
  const limits = { maxIdentities: 2, maxTypesPerIdentity: 2, maxParameters: 2 };
  const many = (n: number, value: unknown): Record<string, unknown> =>
    Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, value]));

  it('has the documented defaults', () => {
    assert.deepEqual(DEFAULT_PUSH_CONFIG_LIMITS, {
      maxIdentities: 1000,
      maxTypesPerIdentity: 100,
      maxParameters: 100,
      maxBytes: 2 * 1024 * 1024,
    });
  });

  const table: Array<[string, unknown, unknown, RegExp]> = [
    [
      'identities',
      { identities: many(2, []) },
      { identities: many(3, []) },
      /too many identities \(at most 2\)/,
    ],
    [
      'types of one identity',
      { identities: { task: ['a', 'b'] } },
      { identities: { task: ['a', 'b', 'c'] } },
      /identities\.task lists too many types \(at most 2\)/,
    ],
    [
      'parameters',
      { parameters: many(2, 'x') },
      { parameters: many(3, 'x') },
      /too many parameters \(at most 2\)/,
    ],
  ];
  for (const [what, atLimit, overLimit, message] of table) {
    it(`accepts as many ${what} as the limit, and refuses one more`, () => {
      assert.ok(parsePushConfig(atLimit, limits));
      assert.throws(
        () => parsePushConfig(overLimit, limits),
        (error: unknown) => error instanceof PushConfigError && message.test(error.message),
      );
    });
  }

  it('applies the defaults when no limits are given', () => {
    assert.ok(parsePushConfig({ identities: many(1000, []) }));
    assert.throws(() => parsePushConfig({ identities: many(1001, []) }), /too many identities/);
    assert.throws(
      () =>
        parsePushConfig({ identities: { task: Array.from({ length: 101 }, (_, i) => `t${i}`) } }),
      /too many types/,
    );
    assert.throws(() => parsePushConfig({ parameters: many(101, 'x') }), /too many parameters/);
  });
});

describe('section 4: a message that does not decode is invalid', () => {
  const example = {
    identities: { task: ['create', 'update'], user: [] },
    filters: { task: 'status == "open"' },
    parameters: { namespace: ['/acme'] },
  };

  it('decodes a config in either encoding', () => {
    assert.deepEqual(
      decodePushConfigMessage(Buffer.from(JSON.stringify(example)), JSON_TYPE),
      example,
    );
    assert.deepEqual(decodePushConfigMessage(encode(example), MSGPACK_TYPE), example);
  });

  const table: Array<[string, Uint8Array, Encoding]> = [
    ['text that is not JSON', Buffer.from('{"identities":'), JSON_TYPE],
    ['an empty message, as JSON', new Uint8Array(0), JSON_TYPE],
    ['bytes that are not UTF-8', Uint8Array.of(0x7b, 0xff, 0xfe, 0x7d), JSON_TYPE],
    ['MessagePack sent to a JSON session', encode(example), JSON_TYPE],
    ['JSON sent to a MessagePack session', Buffer.from(JSON.stringify(example)), MSGPACK_TYPE],
    ['a byte MessagePack never uses', Uint8Array.of(0xc1), MSGPACK_TYPE],
    ['truncated MessagePack', encode(example).subarray(0, 10), MSGPACK_TYPE],
    ['an empty message, as MessagePack', new Uint8Array(0), MSGPACK_TYPE],
    ['a MessagePack __proto__ key', mpMap([['__proto__', mpMap([])]]), MSGPACK_TYPE],
  ];
  for (const [what, data, encoding] of table) {
    it(`refuses ${what}, naming the encoding`, () => {
      assert.throws(
        () => decodePushConfigMessage(data, encoding),
        (error: unknown) =>
          error instanceof PushConfigError &&
          error.message.startsWith(`the push config does not decode as ${encoding}: `),
      );
    });
  }

  it('refuses JSON that decodes to something other than a config', () => {
    for (const text of ['null', '[]', '"identities"', '42']) {
      const value = decodePushConfigMessage(Buffer.from(text), JSON_TYPE);
      assert.throws(() => parsePushConfig(value), PushConfigError, text);
    }
  });

  it('refuses a MessagePack timestamp where the config should be', () => {
    const value = decodePushConfigMessage(encode(new Date()), MSGPACK_TYPE);
    assert.throws(() => parsePushConfig(value), PushConfigError);
  });
});

// ===========================================================================
// Section 8: the publication envelope.

describe('section 8: a publication is a map of topic, data and encoding, then the optional keys', () => {
  const eventBytes = encodeMsgpackEvent('task', 'create', encodeEntity(ENTITY), WHEN);

  it('has exactly topic, data (a bin of the event) and encoding when nothing else is set', () => {
    const out = encodePublication({ topic: 'events' }, eventBytes);
    assert.equal(out[0], 0x83);
    const map = asMap(decode(out));
    assert.deepEqual(Object.keys(map), ['topic', 'data', 'encoding']);
    assert.equal(map.topic, 'events');
    sameBytes(map.data, eventBytes);
    assert.equal(map.encoding, MSGPACK_TYPE);
  });

  it('adds trackingName, trackingData, partition and responseMode when set', () => {
    const out = encodePublication(
      {
        topic: 'events.task.create',
        trackingName: 'publish task',
        trackingData: { 'uber-trace-id': 'abc:def:0:1' },
        partition: 3,
        responseMode: ResponseMode.Ack,
      },
      eventBytes,
    );
    const map = asMap(decode(out));
    assert.deepEqual(Object.keys(map), [
      'topic',
      'data',
      'encoding',
      'trackingName',
      'trackingData',
      'partition',
      'responseMode',
    ]);
    assert.equal(map.trackingName, 'publish task');
    assert.deepEqual(map.trackingData, { 'uber-trace-id': 'abc:def:0:1' });
    assert.equal(map.partition, 3);
    assert.equal(map.responseMode, 1);
  });

  it('leaves out an empty trackingData', () => {
    const map = asMap(decode(encodePublication({ topic: 'events', trackingData: {} }, eventBytes)));
    assert.equal('trackingData' in map, false);
  });

  it('names the response modes as bahamut does', () => {
    assert.deepEqual(ResponseMode, { None: 0, Ack: 1, Publication: 2 });
  });

  it('decodes what it encodes', () => {
    const headers = {
      topic: 'events',
      trackingName: 'publish',
      trackingData: { a: 'b' },
      partition: 7,
      responseMode: ResponseMode.Publication,
    };
    const { event, ...decoded } = decodePublication(encodePublication(headers, eventBytes));
    assert.deepEqual(decoded, headers);
    assert.equal(event.identity, 'task');
    assert.deepEqual(Buffer.from(event.toMsgpack()), Buffer.from(eventBytes));
  });
});

describe('section 8: a publication written by a Go bahamut server decodes', () => {
  const event = goEvent();
  // bahamut's Publication fields in declaration order, omitempty.
  const full = mpMap([
    ['trackingData', mpMap([['uber-trace-id', mpStr('abc:def:0:1')]])],
    ['topic', mpStr('events')],
    ['trackingName', mpStr('bahamut.publish')],
    ['encoding', mpStr(MSGPACK_TYPE)],
    ['data', mpBin(event)],
    ['responseMode', mpInt64(1)],
    ['partition', mpInt32(3)],
  ]);

  it('reads every header, whatever the key order and integer widths', () => {
    const { event: decoded, ...headers } = decodePublication(full);
    assert.deepEqual(headers, {
      topic: 'events',
      trackingName: 'bahamut.publish',
      trackingData: { 'uber-trace-id': 'abc:def:0:1' },
      partition: 3,
      responseMode: 1,
    });
    assert.equal(decoded.identity, 'task');
    assert.equal(decoded.type, 'create');
    assert.equal(decoded.timestamp.toISOString(), '2026-11-23T21:40:00.123Z');
    assert.deepEqual(decoded.entity, ENTITY);
  });

  it("forwards the Go event's bytes to MessagePack sessions unchanged", () => {
    sameBytes(decodePublication(full).event.toMsgpack(), event);
  });

  it('reads the minimal publication (only topic, encoding and data)', () => {
    const minimal = mpMap([
      ['topic', mpStr('events')],
      ['encoding', mpStr(MSGPACK_TYPE)],
      ['data', mpBin(event)],
    ]);
    const { event: decoded, ...headers } = decodePublication(minimal);
    assert.deepEqual(headers, { topic: 'events' });
    assert.equal(decoded.identity, 'task');
  });

  it('reads a publication without encoding (older bahamut) as MessagePack', () => {
    const old = mpMap([
      ['topic', mpStr('events')],
      ['data', mpBin(event)],
    ]);
    assert.equal(decodePublication(old).event.entityEncoding, MSGPACK_TYPE);
  });

  it('reads data encoded as JSON when the publication says so', () => {
    const json = Buffer.from(encodeJsonEvent('task', 'create', JSON.stringify(ENTITY), WHEN));
    const pub = mpMap([
      ['topic', mpStr('events')],
      ['encoding', mpStr(JSON_TYPE)],
      ['data', mpBin(json)],
    ]);
    const decoded = decodePublication(pub).event;
    assert.deepEqual(decoded.entity, ENTITY);
    assert.equal(decoded.timestamp.getTime(), WHEN.getTime());
  });

  it('keeps only the string values of trackingData', () => {
    const pub = mpMap([
      [
        'trackingData',
        mpMap([
          ['a', mpStr('b')],
          ['n', mpInt32(1)],
        ]),
      ],
      ['data', mpBin(event)],
    ]);
    assert.deepEqual(decodePublication(pub).trackingData, { a: 'b' });
  });
});

describe('section 8: a publication that does not decode is an EventFormatError', () => {
  const event = goEvent();
  const table: Array<[string, Uint8Array, RegExp]> = [
    ['no bytes', new Uint8Array(0), /does not decode/],
    ['a byte MessagePack never uses', Uint8Array.of(0xc1), /does not decode/],
    ['random bytes', Uint8Array.of(0xde, 0xad, 0xbe, 0xef), /does not decode/],
    ['an event without envelope', event, /data is not a bin/],
    ['a string', encode('events'), /not a map/],
    ['a list', encode([event]), /not a map/],
    ['a bin', encode(event), /not a map/],
    ['no data', mpMap([['topic', mpStr('events')]]), /data is not a bin/],
    ['data as a str', mpMap([['data', mpStr('{}')]]), /data is not a bin/],
    ['data that is not an event', mpMap([['data', mpBin(Uint8Array.of(0x01))]]), /not a map/],
    ['data that does not decode', mpMap([['data', mpBin(Uint8Array.of(0xc1))]]), /does not decode/],
    [
      'an unsupported encoding',
      mpMap([
        ['encoding', mpStr('application/xml')],
        ['data', mpBin(event)],
      ]),
      /encoding/,
    ],
    [
      'trackingData as a str',
      mpMap([
        ['trackingData', mpStr('x')],
        ['data', mpBin(event)],
      ]),
      /trackingData/,
    ],
    [
      'trackingData as a list',
      mpMap([
        ['trackingData', bytes([0x91, 0xa1, 0x78])],
        ['data', mpBin(event)],
      ]),
      /trackingData/,
    ],
  ];
  for (const [what, data, message] of table) {
    it(`refuses ${what}`, () => {
      assert.throws(
        () => decodePublication(data),
        (error: unknown) => error instanceof EventFormatError && message.test(error.message),
      );
    });
  }
});

describe('section 8: with subject hierarchies, events go to <topic>.<identity>.<type> and servers subscribe to <topic>.>', () => {
  it('publishes to the topic itself without hierarchies', () => {
    assert.equal(publicationSubject('events', 'task', 'create', false), 'events');
    assert.equal(subscriptionSubject('events', false), 'events');
  });

  it('publishes to <topic>.<identity>.<type> with hierarchies', () => {
    assert.equal(publicationSubject('events', 'task', 'create', true), 'events.task.create');
    assert.equal(subscriptionSubject('events', true), 'events.>');
  });

  for (const hierarchies of [false, true]) {
    it(`reaches the subscription, and only its own topic's (hierarchies ${hierarchies})`, () => {
      const subscription = subscriptionSubject('events', hierarchies);
      assert.equal(
        subjectMatches(subscription, publicationSubject('events', 'task', 'create', hierarchies)),
        true,
      );
      assert.equal(
        subjectMatches(subscription, publicationSubject('other', 'task', 'create', hierarchies)),
        false,
      );
      assert.equal(
        subjectMatches(subscription, publicationSubject('events2', 'task', 'create', hierarchies)),
        false,
      );
    });
  }
});

// ===========================================================================
// WebSocket frames (RFC 6455 section 5.2): built once per event.

/** A tiny frame reader: enough of RFC 6455 to check what buildFrame writes. */
function readFrame(frame: Buffer): {
  fin: boolean;
  rsv: number;
  opcode: number;
  masked: boolean;
  headerLength: number;
  length: number;
  payload: Buffer;
} {
  const first = frame[0]!;
  const second = frame[1]!;
  let length = second & 0x7f;
  let headerLength = 2;
  if (length === 126) {
    length = frame.readUInt16BE(2);
    headerLength = 4;
  } else if (length === 127) {
    length = Number(frame.readBigUInt64BE(2));
    headerLength = 10;
  }
  assert.equal(frame.length, headerLength + length, 'the frame holds exactly its payload');
  return {
    fin: (first & 0x80) !== 0,
    rsv: first & 0x70,
    opcode: first & 0x0f,
    masked: (second & 0x80) !== 0,
    headerLength,
    length,
    payload: frame.subarray(headerLength),
  };
}

describe('frames: one final, unmasked frame with the shortest length encoding', () => {
  // [payload length, header bytes of a binary frame]
  const table: Array<[number, number[]]> = [
    [0, [0x82, 0]],
    [1, [0x82, 1]],
    [125, [0x82, 125]],
    [126, [0x82, 126, 0x00, 0x7e]],
    [65535, [0x82, 126, 0xff, 0xff]],
    [65536, [0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]],
    [70000, [0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]],
  ];
  for (const [length, header] of table) {
    it(`writes a ${length}-byte payload after a ${header.length}-byte header`, () => {
      const payload = Buffer.alloc(length);
      for (let i = 0; i < length; i++) payload[i] = i % 251;
      const frame = buildFrame(payload, true);
      assert.deepEqual([...frame.subarray(0, header.length)], header);
      const read = readFrame(frame);
      assert.equal(read.fin, true);
      assert.equal(read.rsv, 0);
      assert.equal(read.masked, false);
      assert.equal(read.length, length);
      assert.ok(read.payload.equals(payload));
    });
  }

  it('copies only the bytes of a view, not the rest of its buffer', () => {
    const whole = Buffer.from('0123456789abcdef');
    const frame = buildFrame(whole.subarray(4, 10), true);
    assert.equal(readFrame(frame).payload.toString(), '456789');
  });
});

describe('frames: JSON goes in text frames, MessagePack in binary frames', () => {
  it('uses opcode 0x1 for text and 0x2 for binary', () => {
    assert.equal(readFrame(buildFrame(Buffer.from('{}'), false)).opcode, 0x1);
    assert.equal(readFrame(buildFrame(Buffer.from([0x80]), true)).opcode, 0x2);
  });

  it('writes a string as a text frame of its UTF-8 bytes', () => {
    const frame = readFrame(buildTextFrame('{"name":"héllo ✓"}'));
    assert.equal(frame.opcode, 0x1);
    assert.equal(frame.length, Buffer.byteLength('{"name":"héllo ✓"}'));
    assert.equal(frame.payload.toString('utf8'), '{"name":"héllo ✓"}');
  });

  it('frames a whole event, ready to write', () => {
    const text = wireEventFrom({ identity: 'task', type: 'create', entity: ENTITY }, WHEN).toJson();
    assert.deepEqual(
      JSON.parse(readFrame(buildTextFrame(text)).payload.toString()),
      JSON.parse(text),
    );
  });
});

// ===========================================================================
// Subjects (the PubSubClient contract).

describe('subjects: * matches one token, a final > one or more', () => {
  // [pattern, subject, matches]
  const table: Array<[string, string, boolean]> = [
    ['events', 'events', true],
    ['events', 'events.task', false],
    ['events.task', 'events', false],
    ['events', 'events2', false],
    ['events.>', 'events.task', true],
    ['events.>', 'events.task.create', true],
    ['events.>', 'events', false],
    ['events.>', 'other.task', false],
    ['>', 'events', true],
    ['>', 'events.task.create', true],
    ['events.*', 'events.task', true],
    ['events.*', 'events.task.create', false],
    ['events.*', 'events', false],
    ['events.*.create', 'events.task.create', true],
    ['events.*.create', 'events.task.update', false],
    ['*.task.*', 'events.task.create', true],
    ['*', 'events', true],
    ['*', 'events.task', false],
    ['events.*.>', 'events.task.create', true],
    ['events.*.>', 'events.task', false],
    ['events.>.create', 'events.task.create', false],
    ['ev*', 'events', false],
    ['ev>', 'events.task', false],
  ];
  for (const [pattern, subject, matches] of table) {
    it(`${pattern} ${matches ? 'matches' : 'does not match'} ${subject}`, () => {
      assert.equal(subjectMatches(pattern, subject), matches);
    });
  }
});

// ===========================================================================
// Sessions: cookies and claims as plugins read them.

describe('session.cookie(): the Cookie header as a map', () => {
  // [header, cookies]
  const table: Array<[string | undefined, Record<string, string>]> = [
    [undefined, {}],
    ['', {}],
    ['a=1', { a: '1' }],
    ['a=1; b=2', { a: '1', b: '2' }],
    ['a=1;b=2', { a: '1', b: '2' }],
    ['  a = 1 ;  b=2  ', { a: '1', b: '2' }],
    ['a=1;', { a: '1' }],
    ['session="quoted value"', { session: 'quoted value' }],
    ['name=J%C3%B6rg%20M', { name: 'Jörg M' }],
    ['raw=%E0%A4%A', { raw: '%E0%A4%A' }],
    ['a=1; a=2', { a: '1' }],
    ['jwt=aa.bb=.cc==', { jwt: 'aa.bb=.cc==' }],
    ['empty=', { empty: '' }],
    ['flag; a=1', { a: '1' }],
    ['=orphan; a=1', { a: '1' }],
    ['A=upper; a=lower', { A: 'upper', a: 'lower' }],
  ];
  for (const [header, cookies] of table) {
    it(`${header === undefined ? 'no header' : JSON.stringify(header)} → ${JSON.stringify(cookies)}`, () => {
      assert.deepEqual(Object.fromEntries(parseCookies(header)), cookies);
    });
  }
});

describe('session.claimsMap: key=value claims as a map, the last repeated key winning', () => {
  const table: Array<[string[], Record<string, string>]> = [
    [[], {}],
    [['org=acme', 'user=ann'], { org: 'acme', user: 'ann' }],
    [['@auth:subject=42'], { '@auth:subject': '42' }],
    [['token=a=b=c'], { token: 'a=b=c' }],
    [['flag'], { flag: '' }],
    [['k=1', 'k=2'], { k: '2' }],
    [['=v'], { '': 'v' }],
  ];
  for (const [claims, map] of table) {
    it(`${JSON.stringify(claims)} → ${JSON.stringify(map)}`, () => {
      assert.deepEqual({ ...claimsToMap(claims) }, map);
    });
  }

  it('keeps __proto__ as a plain key and has nothing of Object.prototype', () => {
    const map = claimsToMap(['__proto__=x', 'org=acme']);
    assert.deepEqual(Object.keys(map), ['__proto__', 'org']);
    assert.equal(map['__proto__'], 'x');
    assert.equal(map.toString, undefined);
    assert.equal('constructor' in map, false);
  });
});

// ===========================================================================
// Errors: the error objects of sections 2 and 4, and the close codes of section 6.

describe('errors: each class has a stable code, an HTTP status and a close code', () => {
  // [class, instance, code, status, title, close code, default message]
  const table: Array<[string, PushError, string, number, string, number, string | undefined]> = [
    ['PushError', new PushError('m'), 'PUSH_ERROR', 500, 'Internal Server Error', 1011, undefined],
    [
      'BadRequestError',
      new BadRequestError(),
      'PUSH_BAD_REQUEST',
      400,
      'Bad Request',
      1003,
      'Bad request',
    ],
    [
      'UnauthorizedError',
      new UnauthorizedError(),
      'PUSH_UNAUTHORIZED',
      401,
      'Unauthorized',
      1008,
      'You are not authorized to start a session',
    ],
    [
      'ForbiddenError',
      new ForbiddenError(),
      'PUSH_FORBIDDEN',
      403,
      'Forbidden',
      1008,
      'You are not allowed to start a session',
    ],
    [
      'TooManyRequestsError',
      new TooManyRequestsError(),
      'PUSH_TOO_MANY_REQUESTS',
      429,
      'Too Many Requests',
      1008,
      'Too many requests',
    ],
    [
      'UnsupportedMediaTypeError',
      new UnsupportedMediaTypeError(),
      'PUSH_UNSUPPORTED_MEDIA_TYPE',
      415,
      'Unsupported Media Type',
      1003,
      'Unsupported media type',
    ],
    [
      'ServiceUnavailableError',
      new ServiceUnavailableError(),
      'PUSH_UNAVAILABLE',
      503,
      'Service Unavailable',
      1001,
      'The push server is not accepting sessions',
    ],
    [
      'InvalidPushConfigError',
      new InvalidPushConfigError('m'),
      'PUSH_INVALID_CONFIG',
      400,
      'Bad Request',
      1003,
      undefined,
    ],
    [
      'PolicyViolationError',
      new PolicyViolationError('m'),
      'PUSH_POLICY',
      403,
      'Forbidden',
      1008,
      undefined,
    ],
    [
      'PubSubError',
      new PubSubError('m'),
      'PUSH_PUBSUB',
      503,
      'Service Unavailable',
      1011,
      undefined,
    ],
    [
      'NotConnectedError',
      new NotConnectedError(),
      'PUSH_NOT_CONNECTED',
      503,
      'Service Unavailable',
      1011,
      'The pub/sub client is not connected',
    ],
    [
      'InvalidEventError',
      new InvalidEventError('m'),
      'PUSH_INVALID_EVENT',
      400,
      'Bad Request',
      1011,
      undefined,
    ],
    [
      'ChainError',
      new ChainError(),
      'PUSH_CHAIN',
      500,
      'Internal Server Error',
      1011,
      'next() called multiple times',
    ],
  ];
  for (const [name, error, code, status, title, closeCode, message] of table) {
    it(`${name}: ${code}, ${status} ${title}, close ${closeCode}`, () => {
      assert.ok(error instanceof PushError);
      assert.ok(error instanceof Error);
      assert.equal(error.name, name);
      assert.equal(error.code, code);
      assert.equal(error.status, status);
      assert.equal(error.closeCode, closeCode);
      assert.equal(statusTitle(error.status), title);
      if (message !== undefined) assert.equal(error.message, message);
      assert.deepEqual(error.toErrorObject(), {
        code: status,
        title,
        description: error.message,
        subject: 'pushwire',
      });
    });
  }

  it('makes NotConnectedError a PubSubError', () => {
    assert.ok(new NotConnectedError() instanceof PubSubError);
  });

  it('lets a PubSubError carry a more precise code', () => {
    assert.equal(
      new PubSubError('down', 'PUSH_PUBSUB_UNREACHABLE').code,
      'PUSH_PUBSUB_UNREACHABLE',
    );
  });

  it('uses only the close codes of section 6, and 1011 for internal errors', () => {
    const allowed = new Set([1000, 1001, 1003, 1008, 1009, 1011]);
    for (const [, error] of table) assert.ok(allowed.has(error.closeCode), error.name);
  });
});

describe('errors: toErrorObject() is elemental’s error object, never with a stack', () => {
  it('writes the 401 body of PROTOCOL.md section 2', () => {
    assert.equal(
      JSON.stringify([new UnauthorizedError().toErrorObject()]),
      '[{"code":401,"title":"Unauthorized","description":"You are not authorized to start a session","subject":"pushwire"}]',
    );
  });

  it('adds data when there is some, and only then', () => {
    const withData = new InvalidPushConfigError('filters.task: expected a value', {
      data: { identity: 'task', column: 9 },
    });
    assert.deepEqual(withData.toErrorObject(), {
      code: 400,
      title: 'Bad Request',
      description: 'filters.task: expected a value',
      subject: ERROR_SUBJECT,
      data: { identity: 'task', column: 9 },
    });
    assert.equal('data' in new BadRequestError().toErrorObject(), false);
  });

  it('keeps the cause for logs but never sends it, nor the stack', () => {
    const cause = new Error('secret detail');
    const error = new ForbiddenError('refused', { cause });
    assert.equal(error.cause, cause);
    const text = JSON.stringify(error.toErrorObject());
    assert.doesNotMatch(text, /secret detail|stack|at /);
  });

  it('titles the statuses it uses, and any other as Error', () => {
    const table: Array<[number, string]> = [
      [400, 'Bad Request'],
      [401, 'Unauthorized'],
      [403, 'Forbidden'],
      [404, 'Not Found'],
      [426, 'Upgrade Required'],
      [429, 'Too Many Requests'],
      [500, 'Internal Server Error'],
      [503, 'Service Unavailable'],
      [418, 'Error'],
    ];
    for (const [status, title] of table) assert.equal(statusTitle(status), title);
    assert.equal(new PushError('teapot', 'PUSH_TEAPOT', 418).toErrorObject().title, 'Error');
  });
});
