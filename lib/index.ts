/**
 * pushwire: WebSocket push notifications as Express middleware,
 * wire-compatible with bahamut's push server. This file is the public
 * allow-list of exports.
 */
export { pushMiddleware } from './middleware.js';
export type { PushMiddleware, ExpressWsInstance } from './middleware.js';
export type { PushOptions, SlowConsumerPolicy } from './options.js';
export type { PushStats, DispatchInfo } from './server.js';
export type { PushSession } from './session.js';
export type { TransportName } from './transport/contract.js';
export type { Logger } from './logger.js';

export { compose } from './chain.js';
export type {
  Middleware,
  Next,
  Plugin,
  SessionContext,
  SessionState,
  DispatchContext,
  DispatchPredicate,
  DispatchStats,
  PublishContext,
  PublishOptions,
  SessionStopInfo,
} from './chain.js';
export { authPlugin, initPlugin, dispatchPlugin, publishPlugin, definePlugin } from './plugins.js';
export type { AuthAction, DispatchHandlers } from './plugins.js';

export {
  PushError,
  BadRequestError,
  UnsupportedMediaTypeError,
  UnauthorizedError,
  ForbiddenError,
  TooManyRequestsError,
  ServiceUnavailableError,
  InvalidPushConfigError,
  PolicyViolationError,
  PubSubError,
  NotConnectedError,
  InvalidEventError,
  ChainError,
  ERROR_SUBJECT,
} from './errors.js';
export type { ErrorObject, PushErrorOptions } from './errors.js';

export { LocalPubSub } from './pubsub/local.js';
export type { LocalHistory, LocalPubSubOptions } from './pubsub/local.js';
export { subjectMatches } from './pubsub/contract.js';
export type {
  PubSubClient,
  PubSubHandler,
  PubSubStatus,
  PublishAttempt,
  Unsubscribe,
} from './pubsub/contract.js';
export type {
  HistoryEntry,
  HistoryHandler,
  HistoryOptions,
  HistoryPubSubClient,
  HistoryRead,
  ResolvedHistoryOptions,
  TopicHistory,
} from './pubsub/contract.js';

export { JSON_MEDIA_TYPE, MSGPACK_MEDIA_TYPE } from './protocol/encoding.js';
export type { Encoding, SessionEncodings } from './protocol/encoding.js';
export { WireEvent } from './protocol/event.js';
export type { PushEvent } from './protocol/event.js';
export type { PublicationHeaders } from './protocol/publication.js';
export { PushConfig } from './protocol/push-config.js';
export type { PushConfigInput } from './protocol/push-config.js';
export { compileFilter, FilterSyntaxError } from './protocol/filter.js';
export type { CompiledFilter } from './protocol/filter.js';
