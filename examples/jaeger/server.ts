/**
 * The Jaeger example: the basic example's server (Express 5, express-ws,
 * pushwire on the in-memory backend, a publish endpoint) with the tracing
 * plugin, its tracer built by jaeger-client from the standard JAEGER_*
 * environment variables.
 *
 *   docker run --rm -p 6832:6832/udp -p 16686:16686 jaegertracing/all-in-one:1.57
 *   npm run example:jaeger
 *   # a session:   websocat 'ws://localhost:3000/api/events?token=demo'
 *   # a refusal:   websocat 'ws://localhost:3000/api/events?token=bad'
 *   curl -X POST localhost:3000/api/publish -H 'Content-Type: application/json' \
 *     -d '{"identity":"task","type":"create","entity":{"ID":"1","name":"hello"}}'
 *   # then http://localhost:16686, service pushwire-example
 *
 * Environment: PORT (default 3000), and jaeger-client's own variables —
 * JAEGER_SERVICE_NAME (default pushwire-example), JAEGER_AGENT_HOST and
 * JAEGER_AGENT_PORT (default localhost:6832, UDP) or JAEGER_ENDPOINT (HTTP
 * to a collector), JAEGER_SAMPLER_TYPE and JAEGER_SAMPLER_PARAM (default
 * here: const 1, every trace), JAEGER_TAGS, JAEGER_DISABLED.
 */
import express from 'express';
import expressWs from 'express-ws';
import jaeger from 'jaeger-client';
import { FORMAT_HTTP_HEADERS } from 'opentracing';
import {
  authPlugin,
  LocalPubSub,
  pushMiddleware,
  UnauthorizedError,
  type Plugin,
} from '../../lib/index.js';
import { consoleLogger } from '../shared/demo.js';
import { tracingPlugin } from '../../plugins/tracing/index.js';

const logger = consoleLogger();

// jaeger-client reads every JAEGER_* variable itself; what is passed here wins over them,
// so only the defaults of this example are set, and only where the variable is absent.
const tracer = jaeger.initTracerFromEnv(
  {
    serviceName: process.env.JAEGER_SERVICE_NAME ?? 'pushwire-example',
    // jaeger-client's own default asks a sampling server; a demo wants every trace.
    ...(process.env.JAEGER_SAMPLER_TYPE ? {} : { sampler: { type: 'const', param: 1 } }),
  },
  {
    logger: {
      info: (message) => logger.info({}, `jaeger: ${message}`),
      error: (message) => logger.error({}, `jaeger: ${message}`),
    },
  },
);
const tracingOff = process.env.JAEGER_DISABLED === 'true';

const plugins: Plugin[] = [
  // First, so that its spans wrap the other plugins. Not registered at all when tracing is
  // off: a plugin that is not there costs nothing.
  ...(tracingOff ? [] : [tracingPlugin({ tracer, requestHeaders: ['user-agent', 'origin'] })]),
  // Stands for a real token check; `bad` shows what a refusal looks like in a trace.
  authPlugin((session) => {
    if (session.token === 'bad') throw new UnauthorizedError('The token "bad" is refused');
    return 'ok';
  }),
];

const app = express();
const ews = expressWs(app);
const push = pushMiddleware(new LocalPubSub(), 'events', { logger, plugins });
app.use('/api', push); // ws://host/api/events
push.attach(ews);

// The application's own endpoint. Its span is the publish span's parent: one trace goes from
// this request to every server that dispatches the event.
app.post('/api/publish', express.json({ limit: '64kb' }), (req, res) => {
  // A caller that traces its requests sends its span context in the headers: join its trace.
  const caller = tracer.extract(FORMAT_HTTP_HEADERS, req.headers);
  const span = tracer.startSpan('POST /api/publish', {
    ...(caller ? { childOf: caller } : {}),
    tags: { 'span.kind': 'server', 'http.method': 'POST', 'http.url': req.originalUrl },
  });
  const { identity, type, entity } = (req.body ?? {}) as Record<string, unknown>;
  push
    .publishWith(
      { span },
      { identity: String(identity ?? ''), type: String(type ?? ''), entity: entity ?? {} },
    )
    .then(
      () => {
        span.setTag('http.status_code', 202);
        res.status(202).json({ published: true });
      },
      (error: Error & { status?: number }) => {
        const status = error.status ?? 500;
        span.addTags({ 'http.status_code': status, error: true });
        res.status(status).json({ error: error.message });
      },
    )
    .finally(() => span.finish());
});

app.get('/api/stats', (_req, res) => {
  res.json(push.stats());
});

await push.ready;
const port = Number(process.env.PORT ?? 3000);
const server = app.listen(port, () => {
  logger.info(
    { port, tracing: !tracingOff },
    `pushwire Jaeger example on http://localhost:${port}`,
  );
});

async function shutdown(signal: string): Promise<void> {
  logger.info({ signal }, 'shutting down');
  await push.close(); // sessions get 1001 after their buffers flush
  // Spans wait in the reporter's buffer for its next flush: send them before exiting.
  await new Promise<void>((resolve) => tracer.close(resolve));
  server.close(() => process.exit(0));
}
process.once('SIGTERM', () => void shutdown('SIGTERM'));
process.once('SIGINT', () => void shutdown('SIGINT'));
