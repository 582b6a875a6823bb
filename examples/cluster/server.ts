/**
 * One server of the cluster examples: an Express app with pushwire on it,
 * over a broker connection of its own, serving the page of examples/basic.
 * start.ts runs two of them in one process, per-core.ts one in each worker
 * process; what differs between the two (how many, where they log, what
 * they tell a session) is in those files.
 */
import { once } from 'node:events';
import type { Server } from 'node:http';
import { fileURLToPath } from 'node:url';
import express from 'express';
import expressWs from 'express-ws';
import {
  pushMiddleware,
  type Logger,
  type Plugin,
  type PubSubClient,
  type PushMiddleware,
} from '../../lib/index.js';

const PUBLIC = fileURLToPath(new URL('../basic/public', import.meta.url));

// Every server of a cluster subscribes to the same topic, or they would not share events.
const TOPIC = 'events';

/** Options of {@link startServer}. */
export interface ServerOptions {
  /** Which server this is: stamped as `publishedBy` on what is published through it. */
  name: string;
  /** The port to listen on, on every interface. */
  port: number;
  /** This server's own connection to the broker (see createPubSub in broker.ts). */
  pubsub: PubSubClient;
  logger: Logger;
  /** pushwire plugins; none by default. */
  plugins?: Plugin[];
  /** What `GET /api/stats` says of this server, ahead of the backend status and the counters. */
  about: Record<string, unknown>;
}

/** A started server, and how to stop it. */
export interface ClusterServer {
  name: string;
  pubsub: PubSubClient;
  push: PushMiddleware;
  server: Server;
  /**
   * Stops gracefully: new upgrades get 503 and sessions are closed with
   * 1001 once their buffers flush (push.close()), then the HTTP server
   * stops and the broker connection is closed.
   */
  close(): Promise<void>;
}

/**
 * Starts a server: the page at `/`, the push endpoint at `/api/events`,
 * `POST /api/publish` for the page's form, `GET /api/stats`. Resolves once
 * it listens, which is after pushwire has subscribed: from then on it
 * receives every server's events.
 */
export async function startServer(options: ServerOptions): Promise<ClusterServer> {
  const { name, port, pubsub } = options;
  const app = express();
  const ews = expressWs(app);
  const push = pushMiddleware(pubsub, TOPIC, {
    logger: options.logger,
    plugins: options.plugins ?? [],
  });
  app.use(express.static(PUBLIC)); // the page of examples/basic
  app.use('/api', push); // ws://host/api/events
  push.attach(ews);

  // Publishing is the application's business; this endpoint lets the page do it.
  app.post('/api/publish', express.json({ limit: '64kb' }), (req, res) => {
    const { identity, type, entity } = (req.body ?? {}) as Record<string, unknown>;
    // Say which server published it, so that the other pages show the event crossed over.
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
  // Answered by the server that got the connection: behind a balancer, any one of them.
  app.get('/api/stats', (_req, res) => {
    res.json({ ...options.about, backend: pubsub.status, ...push.stats() });
  });

  await push.ready; // subscribed before accepting: this server receives every server's events
  const server = app.listen(port);
  await once(server, 'listening');
  return {
    name,
    pubsub,
    push,
    server,
    async close() {
      await push.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await pubsub.disconnect();
    },
  };
}
