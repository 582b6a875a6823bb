/**
 * The broker of the cluster examples: a `nats-server` of their own on a
 * free port when no `NATS_URL` or `REDIS_URL` is given, and one backend
 * connection per server (start.ts) or per worker process (per-core.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { delimiter, join } from 'node:path';
import type { Logger, PubSubClient } from '../../lib/index.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { RedisPubSub } from '../../lib/pubsub/redis.js';

/** A nats-server started by the example. */
export interface LocalBroker {
  url: string;
  process: ChildProcess;
}

function findNatsServer(): string {
  const candidates = [
    process.env.NATS_SERVER_BIN,
    '/usr/sbin/nats-server',
    ...(process.env.PATH ?? '').split(delimiter).map((dir) => join(dir, 'nats-server')),
  ].filter((path): path is string => Boolean(path));
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error(
    'nats-server not found: install it (apt-get install -y nats-server) or set NATS_URL or REDIS_URL',
  );
}

/** A port nothing listens on now: the kernel's pick for port 0. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address
          ? resolve(address.port)
          : reject(new Error('no port')),
      );
    });
  });
}

/** True when something accepts TCP connections on the port of 127.0.0.1. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Starts a nats-server on a free port of 127.0.0.1 and resolves once it
 * accepts connections. `onExit` is told when it exits after start-up (an
 * outage, unless the example is shutting down). Rejects when the binary is
 * missing or it does not listen within 10 s.
 */
export async function startNatsServer(
  onExit: (code: number | null, signal: NodeJS.Signals | null) => void,
): Promise<LocalBroker> {
  const binary = findNatsServer();
  const port = await freePort();
  const child = spawn(binary, ['-a', '127.0.0.1', '-p', String(port)], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  let exitedEarly = false;
  child.once('exit', (code, signal) => {
    exitedEarly = true;
    onExit(code, signal);
  });
  const deadline = Date.now() + 10_000;
  while (!(await listening(port))) {
    if (exitedEarly) throw new Error('nats-server exited at start-up');
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nats-server did not listen on port ${port} within 10 s`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { url: `nats://127.0.0.1:${port}`, process: child };
}

/** Where the servers find their broker. */
export interface Broker {
  /** The NATS server(s), when `redisUrl` is not set. */
  natsUrl: string | undefined;
  redisUrl: string | undefined;
  /** The nats-server started because the environment named no broker: the example stops it. */
  started: LocalBroker | undefined;
}

/**
 * The broker of `REDIS_URL` or `NATS_URL`; when neither is set, a
 * nats-server of the example's own (startNatsServer, `onExit` as there),
 * so that the example runs with nothing to configure.
 */
export async function brokerFromEnv(
  onExit: (code: number | null, signal: NodeJS.Signals | null) => void,
): Promise<Broker> {
  const redisUrl = process.env.REDIS_URL;
  const natsUrl = process.env.NATS_URL;
  if (redisUrl !== undefined || natsUrl !== undefined) {
    return { natsUrl, redisUrl, started: undefined };
  }
  const started = await startNatsServer(onExit);
  return { natsUrl: started.url, redisUrl, started };
}

/** A backend connection to the broker: Redis when `redisUrl` is set, NATS otherwise. */
export function createPubSub(
  natsUrl: string | undefined,
  redisUrl: string | undefined,
  logger: Logger,
): PubSubClient {
  const onError = (error: unknown): void =>
    logger.warn({ err: error instanceof Error ? error.message : String(error) }, 'pub/sub');
  if (redisUrl !== undefined) return new RedisPubSub({ url: redisUrl, onError });
  return new NatsPubSub({ servers: natsUrl, onError });
}
