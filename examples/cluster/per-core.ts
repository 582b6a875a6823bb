/**
 * One pushwire server per core of the machine (issue 15 item 4): a
 * node:cluster primary forks one worker per core; the workers share one
 * listening port (the primary accepts connections and hands them out in
 * turn) and one broker, so that an event published through any worker
 * reaches the sessions of every worker, as servers of a fleet on several
 * machines share it. LocalPubSub cannot do this: it lives in one process's
 * memory, and a worker would only ever reach its own sessions.
 *
 *   npm run example:per-core                 # one worker per core, a nats-server of its own
 *   WORKERS=2 PORT=3000 npm run example:per-core
 *   NATS_URL=nats://host:4222 npm run example:per-core
 *   REDIS_URL=redis://host:6379 npm run example:per-core
 *
 * Each worker says which one it is to every session it opens (a `worker`
 * `hello` event, pushed to that session only), and in `publishedBy` of what
 * is published through it. SIGTERM or SIGINT to the primary closes every
 * worker gracefully (push.close(): sessions closed with 1001 once their
 * buffers flush), then the nats-server it started; a worker that dies
 * otherwise is replaced.
 */
import cluster from 'node:cluster';
import { once } from 'node:events';
import { availableParallelism } from 'node:os';
import { definePlugin, type Logger } from '../../lib/index.js';
import { consoleLogger } from '../shared/demo.js';
import { brokerFromEnv, createPubSub } from './broker.js';
import { startServer } from './server.js';

const logger = consoleLogger();

/** The identity of the event a worker pushes to each session it opens. */
export const HELLO_IDENTITY = 'worker';

// ---------------------------------------------------------------------------------------------
// The primary: the broker, the workers, the signals.

async function primary(): Promise<void> {
  const workers = Number(process.env.WORKERS ?? availableParallelism());
  const port = Number(process.env.PORT ?? 3000);
  if (!Number.isInteger(workers) || workers < 1) throw new TypeError('WORKERS must be >= 1');
  let shuttingDown = false;
  const {
    natsUrl,
    redisUrl,
    started: broker,
  } = await brokerFromEnv((code, signal) => {
    if (!shuttingDown) logger.error({ code, signal }, 'nats-server exited');
  });
  // The workers read their broker and port from the environment the primary gives them.
  const env = {
    PORT: String(port),
    ...(redisUrl !== undefined ? { REDIS_URL: redisUrl } : { NATS_URL: natsUrl }),
  };

  let listening = 0;
  cluster.on('listening', () => {
    if (++listening === workers) {
      logger.info(
        { port, workers, broker: redisUrl ?? natsUrl, pid: process.pid },
        `${workers} workers on http://localhost:${port}`,
      );
    }
  });
  cluster.on('exit', (worker, code, signal) => {
    if (shuttingDown) return;
    // A crashed worker's sessions reconnect (their clients' backoff) to the others, or to its
    // replacement once it listens.
    logger.error({ worker: worker.id, code, signal }, 'worker died; starting another');
    cluster.fork(env);
  });
  for (let i = 0; i < workers; i++) cluster.fork(env);

  const shutdown = async (signal: string): Promise<void> => {
    if (shuttingDown) return;
    shuttingDown = true;
    logger.info({ signal }, 'shutting down the workers');
    const alive = Object.values(cluster.workers ?? {}).filter((w) => w !== undefined);
    await Promise.all(
      alive.map(async (worker) => {
        const exit = once(worker, 'exit');
        // Each worker closes its own sessions (push.close()), then its broker connection.
        worker.process.kill('SIGTERM');
        await exit;
      }),
    );
    if (broker && broker.process.exitCode === null) {
      broker.process.kill('SIGTERM');
      await once(broker.process, 'exit');
    }
    logger.info({}, 'stopped');
    process.exit(0);
  };
  process.once('SIGINT', () => void shutdown('SIGINT'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
}

// ---------------------------------------------------------------------------------------------
// A worker: server.ts's app, like any single server, on the port all workers share.

async function worker(): Promise<void> {
  const id = cluster.worker?.id ?? 0;
  const log: Logger = {
    debug: () => undefined,
    info: (obj, msg) => logger.info({ worker: id, ...obj }, msg),
    warn: (obj, msg) => logger.warn({ worker: id, ...obj }, msg),
    error: (obj, msg) => logger.error({ worker: id, ...obj }, msg),
  };
  const server = await startServer({
    name: `worker-${id}`,
    port: Number(process.env.PORT ?? 3000),
    pubsub: createPubSub(process.env.NATS_URL, process.env.REDIS_URL, log),
    logger: log,
    plugins: [
      // Tells each session which worker holds it (the page shows it; the test relies on it).
      definePlugin({
        name: 'worker-hello',
        onSessionStart(session) {
          session.directPush({
            identity: HELLO_IDENTITY,
            type: 'hello',
            entity: { worker: id, pid: process.pid },
          });
        },
      }),
    ],
    // GET /api/stats is answered by whichever worker the connection was handed to.
    about: { worker: id, pid: process.pid },
  });

  let closing = false;
  const close = async (): Promise<void> => {
    if (closing) return;
    closing = true;
    await server.close(); // new upgrades get 503; sessions get 1001 after their buffers flush
    process.exit(0);
  };
  process.once('SIGTERM', () => void close());
  // Ctrl-C in a terminal signals the whole process group: the worker closes as on SIGTERM.
  process.once('SIGINT', () => void close());
}

(cluster.isPrimary ? primary() : worker()).catch((error: unknown) => {
  logger.error({ err: error instanceof Error ? error.message : String(error) }, 'cannot start');
  process.exit(1);
});
