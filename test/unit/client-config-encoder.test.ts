/**
 * The client's hand-written MessagePack encoder for push configs
 * (client/config-encoder.ts) against the library it replaced: every value
 * must come out byte for byte as `@msgpack/msgpack`'s
 * `encode(value, { ignoreUndefined: true })` writes it, so a server sees the
 * frames it saw before; what the library refuses is a TypeError here.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { encode as libraryEncode } from '@msgpack/msgpack';
import { encodeMsgpack, MAX_CONFIG_DEPTH } from '../../client/config-encoder.js';
import { encodeConfig, isPlainJson, type PushConfig } from '../../client/protocol.js';

/** What the library writes, the reference. */
function reference(value: unknown): Uint8Array {
  return libraryEncode(value, { ignoreUndefined: true });
}

function assertSame(value: unknown): void {
  assert.deepEqual(
    Buffer.from(encodeMsgpack(value)).toString('hex'),
    Buffer.from(reference(value)).toString('hex'),
  );
}

/** Any UTF-16 unit, lone surrogates included, so strings need not be well-formed. */
const utf16Unit = fc.integer({ min: 0, max: 0xffff }).map((unit) => String.fromCharCode(unit));
const anyString = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary' }),
  fc.string({ unit: utf16Unit }),
  // Around the library's TextEncoder threshold (50 units), where lone surrogates differ.
  fc.string({ unit: utf16Unit, minLength: 45, maxLength: 60 }),
);

const anyNumber = fc.oneof(
  fc.integer(),
  fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
  fc.double(),
  fc.constantFrom(-0, NaN, Infinity, -Infinity, 2 ** 53, -(2 ** 53), 2 ** 64),
);

/** A push config as an application would write it, some keys set to undefined. */
const pushConfig = fc.record(
  {
    identities: fc.dictionary(anyString, fc.array(anyString, { maxLength: 20 })),
    filters: fc.dictionary(anyString, anyString),
    parameters: fc.dictionary(anyString, fc.oneof(anyString, fc.array(anyString))),
    since: fc.option(anyString, { nil: undefined }),
  },
  { requiredKeys: [] },
);

/** JSON-like values and what else the library encodes: undefined, bin, Date. */
const { value: anyValue } = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constantFrom(null, undefined, true, false),
    anyNumber,
    anyString,
    fc.uint8Array({ maxLength: 40 }),
    fc.date({ noInvalidDate: false }),
    fc.array(tie('value'), { maxLength: 20 }),
    fc.dictionary(anyString, tie('value'), { maxKeys: 20 }),
  ),
}));

describe('client config encoder: byte for byte as @msgpack/msgpack', () => {
  it('encodes generated push configs as the library does', () => {
    fc.assert(
      fc.property(pushConfig, (config) => {
        assertSame(config);
        assert.deepEqual(encodeConfig(config as PushConfig, 'msgpack'), reference(config));
      }),
      { numRuns: 500 },
    );
  });

  it('encodes generated JSON-like values (with undefined, bins and Dates) as the library does', () => {
    fc.assert(
      fc.property(anyValue, (value) => assertSame(value)),
      { numRuns: 1000 },
    );
  });

  it('integers at every boundary of every width, and -0, NaN, the infinities', () => {
    const edges = [
      0,
      0x7f,
      0x80,
      0xff,
      0x100,
      0xffff,
      0x10000,
      0xffff_ffff,
      0x1_0000_0000,
      Number.MAX_SAFE_INTEGER,
      -1,
      -0x20,
      -0x21,
      -0x80,
      -0x81,
      -0x8000,
      -0x8001,
      -0x8000_0000,
      -0x8000_0001,
      Number.MIN_SAFE_INTEGER,
    ];
    for (const edge of edges) {
      for (const n of [edge - 1, edge, edge + 1]) assertSame(n);
    }
    for (const n of [-0, NaN, Infinity, -Infinity, 0.5, -1.5, 2 ** 53, 2 ** 64, Number.MIN_VALUE]) {
      assertSame(n);
    }
    assert.deepEqual([...encodeMsgpack(-0)], [0x00], '-0 is the fixint 0');
  });

  it('strings crossing the fixstr, str8, str16 and str32 sizes, in UTF-8', () => {
    for (const size of [0, 31, 32, 255, 256, 65535, 65536, 70000]) {
      for (const n of [size - 1, size, size + 1].filter((n) => n >= 0)) {
        assertSame('a'.repeat(n));
        assertSame('é'.repeat(Math.ceil(n / 2)));
      }
    }
    const long = encodeMsgpack('x'.repeat(65536));
    assert.deepEqual([...long.subarray(0, 5)], [0xdb, 0x00, 0x01, 0x00, 0x00], 'str32');
  });

  it('non-BMP characters and lone surrogates, short and long, as the library writes them', () => {
    for (const text of [
      '😀',
      'a😀b',
      '\u{10ffff}',
      '\ud800',
      '\udc00',
      'a\ud800b',
      '\udc00\ud800',
    ]) {
      for (const pad of [0, 49, 50, 51, 100]) {
        assertSame('x'.repeat(pad) + text);
        assertSame({ [text + 'k'.repeat(pad)]: text });
      }
    }
    // Short: the surrogate's own three bytes; long (over 50 units): U+FFFD, as TextEncoder writes.
    assert.deepEqual([...encodeMsgpack('\ud800')], [0xa3, 0xed, 0xa0, 0x80]);
    assert.deepEqual(
      [...encodeMsgpack('\ud800' + 'x'.repeat(50)).subarray(2, 5)],
      [0xef, 0xbf, 0xbd],
    );
  });

  it('maps and arrays at 15, 16, 65535 and 65536 elements; undefined: left out of maps, nil in arrays', () => {
    for (const n of [0, 15, 16, 65535, 65536]) {
      assertSame(new Array<number>(n).fill(1));
      assertSame(Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i])));
    }
    assertSame([undefined, 1, undefined]);
    assertSame(new Array(3)); // holes
    assertSame({ a: undefined, b: null, c: 1 });
    assert.deepEqual([...encodeMsgpack({ a: undefined })], [0x80]);
    assert.deepEqual([...encodeMsgpack([undefined])], [0x91, 0xc0]);
  });

  it('bins, Dates in the three timestamp sizes, an invalid Date, other objects as maps', () => {
    assertSame(new Uint8Array(300).fill(7));
    assertSame(new Uint8Array(70000));
    assertSame(new Uint16Array([1, 2, 3]).subarray(1));
    assertSame(new DataView(new ArrayBuffer(4), 1, 2));
    for (const ms of [0, 1000, 1500, 0xffff_ffff * 1000, 2 ** 34 * 1000, -1, -1500, 8.64e15]) {
      assertSame(new Date(ms));
    }
    assertSame(new Date(NaN));
    assertSame(new Map([['a', 1]]));
    assertSame(
      new (class {
        a = 1;
      })(),
    );
    assertSame(Object.create(null));
    assertSame({ 2: 'b', 1: 'a', x: 'c' }); // integer keys first, as Object.keys orders them
  });

  it('a bigint, a function or a symbol: a TypeError saying where, as the library refuses them', () => {
    for (const bad of [1n, () => 1, Symbol('s')]) {
      assert.throws(() => reference({ a: [bad] }));
      assert.throws(() => encodeMsgpack({ a: [bad] }), {
        name: 'TypeError',
        message: `a.0: a ${typeof bad} cannot be encoded in MessagePack`,
      });
      assert.throws(() => encodeConfig({ parameters: { n: bad as never } }, 'msgpack'), {
        name: 'TypeError',
        message: /^the push config cannot be encoded: parameters\.n: a /,
      });
    }
  });

  it('a cycle is a TypeError; so is depth past the limit, where the library stops', () => {
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = { back: cyclic };
    assert.throws(() => encodeMsgpack(cyclic), {
      name: 'TypeError',
      message: 'self.back: the config holds a cycle',
    });
    assert.throws(() => encodeConfig(cyclic as PushConfig, 'msgpack'), TypeError);
    // The same object twice, not nested in itself, is no cycle.
    const shared = ['x'];
    assertSame({ a: shared, b: shared });

    const nest = (levels: number, leaf: unknown): unknown => {
      let value = leaf;
      for (let i = 0; i < levels; i++) value = [value];
      return value;
    };
    // 99 arrays around a nil (or an empty array) put it at depth 100: allowed; one more is not.
    assertSame(nest(MAX_CONFIG_DEPTH - 1, null));
    assertSame(nest(MAX_CONFIG_DEPTH - 1, []));
    assert.throws(() => reference(nest(MAX_CONFIG_DEPTH, null)));
    assert.throws(() => encodeMsgpack(nest(MAX_CONFIG_DEPTH, null)), {
      name: 'TypeError',
      message: /nested deeper than 100$/,
    });
    assert.throws(() => encodeMsgpack(nest(100_000, null)), TypeError);
  });
});

describe('isPlainJson: a MessagePack config that may travel as JSON in a URL', () => {
  it('is true for every JSON value', () => {
    fc.assert(fc.property(fc.jsonValue(), (value) => isPlainJson(value)));
    assert.equal(isPlainJson({ identities: { task: [] }, filters: { task: 'n > 1' } }), true);
    assert.equal(isPlainJson({ parameters: { a: ['1'] }, skipped: undefined }), true);
    assert.equal(isPlainJson(Object.create(null) as object), true);
  });

  it('is false for what JSON would change or drop', () => {
    for (const value of [
      { at: new Date(0) },
      { bytes: new Uint8Array([1]) },
      { n: Number.NaN },
      { n: Infinity },
      [undefined],
      { big: 1n },
      { f: () => 1 },
      { m: new Map() },
    ]) {
      assert.equal(isPlainJson(value), false, String(Object.keys(value)));
    }
  });
});
