/**
 * The client's side of the wire format (PROTOCOL.md sections 3 and 4):
 * events in, push configs out, in either encoding. No I/O.
 */
import { encodeMsgpack } from './config-encoder.js';
import { PushDecodeError } from './errors.js';
import { Decoder } from '@msgpack/msgpack';

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
  /**
   * Its position in the topic's history, when the server keeps history
   * (PROTOCOL.md section 9): what the client sends back as `since` to resume.
   */
  position?: string;
}

/** The recovery frame of PROTOCOL.md section 9: the end of a replay after a reconnection. */
export interface RecoveryInfo {
  /** True when every event since the last one received was replayed; false: re-read state. */
  recovered: boolean;
  /** Where the client stands now: the `since` of its next reconnection. */
  position: string;
}

/**
 * What toEvent makes of a recovery frame: an event of identity `''` and type `recovery` whose
 * entity is the {@link RecoveryInfo}, told apart by the client as it tells error events apart.
 */
export const RECOVERY_TYPE = 'recovery';

const JSON_MEDIA_TYPE = 'application/json';
// One decoder for the page: the library's decode() builds an instance (and its buffers) per
// call. Events are decoded one at a time, never nested. Configs are encoded by
// config-encoder.ts, not by the library's Encoder, which cost 1.7 KB of the bundle's budget.
const msgpackDecoder = new Decoder();
const utf8 = new TextDecoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

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
  const recovery = map.recovery as Partial<RecoveryInfo> | null | undefined;
  if (map.identity === undefined && typeof recovery === 'object' && recovery !== null) {
    const info: RecoveryInfo = {
      recovered: recovery.recovered === true,
      position: typeof recovery.position === 'string' ? recovery.position : '',
    };
    return { identity: '', type: RECOVERY_TYPE, entity: info, timestamp: new Date() };
  }
  if (typeof map.identity !== 'string' || typeof map.type !== 'string') {
    throw new PushDecodeError('the event has no identity or type');
  }
  const event: ReceivedEvent = {
    identity: map.identity,
    type: map.type,
    entity,
    timestamp: readTimestamp(map.timestamp),
  };
  if (typeof map.position === 'string') event.position = map.position;
  return event;
}

function asBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data))
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

function decodeJsonEvent(text: string): ReceivedEvent {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new PushDecodeError('a message that is not JSON');
  }
  const map = asRecord(raw);
  return toEvent(map, map.entity ?? null);
}

function decodeMsgpackEvent(bytes: Uint8Array): ReceivedEvent {
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
    throw new PushDecodeError(
      `a MessagePack message that does not decode: ${(error as Error).message}`,
    );
  }
  return toEvent(map, entity ?? null);
}

/**
 * Decodes one WebSocket message into an event, by the session's encoding
 * when it is given: bahamut writes every message as a text frame, its
 * MessagePack events included (PROTOCOL.md section 3), so the frame's
 * opcode says nothing. `json`: the message is JSON, as a string or as
 * bytes (strict UTF-8). `msgpack`: the message is bytes, a map whose
 * `entity` is a bin holding the entity's own MessagePack bytes (or, if the
 * event says `application/json`, its JSON text); a string is refused, since
 * a WebSocket that decoded a MessagePack text frame as text has lost its
 * bytes (the transport must hand text frames over as bytes). Without
 * `encoding` (older callers), the opcode decides: a string is JSON, bytes
 * are MessagePack. Throws {@link PushDecodeError}.
 */
export function decodeEvent(data: unknown, encoding?: PushEncoding): ReceivedEvent {
  const bytes = asBytes(data);
  if (typeof data !== 'string' && bytes === undefined) {
    throw new PushDecodeError('a message that is neither text nor bytes');
  }
  if (encoding === 'msgpack') {
    if (bytes === undefined) {
      throw new PushDecodeError(
        'a MessagePack session got a message already decoded as text: its bytes are lost',
      );
    }
    return decodeMsgpackEvent(bytes);
  }
  if (encoding === 'json') {
    if (typeof data === 'string') return decodeJsonEvent(data);
    let text: string;
    try {
      text = strictUtf8.decode(bytes);
    } catch {
      throw new PushDecodeError('a JSON message that is not UTF-8');
    }
    return decodeJsonEvent(text);
  }
  return typeof data === 'string' ? decodeJsonEvent(data) : decodeMsgpackEvent(bytes!);
}

/**
 * True when JSON.stringify keeps all of `value`: strings, finite numbers,
 * booleans, null, arrays and plain objects of those (undefined members are
 * left out by both encoders). A MessagePack config sent as JSON in a URL
 * must mean the same; Dates, bytes and the like would not.
 */
export function isPlainJson(value: unknown, depth = 0): boolean {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return true;
  if (typeof value === 'number') return Number.isFinite(value);
  if (typeof value !== 'object' || depth > 64) return false;
  if (Array.isArray(value)) return value.every((item) => isPlainJson(item, depth + 1));
  const proto = Object.getPrototypeOf(value) as unknown;
  if (proto !== Object.prototype && proto !== null) return false;
  return Object.values(value).every((item) => item === undefined || isPlainJson(item, depth + 1));
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
    // A config key set to undefined is left out, as JSON.stringify leaves it out (not nil).
    return encodeMsgpack(config);
  } catch (error) {
    // The encoder's own TypeErrors (a bigint, a function, a cycle), but also whatever a getter
    // of the config throws: setConfig promises a TypeError, as JSON.stringify throws for a bigint.
    throw new TypeError(`the push config cannot be encoded: ${(error as Error).message}`, {
      cause: error,
    });
  }
}
