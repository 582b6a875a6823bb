/**
 * The tracing plugin: OpenTracing spans around the three phases of the
 * plugin chain, for any OpenTracing `Tracer` — jaeger-client's, the global
 * tracer, or OpenTelemetry's through `@opentelemetry/shim-opentracing`.
 *
 * One event gives one trace across servers: the publish span injects its
 * context into the publication's `trackingData` (PROTOCOL.md section 8), and
 * every server that receives the publication opens its dispatch span as a
 * child of it. Register the plugin first, so that it wraps every other one.
 *
 * This module uses only pushwire's public API and imports nothing from
 * `opentracing` at run time (types only): the tracer the application passes
 * in is all it calls.
 */
import type { IncomingMessage } from 'node:http';
import type { Span, SpanContext, SpanOptions, Tracer } from 'opentracing';
import {
  PushError,
  type DispatchContext,
  type Plugin,
  type PublishContext,
  type SessionContext,
} from '../../lib/index.js';

/** The operation names of the spans this plugin starts. */
export const SPAN_NAMES = {
  /** One connection attempt, around the `session` phase. */
  session: 'pushwire.session',
  /** One published event, around the `publish` phase. */
  publish: 'pushwire.publish',
  /** One event received from the topic, around the `dispatch` phase and the fan-out. */
  dispatch: 'pushwire.dispatch',
} as const;

/**
 * The tag keys this plugin sets. The generic ones are OpenTracing's semantic
 * conventions, so that Jaeger and OpenTelemetry show them as they show any
 * other span's.
 */
export const TAGS = {
  component: 'component',
  spanKind: 'span.kind',
  error: 'error',
  httpMethod: 'http.method',
  httpUrl: 'http.url',
  httpStatusCode: 'http.status_code',
  peerAddress: 'peer.address',
  destination: 'message_bus.destination',
  /** Prefix of a recorded request header: `http.request.header.<lower-case name>`. */
  requestHeaderPrefix: 'http.request.header.',
  sessionId: 'pushwire.session.id',
  outcome: 'pushwire.session.outcome',
  errorCode: 'pushwire.error.code',
  identity: 'pushwire.event.identity',
  type: 'pushwire.event.type',
  trackingName: 'pushwire.tracking_name',
  considered: 'pushwire.sessions.considered',
  sent: 'pushwire.sessions.sent',
  filtered: 'pushwire.sessions.filtered',
  dropped: 'pushwire.sessions.dropped',
} as const;

/** What replaces a secret wherever the request is recorded. */
export const REDACTED = 'REDACTED';

/** Query parameters whose values are always redacted. */
const SECRET_PARAMETERS = ['token', 'password'] as const;
/** Request headers whose values are always redacted, even when listed in `requestHeaders`. */
const SECRET_HEADERS = new Set(['authorization', 'proxy-authorization', 'cookie']);
/**
 * Cookie values shorter than this are not scrubbed from error messages:
 * session identifiers are longer, and scrubbing `en` or `1` would mangle the
 * message without protecting anything.
 */
const MIN_SCRUBBED_COOKIE = 8;

// opentracing's constants, spelled out so that the plugin has no run-time
// dependency on the `opentracing` package (their values are part of the API).
const FORMAT_TEXT_MAP = 'text_map';
const COMPONENT = 'pushwire';

/** Where the current span is kept in a phase's `ctx.state`, for {@link tracingSpan}. */
const STATE_KEY = 'pushwire.tracing.span';

/** The phases to trace; each defaults to true. */
export interface TracingPhases {
  /** A span per connection attempt. */
  session?: boolean;
  /** A span per published event, and its context injected into `trackingData`. */
  publish?: boolean;
  /** A span per event received from the topic. */
  dispatch?: boolean;
}

/** Options of {@link tracingPlugin}. */
export interface TracingOptions {
  /** Any OpenTracing tracer: jaeger-client's, `opentracing.globalTracer()`, OpenTelemetry's `TracerShim`. */
  tracer: Tracer;
  /**
   * Which phases get spans; default all three. A phase turned off has no
   * hook at all, so it costs nothing: with `dispatch: false` the core keeps
   * its plugin-free fast path for events (but the dispatching servers then
   * show no span for the event).
   */
  phases?: TracingPhases;
  /**
   * Request headers to record on the session span, as
   * `http.request.header.<name>`. Default: none. `Authorization`,
   * `Proxy-Authorization` and `Cookie` are recorded redacted even when
   * listed (a cookie's names are kept, its values are not).
   */
  requestHeaders?: readonly string[];
  /**
   * More query parameters whose values are redacted in `http.url` and
   * scrubbed from error messages, besides `token` and `password` (which
   * always are). Matched without regard to case.
   */
  redactParameters?: readonly string[];
  /**
   * The caller's current span when `publishWith()` gets no `span`: for a
   * tracer with a scope manager of its own (dd-trace's
   * `() => tracer.scope().active()`). Not needed with OpenTelemetry's shim,
   * which starts spans in the active OpenTelemetry context already. Default:
   * none, so the publish span is a root unless the tracer decides otherwise.
   */
  activeSpan?: () => Span | SpanContext | null | undefined;
}

/**
 * The span this plugin opened for the phase `ctx` belongs to, so that a
 * plugin registered after it can start child spans (an auth plugin calling
 * an identity provider). Undefined when the phase is not traced.
 */
export function tracingSpan(ctx: { readonly state: Record<string, unknown> }): Span | undefined {
  return ctx.state[STATE_KEY] as Span | undefined;
}

/** Runs a call into the tracer: a tracer that fails must never break pushing. */
function guard(fn: () => void): void {
  try {
    fn();
  } catch {
    // Tracing is best effort: the session, publication or dispatch goes on untraced.
  }
}

function startSpan(tracer: Tracer, name: string, options: SpanOptions): Span | undefined {
  try {
    return tracer.startSpan(name, options);
  } catch {
    return undefined;
  }
}

/**
 * False when the span is known not to be recorded, so that its tags are
 * not even computed (a sampler that samples nothing then costs a span
 * object and nothing else). Known shapes: jaeger-client's span context
 * (`isSampled()`, once its sampling decision is final — before that, tags
 * can still change the decision), OpenTelemetry's shim (`getSpan().isRecording()`).
 * Any other tracer's spans are treated as recorded.
 */
function isRecording(span: Span): boolean {
  try {
    const ctx = span.context() as unknown as { isSampled?: unknown; samplingFinalized?: unknown };
    if (typeof ctx.isSampled === 'function') {
      return ctx.samplingFinalized === false || (ctx.isSampled as () => boolean).call(ctx) === true;
    }
    const getSpan = (span as unknown as { getSpan?: unknown }).getSpan;
    if (typeof getSpan === 'function') {
      const inner = (getSpan as () => { isRecording?: unknown } | undefined).call(span);
      if (inner !== undefined && typeof inner.isRecording === 'function') {
        return (inner.isRecording as () => boolean).call(inner) === true;
      }
    }
  } catch {
    // An unknown shape: record.
  }
  return true;
}

/** A `Span` or a `SpanContext` from `publishWith({ span })`; anything else is ignored. */
function asParent(value: unknown): Span | SpanContext | undefined {
  if (value === null || typeof value !== 'object') return undefined;
  // A span has context(); a span context (opentracing >= 0.14) has toTraceId().
  if (typeof (value as { context?: unknown }).context === 'function') return value as Span;
  if (typeof (value as { toTraceId?: unknown }).toTraceId === 'function') {
    return value as SpanContext;
  }
  return undefined;
}

/** The first value of a header, as a string. */
function headerValue(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

/** What the client asked for: Express rewrites `req.url` under a mount point, not `originalUrl`. */
function requestUrl(request: IncomingMessage): string {
  const original = (request as { originalUrl?: unknown }).originalUrl;
  return typeof original === 'string' ? original : (request.url ?? '/');
}

/** A Cookie header with every value replaced: the names say what the client sent, safely. */
function redactCookie(header: string): string {
  return header
    .split(';')
    .map((part) => {
      const eq = part.indexOf('=');
      return eq === -1 ? part.trim() : `${part.slice(0, eq).trim()}=${REDACTED}`;
    })
    .join('; ');
}

/** The redaction rules of one plugin instance. */
class Redactor {
  readonly #parameters: ReadonlySet<string>;
  readonly #headers: readonly string[];

  constructor(options: TracingOptions) {
    this.#parameters = new Set(
      [...SECRET_PARAMETERS, ...(options.redactParameters ?? [])].map((p) => p.toLowerCase()),
    );
    this.#headers = [...new Set((options.requestHeaders ?? []).map((h) => h.toLowerCase()))];
  }

  /** The request's path and query, with the values of secret parameters replaced. */
  url(request: IncomingMessage): string {
    const url = requestUrl(request);
    const q = url.indexOf('?');
    if (q === -1) return url;
    const query = new URLSearchParams(url.slice(q + 1));
    const redacted = new URLSearchParams();
    for (const [name, value] of query) {
      redacted.append(name, this.#parameters.has(name.toLowerCase()) ? REDACTED : value);
    }
    return `${url.slice(0, q)}?${redacted.toString()}`;
  }

  /** The listed headers as tags, secrets redacted. */
  headerTags(request: IncomingMessage, tags: Record<string, unknown>): void {
    for (const name of this.#headers) {
      const value = headerValue(request, name);
      if (value === undefined) continue;
      let recorded = value;
      if (name === 'cookie') recorded = redactCookie(value);
      else if (SECRET_HEADERS.has(name)) recorded = REDACTED;
      tags[TAGS.requestHeaderPrefix + name] = recorded;
    }
  }

  /**
   * An error message with the request's secrets taken out: a plugin that
   * writes `unknown token ${token}` must not leak it into the trace.
   */
  scrub(message: string, request: IncomingMessage | undefined): string {
    if (request === undefined || message === '') return message;
    const secrets: string[] = [];
    const url = requestUrl(request);
    const q = url.indexOf('?');
    if (q !== -1) {
      for (const [name, value] of new URLSearchParams(url.slice(q + 1))) {
        if (value !== '' && this.#parameters.has(name.toLowerCase())) secrets.push(value);
      }
    }
    for (const name of ['authorization', 'proxy-authorization']) {
      const value = headerValue(request, name);
      if (value === undefined || value === '') continue;
      secrets.push(value);
      // `Bearer abc`: the credentials alone may appear in a message too.
      const space = value.indexOf(' ');
      if (space !== -1 && space < value.length - 1) secrets.push(value.slice(space + 1).trim());
    }
    const cookie = headerValue(request, 'cookie');
    if (cookie !== undefined) {
      for (const part of cookie.split(';')) {
        const value = part.slice(part.indexOf('=') + 1).trim();
        if (part.includes('=') && value.length >= MIN_SCRUBBED_COOKIE) secrets.push(value);
      }
    }
    // Longest first, so that a secret containing another is replaced whole.
    secrets.sort((a, b) => b.length - a.length);
    let scrubbed = message;
    for (const secret of secrets) scrubbed = scrubbed.split(secret).join(REDACTED);
    return scrubbed;
  }
}

/** Marks a span failed, OpenTracing's way: the `error` tag and an `error` log. */
function recordError(
  span: Span,
  error: unknown,
  redactor: Redactor,
  request: IncomingMessage | undefined,
): void {
  const message = error instanceof Error ? error.message : String(error);
  const tags: Record<string, unknown> = { [TAGS.error]: true };
  if (error instanceof PushError) tags[TAGS.errorCode] = error.code;
  span.addTags(tags);
  // No stack: it repeats the message unscrubbed and says nothing an operator needs here.
  span.log({
    event: 'error',
    'error.kind': error instanceof Error ? error.name : typeof error,
    message: redactor.scrub(message, request),
  });
}

/**
 * The tracing plugin. Spans (names in {@link SPAN_NAMES}, tags in {@link TAGS}):
 *
 * - `pushwire.session`, one per connection attempt, around the session
 *   phase: session id, client IP, the redacted URL, outcome, the HTTP status
 *   of a refusal, `error` when a plugin threw (the throw goes on, so the
 *   refusal happens as without the plugin);
 * - `pushwire.publish`, one per published event, child of the caller's
 *   span (`publishWith({ span }, …)`), else of `activeSpan()`, else of what
 *   the tracer considers active; its context is injected into the
 *   publication's `trackingData` (TextMap) — even when not sampled, so that
 *   the other servers inherit the decision instead of sampling on their own;
 * - `pushwire.dispatch`, one per event received from the topic, a child
 *   (`childOf`) of the span extracted from `trackingData` — a root when
 *   there is none — with the event's identity and type and, once the fan-out
 *   ends, the number of sessions considered, sent, filtered and dropped.
 *
 * No span per session. A tracer that throws never breaks a session, a
 * publication or a dispatch: the phase runs untraced. Throws TypeError when
 * `tracer` is not an OpenTracing tracer.
 */
export function tracingPlugin(options: TracingOptions): Plugin {
  const tracer = options?.tracer;
  if (
    tracer === null ||
    typeof tracer !== 'object' ||
    typeof tracer.startSpan !== 'function' ||
    typeof tracer.inject !== 'function' ||
    typeof tracer.extract !== 'function'
  ) {
    throw new TypeError('tracingPlugin: options.tracer must be an OpenTracing Tracer');
  }
  const phases = options.phases ?? {};
  const redactor = new Redactor(options);
  const activeSpan = options.activeSpan;
  const plugin: Plugin = { name: 'tracing' };

  if (phases.session !== false) {
    plugin.session = async (ctx: SessionContext, next) => {
      const span = startSpan(tracer, SPAN_NAMES.session, {
        tags: { [TAGS.component]: COMPONENT, [TAGS.spanKind]: 'server' },
      });
      if (span === undefined) return next();
      const recording = isRecording(span);
      ctx.state[STATE_KEY] = span;
      if (recording) {
        guard(() => {
          const tags: Record<string, unknown> = {
            [TAGS.sessionId]: ctx.session.id,
            [TAGS.peerAddress]: ctx.session.clientIP,
            [TAGS.httpMethod]: ctx.request.method ?? 'GET',
            [TAGS.httpUrl]: redactor.url(ctx.request),
          };
          redactor.headerTags(ctx.request, tags);
          span.addTags(tags);
        });
      }
      try {
        await next();
        if (recording) {
          guard(() => {
            // A plugin that returned without next() refuses quietly, with the phase's default, 403.
            if (ctx.accepted) span.setTag(TAGS.outcome, 'accepted');
            else span.addTags({ [TAGS.outcome]: 'refused', [TAGS.httpStatusCode]: 403 });
          });
        }
      } catch (error) {
        if (recording) {
          guard(() => {
            // The server's rule: a PushError's status, else the session phase's default, 403.
            const status = error instanceof PushError ? error.status : 403;
            span.addTags({ [TAGS.outcome]: 'refused', [TAGS.httpStatusCode]: status });
            recordError(span, error, redactor, ctx.request);
          });
        }
        throw error;
      } finally {
        guard(() => span.finish());
      }
    };
  }

  if (phases.publish !== false) {
    plugin.publish = async (ctx: PublishContext, next) => {
      // Read before anything awaits: an active context held in async-local storage or on a
      // stack is the caller's only until the first await.
      let parent = asParent(ctx.options.span);
      if (parent === undefined && activeSpan !== undefined) {
        try {
          parent = asParent(activeSpan());
        } catch {
          parent = undefined;
        }
      }
      const span = startSpan(tracer, SPAN_NAMES.publish, {
        ...(parent === undefined ? {} : { childOf: parent }),
        tags: { [TAGS.component]: COMPONENT, [TAGS.spanKind]: 'producer' },
      });
      if (span === undefined) return next();
      ctx.state[STATE_KEY] = span;
      guard(() => {
        // A copy: an earlier plugin's carrier is kept, and a tracer that fails halfway leaves it intact.
        const carrier: Record<string, string> = { ...ctx.publication.trackingData };
        tracer.inject(span.context(), FORMAT_TEXT_MAP, carrier);
        ctx.publication.trackingData = carrier;
      });
      const recording = isRecording(span);
      if (recording) {
        guard(() => {
          const tags: Record<string, unknown> = {
            [TAGS.destination]: ctx.subject,
            [TAGS.identity]: ctx.event.identity,
            [TAGS.type]: ctx.event.type,
          };
          const trackingName = ctx.publication.trackingName ?? ctx.options.trackingName;
          if (trackingName !== undefined) tags[TAGS.trackingName] = trackingName;
          span.addTags(tags);
        });
      }
      try {
        await next();
      } catch (error) {
        if (recording) guard(() => recordError(span, error, redactor, undefined));
        throw error;
      } finally {
        guard(() => span.finish());
      }
    };
  }

  if (phases.dispatch !== false) {
    plugin.dispatch = async (ctx: DispatchContext, next) => {
      let parent: SpanContext | null = null;
      const carrier = ctx.publication.trackingData;
      if (carrier !== undefined) {
        try {
          parent = tracer.extract(FORMAT_TEXT_MAP, carrier);
        } catch {
          // A carrier this tracer cannot read (another server's tracer): start a new trace.
          parent = null;
        }
      }
      // childOf rather than followsFrom: OpenTelemetry's shim makes only childOf a parent (a
      // followsFrom reference becomes a link and the dispatch would start a trace of its own).
      const span = startSpan(tracer, SPAN_NAMES.dispatch, {
        ...(parent === null ? {} : { childOf: parent }),
        tags: { [TAGS.component]: COMPONENT, [TAGS.spanKind]: 'consumer' },
      });
      if (span === undefined) return next();
      ctx.state[STATE_KEY] = span;
      const recording = isRecording(span);
      if (recording) {
        guard(() => {
          const tags: Record<string, unknown> = {
            [TAGS.destination]: ctx.publication.topic,
            [TAGS.identity]: ctx.event.identity,
            [TAGS.type]: ctx.event.type,
          };
          if (ctx.publication.trackingName !== undefined) {
            tags[TAGS.trackingName] = ctx.publication.trackingName;
          }
          span.addTags(tags);
        });
      }
      try {
        await next();
      } catch (error) {
        if (recording) guard(() => recordError(span, error, redactor, undefined));
        throw error;
      } finally {
        if (recording) {
          guard(() => {
            const { stats } = ctx;
            span.addTags({
              [TAGS.considered]: stats.considered,
              [TAGS.sent]: stats.sent,
              [TAGS.filtered]: stats.filtered,
              [TAGS.dropped]: stats.dropped,
            });
          });
        }
        guard(() => span.finish());
      }
    };
  }

  return plugin;
}
