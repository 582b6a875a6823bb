/**
 * The cluster example: a broker and two Express servers, each with pushwire
 * on it, serving the page of examples/basic. An event published on either
 * server shows on both pages: each server subscribes to the topic through
 * its own broker connection and fans out to its own sessions.
 *
 *   npm run example:cluster              # starts nats-server on a free port
 *   NATS_URL=nats://host:4222 npm run example:cluster
 *   REDIS_URL=redis://host:6379 npm run example:cluster
 *   PORT_A=8001 PORT_B=8002 npm run example:cluster
 *
 * Then open http://localhost:3001 and http://localhost:3002 side by side.
 *
 * The two servers run in this one process for convenience; they share
 * nothing but the broker (each has its own connection), exactly as two
 * processes on two machines would.
 */
import { once } from 'node:events';
import type { Server } from 'node:http';
import { fileURLToPath } from 'node:url';
import express from 'express';
import expressWs from 'express-ws';
import {
  pushMiddleware,
  type Logger,
  type PubSubClient,
  type PushMiddleware,
} from '../../lib/index.js';
import { consoleLogger, demoEvent } from '../shared/demo.js';
import { createPubSub, startNatsServer, type LocalBroker } from './broker.js';

const logger = consoleLogger();

const PUBLIC = fileURLToPath(new URL('../basic/public', import.meta.url));
const TOPIC = 'events';

// ---------------------------------------------------------------------------------------------
// The servers.

interface ClusterServer {
  name: string;
  pubsub: PubSubClient;
  push: PushMiddleware;
  server: Server;
}

async function startServer(
  name: string,
  port: number,
  pubsub: PubSubClient,
): Promise<ClusterServer> {
  const app = express();
  const ews = expressWs(app);
  const push = pushMiddleware(pubsub, TOPIC, { logger: withServer(name), plugins: [] });
  app.use(express.static(PUBLIC)); // the page of examples/basic
  app.use('/api', push); // ws://host/api/events
  push.attach(ews);

  // Publishing is the application's business; this endpoint lets the page do it.
  app.post('/api/publish', express.json({ limit: '64kb' }), (req, res) => {
    const { identity, type, entity } = (req.body ?? {}) as Record<string, unknown>;
    // Say which server published it, so that the other page shows the event crossed over.
    const stamped =
      entity !== null && typeof entity === 'object' && !Array.isArray(entity)
        ? { publishedBy: name, ...entity }
        : (entity ?? {});
    push
      .publish({ identity: String(identity ?? ''), type: String(type ?? ''), entity: stamped })
      .then(
        () => res.status(202).json({ published: true, by: name }),
        (error: Error & { status?: number }) =>
          res.status(error.status ?? 500).json({ error: error.message }),
      );
  });
  app.get('/api/stats', (_req, res) => {
    res.json({ server: name, backend: pubsub.status, ...push.stats() });
  });

  await push.ready; // subscribed: from now on this server receives every server's events
  const server = app.listen(port);
  await once(server, 'listening');
  logger.info({ server: name, port }, `${name} on http://localhost:${port}`);
  return { name, pubsub, push, server };
}

function withServer(name: string): Logger {
  return {
    debug: () => undefined,
    info: (obj, msg) => logger.info({ server: name, ...obj }, msg),
    warn: (obj, msg) => logger.warn({ server: name, ...obj }, msg),
    error: (obj, msg) => logger.error({ server: name, ...obj }, msg),
  };
}

// ---------------------------------------------------------------------------------------------
// Start, and stop on a signal.

let shuttingDown = false;
let broker: LocalBroker | undefined;
let servers: ClusterServer[] = [];
let ticker: NodeJS.Timeout | undefined;

async function main(): Promise<void> {
  const redisUrl = process.env.REDIS_URL;
  let natsUrl = process.env.NATS_URL;
  if (redisUrl === undefined && natsUrl === undefined) {
    broker = await startNatsServer((code, signal) => {
      // After start-up an exit is an outage: the servers ride it out and reconnect if it returns.
      if (!shuttingDown) logger.error({ code, signal }, 'nats-server exited');
    });
    natsUrl = broker.url;
    logger.info({ url: natsUrl }, 'started nats-server');
  }
  logger.info({ backend: redisUrl !== undefined ? redisUrl : natsUrl }, 'broker');
  const ports = [Number(process.env.PORT_A ?? 3001), Number(process.env.PORT_B ?? 3002)];
  servers = await Promise.all(
    ports.map((port, i) =>
      startServer(`server-${i === 0 ? 'a' : 'b'}`, port, createPubSub(natsUrl, redisUrl, logger)),
    ),
  );

  // A heartbeat of demo events from server A only: both pages show them.
  let counter = 0;
  const heartbeat = servers[0];
  ticker = setInterval(() => {
    counter++;
    heartbeat?.push
      .publish(demoEvent(counter, { publishedBy: heartbeat.name }))
      // During a broker outage publish rejects (after the retries): log it and carry on.
      .catch((error: unknown) => logger.warn({ err: String(error) }, 'heartbeat publish failed'));
  }, 2000);
}

async function shutdown(signal: string): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  logger.info({ signal }, 'shutting down');
  clearInterval(ticker);
  await Promise.all(
    servers.map(async ({ push, server, pubsub }) => {
      await push.close(); // sessions get 1001 after their buffers flush
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await pubsub.disconnect();
    }),
  );
  if (broker && broker.process.exitCode === null) {
    broker.process.kill('SIGTERM');
    await once(broker.process, 'exit');
  }
  process.exit(0);
}

process.once('SIGINT', () => void shutdown('SIGINT'));
process.once('SIGTERM', () => void shutdown('SIGTERM'));

main().catch(async (error: unknown) => {
  logger.error({ err: error instanceof Error ? error.message : String(error) }, 'cannot start');
  broker?.process.kill('SIGTERM');
  await Promise.all(servers.map(({ pubsub }) => pubsub.disconnect()));
  process.exit(1);
});
