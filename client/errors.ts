/**
 * The client's errors: one class per failure, each with a stable `code`,
 * as the server's PushError family has.
 */

import type { ErrorObject } from '../lib/errors.js';

/**
 * An error object as the server writes it (elemental's `Error`): refusal bodies and error
 * events. The server's own type, imported as a type only: the bundle gets none of its code.
 */
export type { ErrorObject };

/** The base of the client's errors. */
export class PushClientError extends Error {
  /** A stable, machine-readable name of the failure (`PUSH_*`). */
  readonly code: string;
  // The name is passed as a string: a minifier renames classes, so `new.target.name` would not survive.
  constructor(message: string, code: string, name = 'PushClientError') {
    super(message);
    this.name = name;
    this.code = code;
  }
}

function isErrorObject(value: unknown): value is ErrorObject {
  return (
    value !== null &&
    typeof value === 'object' &&
    typeof (value as ErrorObject).code === 'number' &&
    typeof (value as ErrorObject).title === 'string'
  );
}

/** The error objects of a refusal body: the protocol's array of one, or none when it is not that. */
export function errorObjectsOf(body: unknown): ErrorObject[] {
  if (Array.isArray(body)) return body.filter(isErrorObject);
  return isErrorObject(body) ? [body] : [];
}

/**
 * The server refused the handshake with an HTTP status (PROTOCOL.md section
 * 2): 401 when authentication said no, 403 when authorization did, 400 for
 * an unsupported encoding, 503 while the server shuts down. After a 401 or
 * 403 the client stops reconnecting; after any other status it retries.
 */
export class PushRefusedError extends PushClientError {
  /** The HTTP status of the refusal. */
  readonly status: number;
  /** The response body: parsed JSON when it is JSON, else the text. */
  readonly body: unknown;
  /** The error objects of the body (normally one). */
  readonly errors: ErrorObject[];
  constructor(status: number, body: unknown) {
    const errors = errorObjectsOf(body);
    const first = errors[0];
    const detail = first
      ? ` ${first.title}${first.description ? `: ${first.description}` : ''}`
      : '';
    super(`the server refused the session: ${status}${detail}`, 'PUSH_REFUSED', 'PushRefusedError');
    this.status = status;
    this.body = body;
    this.errors = errors;
  }
}

/**
 * The server rejected the push config: an error event (with `enableErrors`;
 * the session receives nothing more until a valid config is sent) or a close
 * with 1003 (without it). `error` is the server's error object when there is one.
 */
export class PushConfigError extends PushClientError {
  /** The error object the server sent, with `data` saying where the config is wrong. */
  readonly error: ErrorObject | undefined;
  constructor(message: string, error?: ErrorObject) {
    super(message, 'PUSH_INVALID_CONFIG', 'PushConfigError');
    this.error = error;
  }
}

/** A message from the server that is not an event of the protocol; it is skipped. */
export class PushDecodeError extends PushClientError {
  constructor(message: string) {
    super(message, 'PUSH_UNDECODABLE', 'PushDecodeError');
  }
}
