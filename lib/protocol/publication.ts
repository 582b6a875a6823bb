/**
 * The publication envelope (PROTOCOL.md section 8): what servers exchange
 * on the pub/sub topic, bahamut's `Publication`. No I/O here.
 */
import { decode, encode } from './msgpack.js';
import { JSON_MEDIA_TYPE, MSGPACK_MEDIA_TYPE } from './encoding.js';
import { decodeJsonEvent, decodeMsgpackEvent, EventFormatError, type WireEvent } from './event.js';

/** bahamut's response modes of a publication. */
export const ResponseMode = { None: 0, Ack: 1, Publication: 2 } as const;

/** The envelope's fields besides its data, as plugins see and set them. */
export interface PublicationHeaders {
  /** The topic or subject it was published to. */
  topic: string;
  /** The operation that published it. */
  trackingName?: string;
  /** An OpenTracing TextMap carrier: the publisher's span context. */
  trackingData?: Record<string, string>;
  /** Optional partition. */
  partition?: number;
  /** 0 none, 1 ack, 2 publication. */
  responseMode?: number;
}

/** A decoded publication: its headers and the event it carries. */
export interface DecodedPublication extends PublicationHeaders {
  /** The event, its entity not yet decoded. */
  event: WireEvent;
}

/**
 * Encodes a publication: a MessagePack map of `topic`, `data` (the event's
 * MessagePack bytes, section 3), `encoding` and the optional keys that are set.
 */
export function encodePublication(headers: PublicationHeaders, eventBytes: Uint8Array): Uint8Array {
  const envelope: Record<string, unknown> = {
    topic: headers.topic,
    data: eventBytes,
    encoding: MSGPACK_MEDIA_TYPE,
  };
  if (headers.trackingName !== undefined) envelope.trackingName = headers.trackingName;
  if (headers.trackingData !== undefined && Object.keys(headers.trackingData).length > 0) {
    envelope.trackingData = headers.trackingData;
  }
  if (headers.partition !== undefined) envelope.partition = headers.partition;
  if (headers.responseMode !== undefined) envelope.responseMode = headers.responseMode;
  return encode(envelope);
}

function readTrackingData(value: unknown): Record<string, string> | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new EventFormatError('publication.trackingData is not a map');
  }
  const out: Record<string, string> = {};
  for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
    if (typeof v === 'string') out[key] = v;
  }
  return out;
}

/**
 * Decodes a publication and the event inside it (not the entity). Throws
 * {@link EventFormatError} when the bytes are not a publication of an event.
 */
export function decodePublication(bytes: Uint8Array): DecodedPublication {
  let raw: unknown;
  try {
    raw = decode(bytes);
  } catch (error) {
    throw new EventFormatError(`the publication does not decode: ${(error as Error).message}`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw) || raw instanceof Uint8Array) {
    throw new EventFormatError('the publication is not a map');
  }
  const map = raw as Record<string, unknown>;
  if (!(map.data instanceof Uint8Array))
    throw new EventFormatError('publication.data is not a bin');
  const encoding = map.encoding ?? MSGPACK_MEDIA_TYPE;
  let event: WireEvent;
  if (encoding === MSGPACK_MEDIA_TYPE || encoding === '') event = decodeMsgpackEvent(map.data);
  else if (encoding === JSON_MEDIA_TYPE) event = decodeJsonEvent(map.data);
  else
    throw new EventFormatError(`publication.encoding ${JSON.stringify(encoding)} is not supported`);
  const out: DecodedPublication = {
    topic: typeof map.topic === 'string' ? map.topic : '',
    event,
  };
  if (typeof map.trackingName === 'string') out.trackingName = map.trackingName;
  const trackingData = readTrackingData(map.trackingData);
  if (trackingData !== undefined) out.trackingData = trackingData;
  if (typeof map.partition === 'number') out.partition = map.partition;
  if (typeof map.responseMode === 'number') out.responseMode = map.responseMode;
  return out;
}

/**
 * The subject an event is published to: the topic, or with subject
 * hierarchies `<topic>.<identity>.<type>`.
 */
export function publicationSubject(
  topic: string,
  identity: string,
  type: string,
  subjectHierarchies: boolean,
): string {
  return subjectHierarchies ? `${topic}.${identity}.${type}` : topic;
}

/** The subject a server subscribes to: the topic, or with subject hierarchies `<topic>.>`. */
export function subscriptionSubject(topic: string, subjectHierarchies: boolean): string {
  return subjectHierarchies ? `${topic}.>` : topic;
}
