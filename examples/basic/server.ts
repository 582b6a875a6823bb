/**
 * The basic example: an Express app with pushwire on the in-memory
 * backend, a page that shows events live, and a form that publishes them.
 *
 *   npm start            # then open http://localhost:3000
 *   PORT=8080 npm start
 */
import { fileURLToPath } from 'node:url';
import express from 'express';
import expressWs from 'express-ws';
import { LocalPubSub, pushMiddleware, type Logger } from '../../lib/index.js';

/** Structured one-line logs on stdout, pino's shape. */
const logger: Logger = {
  debug: () => undefined,
  info: (obj, msg) => console.log(JSON.stringify({ level: 'info', msg, ...obj })),
  warn: (obj, msg) => console.warn(JSON.stringify({ level: 'warn', msg, ...obj })),
  error: (obj, msg) => console.error(JSON.stringify({ level: 'error', msg, ...obj })),
};

const app = express();
const ews = expressWs(app);
const push = pushMiddleware(new LocalPubSub(), 'events', { logger, plugins: [] });

app.use(express.static(fileURLToPath(new URL('./public', import.meta.url))));
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

// A heartbeat of demo events so that an open page shows life.
let counter = 0;
const ticker = setInterval(() => {
  counter++;
  const priority = 1 + (counter % 5);
  push
    .publish({
      identity: counter % 3 === 0 ? 'user' : 'task',
      type: counter % 4 === 0 ? 'update' : 'create',
      entity: { ID: String(counter), name: `item ${counter}`, priority, status: priority > 2 ? 'open' : 'done' },
    })
    .catch((error: unknown) => logger.error({ err: String(error) }, 'demo publish failed'));
}, 2000);

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
