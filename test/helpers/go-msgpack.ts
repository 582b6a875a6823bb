/**
 * MessagePack at the byte level, for the wire-compatibility tests with
 * bahamut (PROTOCOL.md section 8).
 *
 * Two Go encoders are modelled. elemental (so bahamut and manipulate) has
 * used ugorji/go/codec since 2019, with `Canonical` and `WriteExt` set:
 * struct fields and map keys sorted by their bytes, a signed Go int in the
 * smallest signed form (fixint to 127, then int16: 128 is `0xd1 0080`, never
 * uint8), unsigned types in the smallest unsigned form, strings of 32-255
 * bytes as str8, `[]byte` as bin, `time.Time` as the timestamp extension
 * (-1) in its 4-, 8- or 12-byte form and the zero time as nil:
 * {@link canonicalMap}, {@link goInt}, {@link goUint}, {@link ugorjiTask}.
 * test/interop/fixtures/ugorji-msgpack.json holds the bytes the Go encoder
 * really writes for these (test/interop/go/src/interop/fixtures prints
 * them), and test/integration/go-interop.test.ts checks this model against
 * them. Older Go code used vmihailenco/msgpack, which writes an `int32` as
 * `0xd2` + 4 bytes and an `int` as `0xd3` + 8 bytes (no compaction) and
 * struct fields in declaration order: {@link map}, {@link int32},
 * {@link int64}. A reader must take both. Building the bytes by hand keeps
 * the test independent of the decoder under test.
 *
 * The reader is the other way round: it keeps the MessagePack type of every
 * value (str, bin, ext, which integer width…), so a test can check what we
 * put on the broker type by type, not only value by value.
 */

/** One MessagePack value, already encoded. */
export type Packed = Buffer;

function header(byte: number, size: number, length: number): Buffer {
  const out = Buffer.alloc(1 + size);
  out[0] = byte;
  if (size === 1) out.writeUInt8(length, 1);
  else if (size === 2) out.writeUInt16BE(length, 1);
  else if (size === 4) out.writeUInt32BE(length, 1);
  return out;
}

/** A str: fixstr under 32 bytes, then str8, str16, str32 (as Go writes them). */
export function str(value: string): Packed {
  const bytes = Buffer.from(value, 'utf8');
  const n = bytes.length;
  if (n < 32) return Buffer.concat([Buffer.from([0xa0 | n]), bytes]);
  if (n < 0x100) return Buffer.concat([header(0xd9, 1, n), bytes]);
  if (n < 0x10000) return Buffer.concat([header(0xda, 2, n), bytes]);
  return Buffer.concat([header(0xdb, 4, n), bytes]);
}

/** A bin (a Go `[]byte`): bin8, bin16 or bin32. */
export function bin(value: Uint8Array): Packed {
  const n = value.length;
  const head =
    n < 0x100 ? header(0xc4, 1, n) : n < 0x10000 ? header(0xc5, 2, n) : header(0xc6, 4, n);
  return Buffer.concat([head, value]);
}

/** A positive fixint (what a compacting encoder writes for 0..127). */
export function fixint(value: number): Packed {
  if (!Number.isInteger(value) || value < 0 || value > 127) throw new RangeError('fixint: 0..127');
  return Buffer.from([value]);
}

/** A Go `int32` as vmihailenco writes it without compaction: `0xd2` + 4 bytes. */
export function int32(value: number): Packed {
  const out = Buffer.alloc(5);
  out[0] = 0xd2;
  out.writeInt32BE(value, 1);
  return out;
}

/** A Go `int` / `int64` as vmihailenco writes it without compaction: `0xd3` + 8 bytes. */
export function int64(value: number | bigint): Packed {
  const out = Buffer.alloc(9);
  out[0] = 0xd3;
  out.writeBigInt64BE(BigInt(value), 1);
  return out;
}

/** A Go `float64`: `0xcb` + 8 bytes. */
export function float64(value: number): Packed {
  const out = Buffer.alloc(9);
  out[0] = 0xcb;
  out.writeDoubleBE(value, 1);
  return out;
}

/** true / false. */
export function bool(value: boolean): Packed {
  return Buffer.from([value ? 0xc3 : 0xc2]);
}

/** nil. */
export function nil(): Packed {
  return Buffer.from([0xc0]);
}

/** An array of packed values. */
export function array(items: Packed[]): Packed {
  const n = items.length;
  const head = n < 16 ? Buffer.from([0x90 | n]) : header(0xdc, 2, n);
  return Buffer.concat([head, ...items]);
}

/** A map with str keys, in the order given (Go writes struct fields in declaration order). */
export function map(entries: ReadonlyArray<readonly [string, Packed]>): Packed {
  const n = entries.length;
  const head = n < 16 ? Buffer.from([0x80 | n]) : header(0xde, 2, n);
  return Buffer.concat([head, ...entries.flatMap(([key, value]) => [str(key), value])]);
}

/** A map with str keys sorted by their UTF-8 bytes, as ugorji's canonical handle writes it. */
export function canonicalMap(entries: ReadonlyArray<readonly [string, Packed]>): Packed {
  return map([...entries].sort(([a], [b]) => Buffer.compare(Buffer.from(a), Buffer.from(b))));
}

/** A signed Go int as ugorji writes it: fixint (-32..127), else the smallest int8/16/32/64. */
export function goInt(value: number): Packed {
  if (!Number.isSafeInteger(value)) throw new RangeError('goInt: a safe integer');
  if (value >= -32 && value <= 127) return Buffer.from([value & 0xff]);
  const sized = (code: number, size: number): Packed => {
    const out = Buffer.alloc(1 + size);
    out[0] = code;
    if (size === 1) out.writeInt8(value, 1);
    else if (size === 2) out.writeInt16BE(value, 1);
    else if (size === 4) out.writeInt32BE(value, 1);
    else out.writeBigInt64BE(BigInt(value), 1);
    return out;
  };
  // ugorji goes from fixint straight to int16 for positive values (no int8 above 127).
  if (value > 127)
    return value <= 0x7fff ? sized(0xd1, 2) : value <= 0x7fffffff ? sized(0xd2, 4) : sized(0xd3, 8);
  if (value >= -0x80) return sized(0xd0, 1);
  return value >= -0x8000 ? sized(0xd1, 2) : value >= -0x80000000 ? sized(0xd2, 4) : sized(0xd3, 8);
}

/** An unsigned Go int (`uint`, `uint64`…) as ugorji writes it: fixint, else uint8/16/32/64. */
export function goUint(value: number): Packed {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError('goUint: 0..2^53');
  if (value <= 127) return Buffer.from([value]);
  if (value <= 0xff) return Buffer.from([0xcc, value]);
  if (value <= 0xffff) return header(0xcd, 2, value);
  if (value <= 0xffffffff) return header(0xce, 4, value);
  const out = Buffer.alloc(9);
  out[0] = 0xcf;
  out.writeBigUInt64BE(BigInt(value), 1);
  return out;
}

/** The fields of the Task model of the interop programs (test/interop/go/src/interop/wire). */
export interface UgorjiTaskFields {
  ID: string;
  name: string;
  description: string;
  priority: number;
  ratio: number;
  archived: boolean;
  /** A `*string`: absent is nil. */
  parentID?: string;
  tags: string[];
  createTime: { sec: number; nsec: number };
}

/** A Task struct as elemental's MessagePack handle writes it: fields sorted, ints compacted. */
export function ugorjiTask(task: UgorjiTaskFields): Packed {
  return canonicalMap([
    ['ID', str(task.ID)],
    ['name', str(task.name)],
    ['description', str(task.description)],
    ['priority', goInt(task.priority)],
    ['ratio', float64(task.ratio)],
    ['archived', bool(task.archived)],
    ['parentID', task.parentID === undefined ? nil() : str(task.parentID)],
    ['tags', array(task.tags.map((t) => str(t)))],
    ['createTime', goTime(task.createTime.sec, task.createTime.nsec)],
  ]);
}

/** The timestamp extension in its 4-byte form (fixext4): whole seconds, 0 ≤ sec < 2^32. */
export function timestamp32(sec: number): Packed {
  const out = Buffer.alloc(6);
  out[0] = 0xd6;
  out[1] = 0xff;
  out.writeUInt32BE(sec, 2);
  return out;
}

/** The timestamp extension in its 8-byte form (fixext8): `nsec << 34 | sec`, 0 ≤ sec < 2^34. */
export function timestamp64(sec: number, nsec: number): Packed {
  const out = Buffer.alloc(10);
  out[0] = 0xd7;
  out[1] = 0xff;
  out.writeBigUInt64BE((BigInt(nsec) << 34n) | BigInt(sec), 2);
  return out;
}

/** The timestamp extension in its 12-byte form (ext8, length 12): nsec as u32, then sec as i64. */
export function timestamp96(sec: number, nsec: number): Packed {
  const out = Buffer.alloc(15);
  out[0] = 0xc7;
  out[1] = 12;
  out[2] = 0xff;
  out.writeUInt32BE(nsec, 3);
  out.writeBigInt64BE(BigInt(sec), 7);
  return out;
}

/**
 * A `time.Time` as vmihailenco/msgpack and ugorji write it (the same forms; ugorji writes the
 * zero time as nil): the 4-byte form for whole
 * seconds that fit 32 bits, the 8-byte form while seconds fit 34 bits, the
 * 12-byte form beyond (from the year 2514, or before 1970).
 */
export function goTime(sec: number, nsec: number): Packed {
  if (sec >= 0 && sec < 2 ** 34) {
    if (nsec === 0 && sec < 2 ** 32) return timestamp32(sec);
    return timestamp64(sec, nsec);
  }
  return timestamp96(sec, nsec);
}

// -------------------------------------------------------------------------------------------
// The typed reader.

/** A decoded MessagePack value that remembers its wire type. */
export type Typed =
  | { type: 'nil' }
  | { type: 'bool'; value: boolean }
  | { type: 'int'; value: number; code: number }
  | { type: 'float'; value: number }
  | { type: 'str'; value: string }
  | { type: 'bin'; value: Buffer }
  | { type: 'array'; items: Typed[] }
  | { type: 'map'; entries: Array<[Typed, Typed]> }
  | { type: 'ext'; extType: number; data: Buffer };

/** Reads exactly one MessagePack value from `bytes`; throws on trailing bytes or truncation. */
export function readTyped(bytes: Uint8Array): Typed {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const need = (n: number): void => {
    if (pos + n > buf.length) throw new Error(`truncated MessagePack at byte ${pos}`);
  };
  const take = (n: number): Buffer => {
    need(n);
    const out = buf.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  const u8 = (): number => take(1).readUInt8(0);
  const u16 = (): number => take(2).readUInt16BE(0);
  const u32 = (): number => take(4).readUInt32BE(0);
  const items = (n: number): Typed[] => Array.from({ length: n }, () => value());
  const entries = (n: number): Array<[Typed, Typed]> =>
    Array.from({ length: n }, () => [value(), value()] as [Typed, Typed]);
  const ext = (n: number): Typed => {
    const extType = take(1).readInt8(0);
    return { type: 'ext', extType, data: Buffer.from(take(n)) };
  };
  function value(): Typed {
    const code = u8();
    if (code <= 0x7f) return { type: 'int', value: code, code };
    if (code >= 0xe0) return { type: 'int', value: code - 0x100, code };
    if ((code & 0xf0) === 0x80) return { type: 'map', entries: entries(code & 0x0f) };
    if ((code & 0xf0) === 0x90) return { type: 'array', items: items(code & 0x0f) };
    if ((code & 0xe0) === 0xa0) return { type: 'str', value: take(code & 0x1f).toString('utf8') };
    switch (code) {
      case 0xc0:
        return { type: 'nil' };
      case 0xc2:
      case 0xc3:
        return { type: 'bool', value: code === 0xc3 };
      case 0xc4:
        return { type: 'bin', value: Buffer.from(take(u8())) };
      case 0xc5:
        return { type: 'bin', value: Buffer.from(take(u16())) };
      case 0xc6:
        return { type: 'bin', value: Buffer.from(take(u32())) };
      case 0xc7:
        return ext(u8());
      case 0xc8:
        return ext(u16());
      case 0xc9:
        return ext(u32());
      case 0xca:
        return { type: 'float', value: take(4).readFloatBE(0) };
      case 0xcb:
        return { type: 'float', value: take(8).readDoubleBE(0) };
      case 0xcc:
        return { type: 'int', value: u8(), code };
      case 0xcd:
        return { type: 'int', value: u16(), code };
      case 0xce:
        return { type: 'int', value: u32(), code };
      case 0xcf:
        return { type: 'int', value: Number(take(8).readBigUInt64BE(0)), code };
      case 0xd0:
        return { type: 'int', value: take(1).readInt8(0), code };
      case 0xd1:
        return { type: 'int', value: take(2).readInt16BE(0), code };
      case 0xd2:
        return { type: 'int', value: take(4).readInt32BE(0), code };
      case 0xd3:
        return { type: 'int', value: Number(take(8).readBigInt64BE(0)), code };
      case 0xd4:
        return ext(1);
      case 0xd5:
        return ext(2);
      case 0xd6:
        return ext(4);
      case 0xd7:
        return ext(8);
      case 0xd8:
        return ext(16);
      case 0xd9:
        return { type: 'str', value: take(u8()).toString('utf8') };
      case 0xda:
        return { type: 'str', value: take(u16()).toString('utf8') };
      case 0xdb:
        return { type: 'str', value: take(u32()).toString('utf8') };
      case 0xdc:
        return { type: 'array', items: items(u16()) };
      case 0xdd:
        return { type: 'array', items: items(u32()) };
      case 0xde:
        return { type: 'map', entries: entries(u16()) };
      case 0xdf:
        return { type: 'map', entries: entries(u32()) };
      default:
        throw new Error(`invalid MessagePack code 0x${code.toString(16)} at byte ${pos - 1}`);
    }
  }
  const out = value();
  if (pos !== buf.length) throw new Error(`${buf.length - pos} trailing bytes after the value`);
  return out;
}

/**
 * The entries of a typed map whose keys are all str, as a plain object (in
 * wire order); throws if it is not such a map or a key repeats.
 */
export function strKeyed(node: Typed): Record<string, Typed> {
  if (node.type !== 'map') throw new Error(`expected a map, got ${node.type}`);
  const out: Record<string, Typed> = {};
  for (const [key, value] of node.entries) {
    if (key.type !== 'str') throw new Error(`a map key is a ${key.type}, not a str`);
    if (key.value in out) throw new Error(`the key ${key.value} repeats`);
    out[key.value] = value;
  }
  return out;
}

/** The milliseconds since the epoch of a timestamp extension (-1) in any of its three forms. */
export function timestampMs(node: Typed): number {
  if (node.type !== 'ext' || node.extType !== -1) throw new Error('not a timestamp extension');
  const data = node.data;
  let sec: bigint;
  let nsec: number;
  if (data.length === 4) {
    sec = BigInt(data.readUInt32BE(0));
    nsec = 0;
  } else if (data.length === 8) {
    const both = data.readBigUInt64BE(0);
    nsec = Number(both >> 34n);
    sec = both & 0x3ffffffffn;
  } else if (data.length === 12) {
    nsec = data.readUInt32BE(0);
    sec = data.readBigInt64BE(4);
  } else {
    throw new Error(`a timestamp extension of ${data.length} bytes`);
  }
  return Number(sec) * 1000 + Math.floor(nsec / 1e6);
}
