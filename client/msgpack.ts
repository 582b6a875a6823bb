/**
 * A small MessagePack codec for the client: the whole format on the decode
 * side (events arrive as maps with a bin entity and a timestamp extension),
 * and the JSON-like subset a push config needs on the encode side. Written
 * here rather than imported so that the browser bundle stays a few KB: the
 * general-purpose library costs about 4 KB gzipped for decoding alone.
 * No I/O, no Node-only API (TextEncoder, TextDecoder and DataView only).
 */

/** A MessagePack extension value other than the timestamp (type -1), kept as raw bytes. */
export interface MsgpackExtension {
  type: number;
  data: Uint8Array;
}

const utf8Decoder = new TextDecoder();
const utf8Encoder = new TextEncoder();
const TWO_32 = 4294967296;

/**
 * Decodes one MessagePack value that fills `bytes` exactly. Maps become plain
 * objects (keys turned to strings), bins Uint8Array copies, the timestamp
 * extension a Date, 64-bit integers numbers (precision beyond 2^53 is lost,
 * as with JSON). Throws RangeError on truncated input, an unknown type byte
 * or trailing bytes.
 */
export function decodeMsgpack(bytes: Uint8Array): unknown {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;

  const need = (n: number): number => {
    if (pos + n > bytes.length) throw new RangeError('msgpack: truncated input');
    const at = pos;
    pos += n;
    return at;
  };
  const take = (n: number): Uint8Array => {
    const at = need(n);
    return bytes.slice(at, at + n);
  };
  const str = (n: number): string => {
    const at = need(n);
    return utf8Decoder.decode(bytes.subarray(at, at + n));
  };
  const array = (n: number): unknown[] => {
    const out: unknown[] = [];
    for (let i = 0; i < n; i++) out.push(read());
    return out;
  };
  const map = (n: number): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (let i = 0; i < n; i++) {
      const key = String(read());
      const value = read();
      // A key named __proto__ must stay data, not replace the object's prototype.
      if (key === '__proto__') {
        Object.defineProperty(out, key, {
          value,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      } else out[key] = value;
    }
    return out;
  };
  const ext = (n: number): unknown => {
    const type = view.getInt8(need(1));
    const data = take(n);
    return type === -1 ? timestamp(data) : ({ type, data } satisfies MsgpackExtension);
  };

  function read(): unknown {
    const b = view.getUint8(need(1));
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if (b >= 0x80 && b <= 0x8f) return map(b & 0x0f);
    if (b >= 0x90 && b <= 0x9f) return array(b & 0x0f);
    if (b >= 0xa0 && b <= 0xbf) return str(b & 0x1f);
    switch (b) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
        return take(view.getUint8(need(1)));
      case 0xc5:
        return take(view.getUint16(need(2)));
      case 0xc6:
        return take(view.getUint32(need(4)));
      case 0xc7:
        return ext(view.getUint8(need(1)));
      case 0xc8:
        return ext(view.getUint16(need(2)));
      case 0xc9:
        return ext(view.getUint32(need(4)));
      case 0xca:
        return view.getFloat32(need(4));
      case 0xcb:
        return view.getFloat64(need(8));
      case 0xcc:
        return view.getUint8(need(1));
      case 0xcd:
        return view.getUint16(need(2));
      case 0xce:
        return view.getUint32(need(4));
      case 0xcf: {
        const at = need(8);
        return view.getUint32(at) * TWO_32 + view.getUint32(at + 4);
      }
      case 0xd0:
        return view.getInt8(need(1));
      case 0xd1:
        return view.getInt16(need(2));
      case 0xd2:
        return view.getInt32(need(4));
      case 0xd3: {
        const at = need(8);
        return view.getInt32(at) * TWO_32 + view.getUint32(at + 4);
      }
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
        return str(view.getUint8(need(1)));
      case 0xda:
        return str(view.getUint16(need(2)));
      case 0xdb:
        return str(view.getUint32(need(4)));
      case 0xdc:
        return array(view.getUint16(need(2)));
      case 0xdd:
        return array(view.getUint32(need(4)));
      case 0xde:
        return map(view.getUint16(need(2)));
      case 0xdf:
        return map(view.getUint32(need(4)));
      default:
        throw new RangeError(`msgpack: unknown type byte 0x${b.toString(16)}`);
    }
  }

  const value = read();
  if (pos !== bytes.length) throw new RangeError('msgpack: trailing bytes after the value');
  return value;
}

/** The timestamp extension (type -1) in its three sizes: 32, 64 and 96 bits. */
function timestamp(data: Uint8Array): Date {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let seconds: number;
  let nanoseconds = 0;
  if (data.length === 4) {
    seconds = view.getUint32(0);
  } else if (data.length === 8) {
    // 30 bits of nanoseconds, then 34 bits of seconds.
    const high = view.getUint32(0);
    nanoseconds = high >>> 2;
    seconds = (high & 0x3) * TWO_32 + view.getUint32(4);
  } else if (data.length === 12) {
    nanoseconds = view.getUint32(0);
    seconds = view.getInt32(4) * TWO_32 + view.getUint32(8);
  } else {
    throw new RangeError(`msgpack: a timestamp of ${data.length} bytes`);
  }
  return new Date(seconds * 1000 + Math.floor(nanoseconds / 1e6));
}

/**
 * Encodes a JSON-like value: null, booleans, numbers (integers in the
 * smallest format, others as float64), strings, Uint8Array (as bin), arrays
 * and plain objects. As JSON.stringify does, object keys whose value is
 * undefined are left out and undefined elsewhere is nil. Throws TypeError for
 * anything else (bigint, functions, symbols).
 */
export function encodeMsgpack(value: unknown): Uint8Array {
  let buf = new Uint8Array(256);
  let view = new DataView(buf.buffer);
  let pos = 0;

  const reserve = (n: number): number => {
    if (pos + n > buf.length) {
      const next = new Uint8Array(Math.max(buf.length * 2, pos + n));
      next.set(buf);
      buf = next;
      view = new DataView(buf.buffer);
    }
    const at = pos;
    pos += n;
    return at;
  };
  // reserve() may swap `buf` and `view` for bigger ones: call it before reading them.
  const u8 = (v: number): void => {
    const at = reserve(1);
    view.setUint8(at, v);
  };
  const u16 = (v: number): void => {
    const at = reserve(2);
    view.setUint16(at, v);
  };
  const u32 = (v: number): void => {
    const at = reserve(4);
    view.setUint32(at, v);
  };
  const bytes = (data: Uint8Array): void => {
    const at = reserve(data.length);
    buf.set(data, at);
  };
  /** A type byte followed by a length in the smallest of the 8-, 16- and 32-bit forms. */
  const head = (
    n: number,
    short: number | undefined,
    b8: number | undefined,
    b16: number,
  ): void => {
    if (short !== undefined && n < 16) u8(short | n);
    else if (b8 !== undefined && n < 0x100) {
      u8(b8);
      u8(n);
    } else if (n < 0x10000) {
      u8(b16);
      u16(n);
    } else {
      u8(b16 + 1);
      u32(n);
    }
  };

  function integer(n: number): void {
    if (n >= 0) {
      if (n < 0x80) u8(n);
      else if (n < 0x100) {
        u8(0xcc);
        u8(n);
      } else if (n < 0x10000) {
        u8(0xcd);
        u16(n);
      } else if (n < TWO_32) {
        u8(0xce);
        u32(n);
      } else {
        u8(0xcf);
        u32(Math.floor(n / TWO_32));
        u32(n >>> 0);
      }
    } else if (n >= -0x20) u8(n + 0x100);
    else if (n >= -0x80) {
      u8(0xd0);
      u8(n & 0xff);
    } else if (n >= -0x8000) {
      u8(0xd1);
      u16(n & 0xffff);
    } else if (n >= -0x80000000) {
      u8(0xd2);
      u32(n >>> 0);
    } else {
      u8(0xd3);
      u32(Math.floor(n / TWO_32) >>> 0);
      u32(n >>> 0);
    }
  }

  function write(v: unknown): void {
    if (v === null || v === undefined) u8(0xc0);
    else if (v === false) u8(0xc2);
    else if (v === true) u8(0xc3);
    else if (typeof v === 'number') {
      if (Number.isSafeInteger(v)) integer(v);
      else {
        u8(0xcb);
        const at = reserve(8);
        view.setFloat64(at, v);
      }
    } else if (typeof v === 'string') {
      const utf8 = utf8Encoder.encode(v);
      if (utf8.length < 32) u8(0xa0 | utf8.length);
      else head(utf8.length, undefined, 0xd9, 0xda);
      bytes(utf8);
    } else if (v instanceof Uint8Array) {
      head(v.length, undefined, 0xc4, 0xc5);
      bytes(v);
    } else if (Array.isArray(v)) {
      head(v.length, 0x90, undefined, 0xdc);
      for (const item of v) write(item);
    } else if (typeof v === 'object') {
      const entries = Object.entries(v).filter(([, item]) => item !== undefined);
      head(entries.length, 0x80, undefined, 0xde);
      for (const [key, item] of entries) {
        write(key);
        write(item);
      }
    } else {
      throw new TypeError(`msgpack: cannot encode a ${typeof v}`);
    }
  }

  write(value);
  return buf.slice(0, pos);
}
