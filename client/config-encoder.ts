/**
 * A MessagePack encoder for push configs, written for the browser bundle:
 * `@msgpack/msgpack`'s Encoder cost 1.7 KB gzipped of the client's 10 KB
 * budget to send a few strings a session. Its output is byte for byte what
 * that library's `encode(value, { ignoreUndefined: true })` writes
 * (test/unit/client-config-encoder.test.ts proves it), so servers see the
 * same frames as before; the Decoder, which events need, stays the
 * library's. No I/O.
 */

/**
 * The deepest a value may sit, counting the config itself as 1: the
 * library's default `maxDepth`, so what it refused is refused here too.
 */
export const MAX_CONFIG_DEPTH = 100;

// Above this many UTF-16 units the library hands a string to TextEncoder, below it encodes it
// itself; the two differ only on a lone surrogate (U+FFFD, or the surrogate's own three bytes).
const TEXT_ENCODER_THRESHOLD = 50;
const textEncoder = new TextEncoder();

/**
 * The MessagePack bytes of `value`, as `@msgpack/msgpack` encodes it with
 * `ignoreUndefined`: a map of an object's own enumerable string keys
 * (those set to undefined left out), an array's items (undefined is nil),
 * strings in UTF-8 in the shortest str form, safe integers in the shortest
 * int form, every other number as a float 64, a typed array or DataView as
 * bin, a Date as the timestamp extension. Throws TypeError for a bigint, a
 * function or a symbol, a cycle, or a value nested deeper than
 * {@link MAX_CONFIG_DEPTH}.
 */
export function encodeMsgpack(value: unknown): Uint8Array {
  let bytes = new Uint8Array(256);
  let view = new DataView(bytes.buffer);
  let pos = 0;
  // The keys and indexes down to the value being encoded: where an error says it is.
  const path: (string | number)[] = [];
  const ancestors = new Set<object>();

  /** Reserves `size` bytes and returns where they start, growing the buffer when needed. */
  const reserve = (size: number): number => {
    if (pos + size > bytes.length) {
      const grown = new Uint8Array((pos + size) * 2);
      grown.set(bytes);
      bytes = grown;
      view = new DataView(grown.buffer);
    }
    pos += size;
    return pos - size;
  };
  /** Copies `data` in (reserve first: it may replace `bytes`). */
  const put = (data: Uint8Array): void => {
    const at = reserve(data.length);
    bytes.set(data, at);
  };
  const u8 = (byte: number): void => {
    const at = reserve(1);
    bytes[at] = byte;
  };
  // Reserved before `view` is read, for the same reason.
  const u16 = (n: number): void => {
    const at = reserve(2);
    view.setUint16(at, n);
  };
  const u32 = (n: number): void => {
    const at = reserve(4);
    view.setUint32(at, n);
  };
  // Two 32-bit halves, as the library writes them: DataView truncates each to 32 bits, so a
  // negative integer comes out in two's complement, and NaN (an invalid Date's seconds) as 0.
  const u64 = (n: number): void => {
    u32(Math.floor(n / 0x1_0000_0000));
    u32(n);
  };
  const fail = (what: string): never => {
    const where = path.length === 0 ? 'the config' : path.join('.');
    throw new TypeError(`${where}: ${what}`);
  };

  /**
   * The header of a str, bin, array or map of `n` elements: `fix + n` below
   * `fixLimit`, else the 8-bit form `w8` (0: the type has none), else `w16`
   * or the 32-bit form right after it.
   */
  const header = (n: number, fix: number, fixLimit: number, w8: number, w16: number): void => {
    if (n < fixLimit) u8(fix + n);
    else if (w8 !== 0 && n < 0x100) {
      u8(w8);
      u8(n);
    } else if (n < 0x10000) {
      u8(w16);
      u16(n);
    } else if (n <= 0xffff_ffff) {
      u8(w16 + 1);
      u32(n);
    } else fail(`${n} elements do not fit a MessagePack length`);
  };

  const encodeString = (text: string): void => {
    let utf8: Uint8Array;
    if (text.length > TEXT_ENCODER_THRESHOLD) {
      utf8 = textEncoder.encode(text);
    } else {
      // The library's own loop: code points, a lone surrogate written as if it were one.
      const out: number[] = [];
      for (const char of text) {
        const c = char.codePointAt(0) as number;
        if (c < 0x80) out.push(c);
        else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
        else if (c < 0x10000) {
          out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
        } else {
          out.push(
            0xf0 | (c >> 18),
            0x80 | ((c >> 12) & 0x3f),
            0x80 | ((c >> 6) & 0x3f),
            0x80 | (c & 0x3f),
          );
        }
      }
      utf8 = Uint8Array.from(out);
    }
    header(utf8.length, 0xa0, 32, 0xd9, 0xda);
    put(utf8);
  };

  const encodeNumber = (n: number): void => {
    if (!Number.isSafeInteger(n)) {
      u8(0xcb);
      const at = reserve(8);
      view.setFloat64(at, n);
    } else if (n >= 0) {
      // -0 is a safe integer not below 0: the library writes it as the fixint 0, and so does this.
      if (n < 0x80) u8(n);
      else if (n < 0x100) {
        u8(0xcc);
        u8(n);
      } else if (n < 0x10000) {
        u8(0xcd);
        u16(n);
      } else if (n < 0x1_0000_0000) {
        u8(0xce);
        u32(n);
      } else {
        u8(0xcf);
        u64(n);
      }
    } else if (n >= -0x20) {
      u8(n & 0xff);
    } else if (n >= -0x80) {
      u8(0xd0);
      u8(n & 0xff);
    } else if (n >= -0x8000) {
      u8(0xd1);
      u16(n & 0xffff);
    } else if (n >= -0x8000_0000) {
      u8(0xd2);
      u32(n);
    } else {
      u8(0xd3);
      u64(n);
    }
  };

  /** The timestamp extension (type -1) in the smallest of its three sizes, as the library picks. */
  const encodeDate = (date: Date): void => {
    const ms = date.getTime();
    const sec = Math.floor(ms / 1000);
    const nsec = (ms - sec * 1000) * 1e6;
    if (sec >= 0 && nsec >= 0 && sec <= 0x3_ffff_ffff) {
      if (nsec === 0 && sec <= 0xffff_ffff) {
        u8(0xd6);
        u8(0xff);
        u32(sec);
      } else {
        u8(0xd7);
        u8(0xff);
        u32((nsec << 2) | ((sec / 0x1_0000_0000) & 3));
        u32(sec);
      }
    } else {
      // Before 1970 or after 2514, or an invalid Date (NaN: the library writes zeros).
      u8(0xc7);
      u8(12);
      u8(0xff);
      u32(nsec);
      u64(sec);
    }
  };

  const encode = (item: unknown, depth: number): void => {
    // Checked before the type, as the library does: even a nil too deep is refused.
    if (depth > MAX_CONFIG_DEPTH) fail(`nested deeper than ${MAX_CONFIG_DEPTH}`);
    if (item === null || item === undefined) u8(0xc0);
    else if (typeof item === 'boolean') u8(item ? 0xc3 : 0xc2);
    else if (typeof item === 'number') encodeNumber(item);
    else if (typeof item === 'string') encodeString(item);
    else if (typeof item !== 'object') {
      // The library throws for these too; JSON.stringify throws for a bigint, and drops the rest.
      fail(`a ${typeof item} cannot be encoded in MessagePack`);
    } else if (item instanceof Date) encodeDate(item);
    else if (ArrayBuffer.isView(item)) {
      header(item.byteLength, 0, 0, 0xc4, 0xc5);
      put(new Uint8Array(item.buffer, item.byteOffset, item.byteLength));
    } else {
      // The depth bound alone would stop a cycle, 100 levels down and with a misleading message.
      if (ancestors.has(item)) fail('the config holds a cycle');
      ancestors.add(item);
      if (Array.isArray(item)) {
        header(item.length, 0x90, 16, 0, 0xdc);
        for (let i = 0; i < item.length; i++) {
          path.push(i);
          encode(item[i], depth + 1);
          path.pop();
        }
      } else {
        // Any other object is a map of its own enumerable keys, a Map or a class instance too,
        // as in the library (and in JSON.stringify). Each property is read once: a getter's
        // second answer cannot disagree with the count already written.
        const entries = Object.entries(item).filter((entry) => entry[1] !== undefined);
        header(entries.length, 0x80, 16, 0, 0xde);
        for (const [key, member] of entries) {
          encodeString(key);
          path.push(key);
          encode(member, depth + 1);
          path.pop();
        }
      }
      ancestors.delete(item);
    }
  };

  encode(value, 1);
  return bytes.slice(0, pos);
}
