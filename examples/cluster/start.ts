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
import type { Logger } from '../../lib/index.js';
import { consoleLogger, demoEvent } from '../shared/demo.js';
import { brokerFromEnv, createPubSub, type LocalBroker } from './broker.js';
import { startServer, type ClusterServer } from './server.js';

const logger = consoleLogger();

// ---------------------------------------------------------------------------------------------
// The servers: each is server.ts's app; here they differ only in name, port and log field.

/** The logger of one server: each line says which server wrote it. */
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
  const { natsUrl, redisUrl, started } = await brokerFromEnv((code, signal) => {
    // After start-up an exit is an outage: the servers ride it out and reconnect if it returns.
    if (!shuttingDown) logger.error({ code, signal }, 'nats-server exited');
  });
  broker = started;
  if (started !== undefined) logger.info({ url: natsUrl }, 'started nats-server');
  logger.info({ backend: redisUrl !== undefined ? redisUrl : natsUrl }, 'broker');
  const ports = [Number(process.env.PORT_A ?? 3001), Number(process.env.PORT_B ?? 3002)];
  servers = await Promise.all(
    ports.map(async (port, i) => {
      const name = `server-${i === 0 ? 'a' : 'b'}`;
      const started = await startServer({
        name,
        port,
        pubsub: createPubSub(natsUrl, redisUrl, logger), // its own connection, as on its own machine
        logger: withServer(name),
        about: { server: name },
      });
      logger.info({ server: name, port }, `${name} on http://localhost:${port}`);
      return started;
    }),
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
  await Promise.all(servers.map((server) => server.close())); // sessions get 1001 after their buffers flush
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
