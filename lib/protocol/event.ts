/**
 * Events on the wire (PROTOCOL.md section 3): the JSON text form, the
 * MessagePack form whose entity is a bin of MessagePack bytes, and the
 * decoded form a server dispatches. No I/O here.
 */
import { decode, encode } from './msgpack.js';
import { JSON_MEDIA_TYPE, MSGPACK_MEDIA_TYPE, type Encoding } from './encoding.js';

/** An event as an application publishes it. `timestamp` defaults to now. */
export interface PushEvent<E = unknown> {
  /** The kind of object (`task`, `user`). */
  identity: string;
  /** `create`, `update`, `delete`, `error`, or any string the application uses. */
  type: string;
  /** The object itself; any value MessagePack and JSON can both carry. */
  entity: E;
  /** When it happened; a Date, an RFC 3339 string or milliseconds since the epoch. */
  timestamp?: Date | string | number;
}

/** A malformed event: one that cannot be published or that arrived undecodable. */
export class EventFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EventFormatError';
  }
}

/**
 * Checks an application's event and returns its timestamp as a Date.
 * Throws {@link EventFormatError} when identity or type is not a non-empty
 * string, the entity is undefined, or the timestamp is not a valid date.
 */
export function normalizeTimestamp(event: PushEvent): Date {
  if (event === null || typeof event !== 'object') {
    throw new EventFormatError('an event must be an object { identity, type, entity }');
  }
  if (typeof event.identity !== 'string') {
    throw new EventFormatError('event.identity must be a string');
  }
  if (typeof event.type !== 'string' || event.type === '') {
    throw new EventFormatError('event.type must be a non-empty string');
  }
  if (event.entity === undefined) throw new EventFormatError('event.entity is missing');
  const ts = event.timestamp;
  const date = ts === undefined ? new Date() : ts instanceof Date ? ts : new Date(ts);
  if (Number.isNaN(date.getTime()))
    throw new EventFormatError('event.timestamp is not a valid date');
  return date;
}

/**
 * The MessagePack bytes of an event (section 3): a map of `entity` (bin of
 * `entityBytes`), `identity`, `type`, `timestamp` (extension -1) and
 * `encoding`. This is both the binary frame sent to MessagePack sessions and
 * the `data` of a publication.
 */
export function encodeMsgpackEvent(
  identity: string,
  type: string,
  entityBytes: Uint8Array,
  timestamp: Date,
): Uint8Array {
  return encode({
    entity: entityBytes,
    identity,
    type,
    timestamp,
    encoding: MSGPACK_MEDIA_TYPE,
  });
}

/**
 * The JSON text of an event (section 3), given its entity already
 * serialized, so that a server serializes an entity once per event.
 */
export function encodeJsonEvent(
  identity: string,
  type: string,
  entityJson: string,
  timestamp: Date,
): string {
  return (
    '{"entity":' +
    entityJson +
    ',"identity":' +
    JSON.stringify(identity) +
    ',"type":' +
    JSON.stringify(type) +
    ',"timestamp":"' +
    timestamp.toISOString() +
    '","encoding":"' +
    JSON_MEDIA_TYPE +
    '"}'
  );
}

/**
 * The MessagePack bytes of a map with one more entry, `key: value`, at its
 * end: the map's header counts one more and the pair is appended, so a
 * forwarded event keeps the publisher's bytes. Throws an EventFormatError
 * when `map` is not a map, or holds 2^32 - 1 entries.
 */
export function appendMapEntry(map: Uint8Array, key: string, value: string): Uint8Array {
  const first = map[0] as number;
  let header: Buffer;
  let bodyStart: number;
  let count: number;
  if (first >= 0x80 && first <= 0x8f) {
    count = (first & 0x0f) + 1;
    bodyStart = 1;
  } else if (first === 0xde) {
    count = ((map[1] as number) << 8) + (map[2] as number) + 1;
    bodyStart = 3;
  } else if (first === 0xdf) {
    count = Buffer.from(map.buffer, map.byteOffset, map.byteLength).readUInt32BE(1) + 1;
    bodyStart = 5;
  } else {
    throw new EventFormatError('the event is not a map');
  }
  if (count <= 15) header = Buffer.from([0x80 | count]);
  else if (count <= 0xffff) header = Buffer.from([0xde, count >> 8, count & 0xff]);
  else if (count <= 0xffffffff) {
    header = Buffer.allocUnsafe(5);
    header[0] = 0xdf;
    header.writeUInt32BE(count, 1);
  } else throw new EventFormatError('the event map is full');
  const pair = encode([key, value]);
  // encode() of a two-element array: a fixarray header (0x92), then the key and the value.
  return Buffer.concat([header, map.subarray(bodyStart), pair.subarray(1)]);
}

/** The MessagePack bytes of an entity. Throws when the value cannot be encoded. */
export function encodeEntity(entity: unknown): Uint8Array {
  return encode(entity);
}

/** The key MessagePack decoders refuse (ours, @msgpack/msgpack, throws on it): an entity holding it decodes nowhere. */
const PROTO_KEY = '__proto__';
const PROTO_KEY_BYTES = Buffer.from(PROTO_KEY, 'latin1');
/** Deeper than this, an entity is not searched further (the encoder refuses 100 levels anyway). */
const MAX_SEARCH_DEPTH = 100;

/**
 * The path of the first own `__proto__` key in a value (`entity.a[2].__proto__`),
 * through arrays, Maps and objects' own enumerable keys, or undefined. Why:
 * such an entity encodes, but no MessagePack decoder of ours will read it,
 * so JSON sessions and plugins would never see what MessagePack sessions got.
 */
export function findProtoKey(value: unknown, path = 'entity', depth = 0): string | undefined {
  if (value === null || typeof value !== 'object' || depth > MAX_SEARCH_DEPTH) return undefined;
  if (ArrayBuffer.isView(value) || value instanceof Date) return undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findProtoKey(value[i], `${path}[${i}]`, depth + 1);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (value instanceof Map) {
    for (const [key, item] of value) {
      if (key === PROTO_KEY) return `${path}.${PROTO_KEY}`;
      const found = findProtoKey(item, `${path}.${String(key)}`, depth + 1);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  for (const key of Object.keys(value)) {
    if (key === PROTO_KEY) return `${path}.${PROTO_KEY}`;
    const found = findProtoKey(
      (value as Record<string, unknown>)[key],
      `${path}.${key}`,
      depth + 1,
    );
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * True when MessagePack bytes may hold a `__proto__` key: keys are raw
 * UTF-8 there, so one that does not contain the nine bytes holds none. A
 * byte search, far cheaper than a decode, so that only the rare entity
 * that says `__proto__` somewhere is decoded to find out.
 */
export function mayHoldProtoKey(bytes: Uint8Array): boolean {
  return (
    Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).indexOf(PROTO_KEY_BYTES) !== -1
  );
}

/**
 * Numbers WireEvents in the order they are made. Never wraps in practice (2^53 events), so a
 * number names one event for the life of the process.
 */
let nextMemoKey = 0;

/** An event received from the topic, decoded lazily: the entity is decoded at most once. */
export class WireEvent {
  /** This event's number, which push-config selectors use to remember their verdict on it. */
  readonly memoKey: number = ++nextMemoKey;
  /** The kind of object. */
  readonly identity: string;
  /** The event type. */
  readonly type: string;
  /** When it happened. */
  readonly timestamp: Date;
  /** How `entityBytes` is encoded. */
  readonly entityEncoding: Encoding;
  readonly #entityBytes: Uint8Array | undefined;
  /** The MessagePack bytes of the whole event, when they can be forwarded as they are. */
  readonly #msgpackBytes: Uint8Array | undefined;
  #entity: unknown;
  #entityDecoded = false;
  /** Why the entity did not decode: kept so that a bad entity is decoded once, not once per session. */
  #entityError: EventFormatError | undefined;
  #entityJson: string | undefined;
  /**
   * The event's position in the topic's history (docs/PROTOCOL.md, "Recovery"), set when it
   * came from a history; written into its frames under `position`, and absent otherwise, so
   * that without history the frames are bahamut's byte for byte.
   */
  position: string | undefined;

  constructor(init: {
    identity: string;
    type: string;
    timestamp: Date;
    entityEncoding: Encoding;
    entityBytes?: Uint8Array;
    entity?: unknown;
    msgpackBytes?: Uint8Array;
  }) {
    this.identity = init.identity;
    this.type = init.type;
    this.timestamp = init.timestamp;
    this.entityEncoding = init.entityEncoding;
    this.#entityBytes = init.entityBytes;
    this.#msgpackBytes = init.msgpackBytes;
    if (init.entityBytes === undefined) {
      this.#entity = init.entity;
      this.#entityDecoded = true;
    }
  }

  /**
   * The entity as a JavaScript value, decoded on first access and cached.
   * Throws {@link EventFormatError} when the entity bytes do not decode.
   */
  get entity(): unknown {
    if (!this.#entityDecoded) {
      // The failure is cached too: every session with a filter reads the
      // entity, and an undecodable one must not be decoded again for each.
      if (this.#entityError !== undefined) throw this.#entityError;
      const bytes = this.#entityBytes as Uint8Array;
      try {
        this.#entity =
          this.entityEncoding === MSGPACK_MEDIA_TYPE
            ? decode(bytes)
            : JSON.parse(new TextDecoder().decode(bytes));
      } catch (error) {
        this.#entityError = new EventFormatError(
          `the entity does not decode: ${(error as Error).message}`,
        );
        throw this.#entityError;
      }
      this.#entityDecoded = true;
    }
    return this.#entity;
  }

  /**
   * Why no session can be given this event, or undefined: an entity that
   * holds a `__proto__` key, which JSON sessions and plugins could not read
   * while MessagePack sessions got the publisher's bytes. Checked before
   * dispatch so that it is undecodable for every encoding alike. MessagePack
   * entities are decoded only when their bytes contain the key's text.
   */
  undecodableReason(): string | undefined {
    if (this.#entityDecoded) {
      const path = findProtoKey(this.#entity);
      return path === undefined ? undefined : `the entity holds a __proto__ key at ${path}`;
    }
    if (this.entityEncoding !== MSGPACK_MEDIA_TYPE) return undefined;
    if (!mayHoldProtoKey(this.#entityBytes as Uint8Array)) return undefined;
    try {
      void this.entity;
    } catch (error) {
      return (error as Error).message;
    }
    return undefined;
  }

  /**
   * elemental's `Event.Encoding`: how the entity came encoded (the same as `entityEncoding`),
   * so that a handler ported from Go reads it by the same name.
   */
  get encoding(): Encoding {
    return this.entityEncoding;
  }

  /**
   * elemental's `Event.Decode(&dst)`: the entity, decoded once and shared with `entity` (so
   * do not mutate it). `T` is not checked: a Go port's `event.Decode(&task)` becomes
   * `const task = event.decode<Task>()`. Throws {@link EventFormatError} as `entity` does.
   */
  decode<T = unknown>(): T {
    return this.entity as T;
  }

  /** True once the entity has been decoded (for tests of the decode-once rule). */
  get entityDecoded(): boolean {
    return this.#entityDecoded;
  }

  /** The JSON text of the event, built once. */
  toJson(): string {
    if (this.#entityJson === undefined) {
      if (this.entityEncoding === JSON_MEDIA_TYPE && this.#entityBytes !== undefined) {
        // The publisher's text is spliced into the event as it is, so it must
        // be one JSON value: reading `entity` parses it (once) and throws when
        // it is not, rather than sending clients broken JSON or extra keys.
        void this.entity;
        this.#entityJson = new TextDecoder().decode(this.#entityBytes);
      } else {
        this.#entityJson = JSON.stringify(this.entity) ?? 'null';
      }
    }
    const json = encodeJsonEvent(this.identity, this.type, this.#entityJson, this.timestamp);
    if (this.position === undefined) return json;
    return json.slice(0, -1) + ',"position":' + JSON.stringify(this.position) + '}';
  }

  /** The MessagePack bytes of the event: the publisher's bytes when possible, else re-encoded. */
  toMsgpack(): Uint8Array {
    let bytes = this.#msgpackBytes;
    if (bytes === undefined) {
      const entityBytes =
        this.entityEncoding === MSGPACK_MEDIA_TYPE && this.#entityBytes !== undefined
          ? this.#entityBytes
          : encode(this.entity);
      bytes = encodeMsgpackEvent(this.identity, this.type, entityBytes, this.timestamp);
    }
    return this.position === undefined ? bytes : appendMapEntry(bytes, 'position', this.position);
  }
}

function asRecord(value: unknown, what: string): Record<string, unknown> {
  if (
    value === null ||
    typeof value !== 'object' ||
    Array.isArray(value) ||
    value instanceof Uint8Array
  ) {
    throw new EventFormatError(`${what} is not a map`);
  }
  return value as Record<string, unknown>;
}

function readTimestamp(value: unknown): Date {
  if (value instanceof Date && !Number.isNaN(value.getTime())) return value;
  if (typeof value === 'string' || typeof value === 'number') {
    const date = new Date(value);
    if (!Number.isNaN(date.getTime())) return date;
  }
  throw new EventFormatError('event.timestamp is not a timestamp');
}

function readEntityEncoding(value: unknown): Encoding {
  // A missing encoding is read as MessagePack: the protocol's default inside a publication.
  if (value === undefined || value === null || value === '' || value === MSGPACK_MEDIA_TYPE) {
    return MSGPACK_MEDIA_TYPE;
  }
  if (value === JSON_MEDIA_TYPE) return JSON_MEDIA_TYPE;
  throw new EventFormatError(`event.encoding ${JSON.stringify(value)} is not supported`);
}

/** An event's map with its identity and type checked, from `decodeBytes`. Throws EventFormatError. */
function readEventMap(
  decodeBytes: () => unknown,
): Record<string, unknown> & { identity: string; type: string } {
  let raw: unknown;
  try {
    raw = decodeBytes();
  } catch (error) {
    throw new EventFormatError(`the event does not decode: ${(error as Error).message}`);
  }
  const map = asRecord(raw, 'the event');
  if (typeof map.identity !== 'string')
    throw new EventFormatError('event.identity is not a string');
  if (typeof map.type !== 'string') throw new EventFormatError('event.type is not a string');
  return map as Record<string, unknown> & { identity: string; type: string };
}

/**
 * Decodes the MessagePack bytes of an event (section 3) without decoding
 * its entity. Throws {@link EventFormatError} when they are not an event.
 */
export function decodeMsgpackEvent(bytes: Uint8Array): WireEvent {
  const map = readEventMap(() => decode(bytes));
  const entityEncoding = readEntityEncoding(map.encoding);
  const timestamp = readTimestamp(map.timestamp);
  const entity = map.entity;
  if (entity instanceof Uint8Array) {
    return new WireEvent({
      identity: map.identity,
      type: map.type,
      timestamp,
      entityEncoding,
      entityBytes: entity,
      // Forwarding the publisher's bytes is only right when they are already
      // section 3: the encoding says MessagePack and the timestamp is the
      // extension -1 (a string or a number of milliseconds is read, but would
      // reach clients as it is). Otherwise the envelope is re-encoded, still
      // from the entity bytes, without decoding them.
      ...(map.encoding === MSGPACK_MEDIA_TYPE && map.timestamp instanceof Date
        ? { msgpackBytes: bytes }
        : {}),
    });
  }
  // Some publishers nest the entity as a map instead of a bin: accept it, re-encode on send.
  return new WireEvent({
    identity: map.identity,
    type: map.type,
    timestamp,
    entityEncoding: MSGPACK_MEDIA_TYPE,
    entity: entity ?? null,
  });
}

/**
 * Decodes the JSON bytes of an event (a publication whose encoding is JSON).
 * Throws {@link EventFormatError}.
 */
export function decodeJsonEvent(bytes: Uint8Array): WireEvent {
  const map = readEventMap(() => JSON.parse(new TextDecoder().decode(bytes)) as unknown);
  return new WireEvent({
    identity: map.identity,
    type: map.type,
    timestamp: readTimestamp(map.timestamp),
    entityEncoding: JSON_MEDIA_TYPE,
    entity: map.entity ?? null,
  });
}

/** Builds the event a server dispatches from an application's event, without a topic. */
export function wireEventFrom(event: PushEvent, timestamp: Date): WireEvent {
  return new WireEvent({
    identity: event.identity,
    type: event.type,
    timestamp,
    entityEncoding: MSGPACK_MEDIA_TYPE,
    entity: event.entity,
  });
}
