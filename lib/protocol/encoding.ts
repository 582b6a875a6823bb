/**
 * The two encodings of the protocol, named by media type (PROTOCOL.md
 * section 1), and how a request chooses them.
 */

/** JSON: text frames. The default in both directions. */
export const JSON_MEDIA_TYPE = 'application/json';
/** MessagePack: binary frames. */
export const MSGPACK_MEDIA_TYPE = 'application/msgpack';

/** An encoding of the protocol, by media type. */
export type Encoding = typeof JSON_MEDIA_TYPE | typeof MSGPACK_MEDIA_TYPE;

/** The encodings a session reads its client's messages in and writes its events in. */
export interface SessionEncodings {
  read: Encoding;
  write: Encoding;
}

/** A header or parameter that names an encoding this protocol does not speak. */
export class UnsupportedEncodingError extends Error {
  /** Where the unsupported value came from: `Content-Type`, `Accept` or `encoding`. */
  readonly source: string;
  constructor(source: string, value: string) {
    super(`unsupported ${source}: ${JSON.stringify(value.slice(0, 100))}`);
    this.name = 'UnsupportedEncodingError';
    this.source = source;
  }
}

function mediaType(value: string): string {
  const semi = value.indexOf(';');
  return (semi === -1 ? value : value.slice(0, semi)).trim().toLowerCase();
}

/**
 * Reads one media type (a `Content-Type`). Absent, empty, `*\/*` and
 * `application/*` mean JSON; anything else but the two encodings throws
 * {@link UnsupportedEncodingError}.
 */
export function encodingFromContentType(value: string | undefined): Encoding {
  if (value === undefined) return JSON_MEDIA_TYPE;
  const type = mediaType(value);
  switch (type) {
    case '':
    case '*/*':
    case 'application/*':
    case JSON_MEDIA_TYPE:
      return JSON_MEDIA_TYPE;
    case MSGPACK_MEDIA_TYPE:
      return MSGPACK_MEDIA_TYPE;
    default:
      throw new UnsupportedEncodingError('Content-Type', value);
  }
}

/**
 * Reads an `Accept` header: the first listed type that names an encoding
 * wins (a list such as `application/msgpack, *\/*` is MessagePack). Throws
 * {@link UnsupportedEncodingError} when no listed type is acceptable.
 */
export function encodingFromAccept(value: string | undefined): Encoding {
  if (value === undefined || value.trim() === '') return JSON_MEDIA_TYPE;
  for (const part of value.split(',')) {
    const type = mediaType(part);
    if (type === MSGPACK_MEDIA_TYPE) return MSGPACK_MEDIA_TYPE;
    if (type === JSON_MEDIA_TYPE || type === '*/*' || type === 'application/*') {
      return JSON_MEDIA_TYPE;
    }
  }
  throw new UnsupportedEncodingError('Accept', value);
}

/**
 * Reads the `encoding` query parameter (extension): `json` or `msgpack`, or
 * the full media types. Throws {@link UnsupportedEncodingError} otherwise.
 */
export function encodingFromParameter(value: string): Encoding {
  switch (value.trim().toLowerCase()) {
    case 'json':
    case JSON_MEDIA_TYPE:
      return JSON_MEDIA_TYPE;
    case 'msgpack':
    case MSGPACK_MEDIA_TYPE:
      return MSGPACK_MEDIA_TYPE;
    default:
      throw new UnsupportedEncodingError('encoding', value);
  }
}

/**
 * The four possible pairs, shared by every session (frozen, since they are): a pair per session
 * was an object kept for the session's whole life.
 */
const PAIRS: Readonly<Record<Encoding, Readonly<Record<Encoding, SessionEncodings>>>> = {
  [JSON_MEDIA_TYPE]: {
    [JSON_MEDIA_TYPE]: Object.freeze({ read: JSON_MEDIA_TYPE, write: JSON_MEDIA_TYPE }),
    [MSGPACK_MEDIA_TYPE]: Object.freeze({ read: JSON_MEDIA_TYPE, write: MSGPACK_MEDIA_TYPE }),
  },
  [MSGPACK_MEDIA_TYPE]: {
    [JSON_MEDIA_TYPE]: Object.freeze({ read: MSGPACK_MEDIA_TYPE, write: JSON_MEDIA_TYPE }),
    [MSGPACK_MEDIA_TYPE]: Object.freeze({ read: MSGPACK_MEDIA_TYPE, write: MSGPACK_MEDIA_TYPE }),
  },
};

/**
 * Chooses a session's encodings from its request: the `encoding` parameter
 * when present (it sets both directions and wins), else `Content-Type` for
 * reading and `Accept` for writing. Throws {@link UnsupportedEncodingError}.
 * The result is frozen and shared between sessions.
 */
export function negotiateEncodings(
  contentType: string | undefined,
  accept: string | undefined,
  encodingParameter: string | undefined,
): Readonly<SessionEncodings> {
  if (encodingParameter !== undefined) {
    const both = encodingFromParameter(encodingParameter);
    return PAIRS[both][both];
  }
  return PAIRS[encodingFromContentType(contentType)][encodingFromAccept(accept)];
}
