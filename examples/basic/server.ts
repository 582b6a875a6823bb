/**
 * The basic example: an Express app with pushwire on the in-memory
 * backend, a page that shows events live through pushwire/client, and a
 * form that publishes them.
 *
 *   npm start                    # then open http://localhost:3000
 *   PORT=8080 npm start
 *   DEMO_INTERVAL=0 npm start    # no heartbeat of demo events (the browser tests use this)
 *
 * The token `bad` is refused (open http://localhost:3000/?token=bad): the
 * auth plugin below stands for a real token check. `?transport=sse` shows
 * the same page over Server-Sent Events (`?transport=auto`: a WebSocket,
 * SSE when it cannot open).
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import express from 'express';
import expressWs from 'express-ws';
import { collectDefaultMetrics, Registry } from 'prom-client';
import {
  authPlugin,
  LocalPubSub,
  PushError,
  pushMiddleware,
  UnauthorizedError,
  type AuthAction,
} from '../../lib/index.js';
import { consoleLogger, demoEvent } from '../shared/demo.js';
import { registerMetrics } from '../../plugins/metrics/index.js';

const logger = consoleLogger();

/**
 * The example's token check: every token but `bad` is accepted. A real
 * application verifies a signature or asks its identity provider. Throwing
 * a PushError refuses the session with its status and message.
 */
function authenticate(token: string): AuthAction {
  if (token === 'bad') throw new UnauthorizedError('The token "bad" is refused by this example');
  return 'ok';
}

/**
 * The browser client's bundle (client/index.ts), built in memory with
 * esbuild at start so that a fresh checkout needs no build step and the page
 * always runs the current client. Without esbuild (an install without dev
 * dependencies) the file from `npm run build:client` is served instead.
 */
async function loadClientBundle(): Promise<{ code: Uint8Array; map: Uint8Array | undefined }> {
  try {
    const { bundleClient } = await import('../../scripts/build-client.js');
    return await bundleClient();
  } catch (error) {
    const built = new URL('../../dist/client/pushwire-client.min.js', import.meta.url);
    const code = await readFile(built).catch(() => {
      throw new Error(
        `cannot build the client bundle (${String(error)}); run npm run build:client`,
      );
    });
    logger.warn({ err: String(error) }, 'serving the prebuilt client bundle');
    return { code, map: await readFile(new URL(`${built.href}.map`)).catch(() => undefined) };
  }
}

const app = express();
const ews = expressWs(app);
const push = pushMiddleware(new LocalPubSub(), 'events', {
  logger,
  plugins: [authPlugin((session) => authenticate(session.token))],
});

const bundle = await loadClientBundle();
app.get('/pushwire-client.min.js', (_req, res) => {
  res.type('text/javascript').set('Cache-Control', 'no-cache').send(Buffer.from(bundle.code));
});
app.get('/pushwire-client.min.js.map', (_req, res) => {
  if (bundle.map === undefined) res.sendStatus(404);
  else res.type('application/json').send(Buffer.from(bundle.map));
});
app.use(express.static(fileURLToPath(new URL('./public', import.meta.url))));

// A browser cannot read the status of a refused WebSocket handshake, so after a failed
// attempt the page's client asks here (its `checkUrl` option) with the same query; this
// answers what the handshake answered: 204, or the refusal's status and error body.
app.get('/api/events/check', (req, res) => {
  try {
    authenticate(typeof req.query.token === 'string' ? req.query.token : '');
    res.sendStatus(204);
  } catch (error) {
    const refusal = error instanceof PushError ? error : new UnauthorizedError(String(error));
    res.status(refusal.status).json([refusal.toErrorObject()]);
  }
});

app.use('/api', push); // ws://host/api/events
push.attach(ews);

// Publishing is the application's business; this endpoint lets the page do it.
app.post('/api/publish', express.json({ limit: '64kb' }), (req, res) => {
  const { identity, type, entity } = (req.body ?? {}) as Record<string, unknown>;
  push
    .publish({ identity: String(identity ?? ''), type: String(type ?? ''), entity: entity ?? {} })
    .then(
      () => res.status(202).json({ published: true }),
      (error: Error & { status?: number }) =>
        res.status(error.status ?? 500).json({ error: error.message }),
    );
});

app.get('/api/stats', (_req, res) => {
  res.json(push.stats());
});

// Prometheus metrics on the app's own registry (nothing lands on prom-client's global one).
const registry = new Registry();
collectDefaultMetrics({ register: registry });
registerMetrics(push, { registry });
app.get('/metrics', (_req, res) => {
  registry.metrics().then(
    (text) => res.type(registry.contentType).send(text),
    (error: unknown) => res.status(500).send(String(error)),
  );
});

// What the server holds for each open session (a demo aid: a real app would not list them openly).
app.get('/api/sessions', (_req, res) => {
  res.json(
    push.sessions().map((session) => ({
      id: session.id,
      encoding: session.encodings.write,
      transport: session.transportName,
      startTime: session.startTime,
      pushConfig: session.pushConfig?.input ?? null,
    })),
  );
});

// A heartbeat of demo events so that an open page shows life.
const interval = Number(process.env.DEMO_INTERVAL ?? 2000);
let counter = 0;
const ticker =
  interval > 0
    ? setInterval(() => {
        counter++;
        push
          .publish(demoEvent(counter))
          .catch((error: unknown) => logger.error({ err: String(error) }, 'demo publish failed'));
      }, interval)
    : undefined;

await push.ready;
const port = Number(process.env.PORT ?? 3000);
const server = app.listen(port, () => {
  logger.info({ port }, `pushwire example on http://localhost:${port}`);
});

async function shutdown(signal: string): Promise<void> {
  logger.info({ signal }, 'shutting down');
  clearInterval(ticker);
  await push.close(); // sessions get 1001 after their buffers flush
  server.close(() => process.exit(0));
}
process.once('SIGTERM', () => void shutdown('SIGTERM'));
process.once('SIGINT', () => void shutdown('SIGINT'));
