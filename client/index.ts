/**
 * pushwire/client: a small client for pushwire (and bahamut) push servers,
 * for browsers and Node. This entry uses the platform's WebSocket
 * (`globalThis.WebSocket`), or `fetch` for Server-Sent Events (`transport:
 * 'sse'`); in Node < 22, import `pushwire/client/node`, which has the same
 * API with the `ws` package injected.
 *
 * ```ts
 * const client = createPushClient('/api/events', { token, encoding: 'msgpack' });
 * client.setConfig({ identities: { task: [] } });
 * client.on('event', (event) => render(event));
 * ```
 */
import { createClient, type PushClient, type PushClientOptions } from './client.js';

/**
 * Creates a client and starts connecting (see {@link PushClientOptions}).
 * Throws TypeError for an invalid URL, encoding or transport, MessagePack
 * over SSE, or when there is no WebSocket class (pass `options.WebSocket`)
 * and the transport is not `sse`.
 */
export function createPushClient(url: string | URL, options: PushClientOptions = {}): PushClient {
  return createClient(url, options);
}

export type {
  CloseInfo,
  OpenInfo,
  PushClient,
  PushClientEventMap,
  PushClientListener,
  PushClientOptions,
  PushClientState,
  PushTransport,
  ReconnectInfo,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export { backoffDelay, DEFAULT_MAX_DELAY, DEFAULT_MIN_DELAY } from './backoff.js';
export type { BackoffOptions, Scheduler } from './backoff.js';
export { PushClientError, PushConfigError, PushDecodeError, PushRefusedError } from './errors.js';
export type { ErrorObject } from './errors.js';
export type { PushConfig, PushEncoding, ReceivedEvent, RecoveryInfo } from './protocol.js';
