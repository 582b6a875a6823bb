/**
 * The PushError family: one class per failure, each with a stable `code`,
 * the HTTP `status` used when it refuses a session before the handshake and
 * the WebSocket `closeCode` used when it ends an open session.
 */

/** The `subject` of every error object this server writes (elemental's `Error.subject`). */
export const ERROR_SUBJECT = 'pushwire';

/** An error object as elemental writes it: the body of refusals and the entity of error events. */
export interface ErrorObject {
  code: number;
  title: string;
  description: string;
  subject: string;
  data?: unknown;
}

/** Options common to every PushError. */
export interface PushErrorOptions {
  /** Extra data for the error object's `data` field; never a secret, never a stack. */
  data?: unknown;
  /** The underlying error, kept for logs (never sent to a client). */
  cause?: unknown;
}

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  415: 'Unsupported Media Type',
  426: 'Upgrade Required',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/** The HTTP reason phrase for a status this library uses (`Error` for any other). */
export function statusTitle(status: number): string {
  return TITLES[status] ?? 'Error';
}

/**
 * The base of every error pushwire raises. Throw one (or a subclass) from a
 * plugin to refuse a session with `status`, or to end an open one with
 * `closeCode`.
 */
export class PushError extends Error {
  /** A stable, machine-readable name of the failure (`PUSH_*`). */
  readonly code: string;
  /** The HTTP status of a refusal before the handshake. */
  readonly status: number;
  /** The WebSocket close code when the error ends an open session. */
  readonly closeCode: number;
  /** Extra data for the error object; never a secret. */
  readonly data: unknown;

  constructor(
    message: string,
    code = 'PUSH_ERROR',
    status = 500,
    closeCode = 1011,
    options: PushErrorOptions = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.closeCode = closeCode;
    this.data = options.data;
  }

  /** The elemental error object for this error, as sent in refusal bodies and error events. */
  toErrorObject(): ErrorObject {
    const obj: ErrorObject = {
      code: this.status,
      title: statusTitle(this.status),
      description: this.message,
      subject: ERROR_SUBJECT,
    };
    if (this.data !== undefined) obj.data = this.data;
    return obj;
  }
}

/** 400: a request or a push config the protocol does not accept. */
export class BadRequestError extends PushError {
  constructor(message = 'Bad request', options?: PushErrorOptions) {
    super(message, 'PUSH_BAD_REQUEST', 400, 1003, options);
  }
}

/**
 * 415: an unsupported `Content-Type`, `Accept` or `encoding`, as bahamut answers an
 * unsupported media type (elemental's EncodingFromHeaders).
 */
export class UnsupportedMediaTypeError extends PushError {
  constructor(message = 'Unsupported media type', options?: PushErrorOptions) {
    super(message, 'PUSH_UNSUPPORTED_MEDIA_TYPE', 415, 1003, options);
  }
}

/** 401: authentication refused the session (a KO, or a throwing auth plugin). */
export class UnauthorizedError extends PushError {
  constructor(message = 'You are not authorized to start a session', options?: PushErrorOptions) {
    super(message, 'PUSH_UNAUTHORIZED', 401, 1008, options);
  }
}

/** 403: authorization refused the session (an init plugin, an origin not allowed). */
export class ForbiddenError extends PushError {
  constructor(message = 'You are not allowed to start a session', options?: PushErrorOptions) {
    super(message, 'PUSH_FORBIDDEN', 403, 1008, options);
  }
}

/** 429: too many connection attempts or sessions. */
export class TooManyRequestsError extends PushError {
  constructor(message = 'Too many requests', options?: PushErrorOptions) {
    super(message, 'PUSH_TOO_MANY_REQUESTS', 429, 1008, options);
  }
}

/** 503: the server is shutting down, or could not decide in time. */
export class ServiceUnavailableError extends PushError {
  constructor(message = 'The push server is not accepting sessions', options?: PushErrorOptions) {
    super(message, 'PUSH_UNAVAILABLE', 503, 1001, options);
  }
}

/** An invalid push config (PROTOCOL.md section 4): an error event, or close 1003. */
export class InvalidPushConfigError extends PushError {
  constructor(message: string, options?: PushErrorOptions) {
    super(message, 'PUSH_INVALID_CONFIG', 400, 1003, options);
  }
}

/** A session closed by policy (1008): a slow consumer, or a plugin's decision. */
export class PolicyViolationError extends PushError {
  constructor(message: string, options?: PushErrorOptions) {
    super(message, 'PUSH_POLICY', 403, 1008, options);
  }
}

/** The pub/sub backend failed: not connected, unreachable, or a publish that failed every retry. */
export class PubSubError extends PushError {
  constructor(message: string, code = 'PUSH_PUBSUB', options?: PushErrorOptions) {
    super(message, code, 503, 1011, options);
  }
}

/** `publish()` was called before the backend connected (or after it disconnected). */
export class NotConnectedError extends PubSubError {
  constructor(message = 'The pub/sub client is not connected', options?: PushErrorOptions) {
    super(message, 'PUSH_NOT_CONNECTED', options);
  }
}

/** An event given to `publish()` or `directPush()` that is not `{ identity, type, entity }`. */
export class InvalidEventError extends PushError {
  constructor(message: string, options?: PushErrorOptions) {
    super(message, 'PUSH_INVALID_EVENT', 400, 1011, options);
  }
}

/** `next()` called twice by one middleware of the plugin chain. */
export class ChainError extends PushError {
  constructor(message = 'next() called multiple times') {
    super(message, 'PUSH_CHAIN', 500, 1011);
  }
}
