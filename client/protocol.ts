/**
 * The client's side of the wire format (PROTOCOL.md sections 3 and 4):
 * events in, push configs out, in either encoding. No I/O.
 */
import { PushDecodeError } from './errors.js';
import { Decoder, Encoder } from '@msgpack/msgpack';

/** How the client and the server talk: the `encoding` query parameter. */
export type PushEncoding = 'json' | 'msgpack';

/** A push config (section 4); a new one replaces the previous one entirely. */
export interface PushConfig {
  /** Identity → the event types wanted (empty: every type). Absent or empty: every event. */
  identities?: Record<string, string[]>;
  /** Identity → a filter expression on the entity; the identity must be a key of `identities`. */
  filters?: Record<string, string>;
  /** Merged into the session's parameters on the server. */
  parameters?: Record<string, string | string[]>;
}

/** An event as the client delivers it: entity decoded, timestamp a Date, whatever the encoding. */
export interface ReceivedEvent<E = unknown> {
  /** The kind of object (`task`, `user`). */
  identity: string;
  /** `create`, `update`, `delete`, or any string the application uses. */
  type: string;
  /** The object itself. */
  entity: E;
  /** When it happened, as the publisher said. */
  timestamp: Date;
}

const JSON_MEDIA_TYPE = 'application/json';
// One decoder and one encoder for the page: the library's decode()/encode() build an
// instance (and its buffers) per call. Events are decoded one at a time, never nested.
const msgpackDecoder = new Decoder();
// A config key set to undefined is left out, as JSON.stringify leaves it out (not nil).
const msgpackEncoder = new Encoder({ ignoreUndefined: true });
const utf8 = new TextDecoder();

function asRecord(value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new PushDecodeError('the message is not an event (not a map)');
  }
  return value as Record<string, unknown>;
}

function readTimestamp(value: unknown): Date {
  const date =
    value instanceof Date
      ? value
      : typeof value === 'string' || typeof value === 'number'
        ? new Date(value)
        : undefined;
  if (date === undefined || Number.isNaN(date.getTime())) {
    throw new PushDecodeError('the event has no valid timestamp');
  }
  return date;
}

function toEvent(map: Record<string, unknown>, entity: unknown): ReceivedEvent {
  if (typeof map.identity !== 'string' || typeof map.type !== 'string') {
    throw new PushDecodeError('the event has no identity or type');
  }
  return {
    identity: map.identity,
    type: map.type,
    entity,
    timestamp: readTimestamp(map.timestamp),
  };
}

/**
 * Decodes one WebSocket message into an event: a text frame is JSON, a
 * binary frame MessagePack whose `entity` is a bin holding the entity's own
 * MessagePack bytes (or, if the event says `application/json`, its JSON
 * text). Throws {@link PushDecodeError}.
 */
export function decodeEvent(data: unknown): ReceivedEvent {
  if (typeof data === 'string') {
    let raw: unknown;
    try {
      raw = JSON.parse(data);
    } catch {
      throw new PushDecodeError('a text message that is not JSON');
    }
    const map = asRecord(raw);
    return toEvent(map, map.entity ?? null);
  }
  let bytes: Uint8Array;
  if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else if (ArrayBuffer.isView(data))
    bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else throw new PushDecodeError('a message that is neither text nor bytes');
  let map: Record<string, unknown>;
  let entity: unknown;
  try {
    map = asRecord(msgpackDecoder.decode(bytes));
    entity = map.entity;
    if (entity instanceof Uint8Array) {
      entity =
        map.encoding === JSON_MEDIA_TYPE
          ? JSON.parse(utf8.decode(entity))
          : msgpackDecoder.decode(entity);
    }
  } catch (error) {
    if (error instanceof PushDecodeError) throw error;
    throw new PushDecodeError(`a binary message that does not decode: ${(error as Error).message}`);
  }
  return toEvent(map, entity ?? null);
}

/**
 * Encodes a push config in the session's encoding: JSON text or MessagePack
 * bytes. Throws TypeError when it is not an object or cannot be encoded.
 */
export function encodeConfig(config: PushConfig, encoding: PushEncoding): string | Uint8Array {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) {
    throw new TypeError('a push config is an object { identities, filters, parameters }');
  }
  if (encoding !== 'msgpack') return JSON.stringify(config);
  try {
    return msgpackEncoder.encode(config);
  } catch (error) {
    // The library throws a plain Error for what it cannot encode (a bigint, a function):
    // setConfig promises a TypeError, as JSON.stringify throws for a bigint.
    throw new TypeError(`the push config cannot be encoded: ${(error as Error).message}`, {
      cause: error,
    });
  }
}
