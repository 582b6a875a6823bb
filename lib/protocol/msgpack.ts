/**
 * MessagePack encode and decode through one shared Encoder and Decoder:
 * the library's `encode()`/`decode()` build a new instance (and a 2 KiB
 * buffer) on every call, which showed in the benchmark's profile.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';

const encoder = new Encoder();
const decoder = new Decoder();

/** The MessagePack bytes of a value, in a buffer of their own. Throws on an unencodable value. */
export function encode(value: unknown): Uint8Array {
  return encoder.encode(value);
}

/** Decodes one MessagePack value. Bins are views into `bytes`. Throws on malformed input. */
export function decode(bytes: Uint8Array): unknown {
  return decoder.decode(bytes);
}
