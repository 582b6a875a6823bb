// jaeger-client ships no types. This declares the part of its API that the
// Jaeger example and the tracing tests use; everything else goes through
// opentracing's Tracer, which is what the tracing plugin takes anyway.
declare module 'jaeger-client' {
  import type { Tracer } from 'opentracing';

  /** jaeger-client's tracer: an OpenTracing tracer that can flush and close its reporter. */
  export interface JaegerTracer extends Tracer {
    /** Flushes the spans still buffered, closes the reporter, then calls back. */
    close(callback?: () => void): void;
  }

  /** A reporter; `InMemoryReporter` keeps the finished spans in `spans`. */
  export interface Reporter {
    report(span: unknown): void;
    close(callback?: () => void): void;
  }

  /** The configuration object of `initTracer` (the JSON schema in jaeger-client's README). */
  export interface TracingConfig {
    serviceName?: string;
    disable?: boolean;
    sampler?: {
      /** `const`, `probabilistic`, `ratelimiting`, `remote`. */
      type: string;
      param: number;
      hostPort?: string;
      host?: string;
      port?: number;
      refreshIntervalMs?: number;
    };
    reporter?: {
      logSpans?: boolean;
      agentHost?: string;
      agentPort?: number;
      flushIntervalMs?: number;
      collectorEndpoint?: string;
    };
  }

  /** The options object of `initTracer`. */
  export interface TracingOptions {
    reporter?: Reporter;
    logger?: { info(message: string): void; error(message: string): void };
    tags?: Record<string, unknown>;
  }

  interface JaegerClient {
    /** A tracer from a configuration object. */
    initTracer(config: TracingConfig, options?: TracingOptions): JaegerTracer;
    /** A tracer from the JAEGER_* environment variables; what `config` sets wins over them. */
    initTracerFromEnv(config?: TracingConfig, options?: TracingOptions): JaegerTracer;
    /** Keeps finished spans in memory (tests). */
    InMemoryReporter: new () => Reporter & { spans: unknown[]; clear(): void };
  }

  const jaeger: JaegerClient;
  export default jaeger;
}
