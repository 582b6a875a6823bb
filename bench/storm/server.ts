/**
 * The storm's server child: Express, express-ws and pushwire on a broker,
 * listening on a fixed port of 127.0.0.1 so that it can be SIGKILLed and
 * started again where its clients reconnect. Forked with IPC by
 * bench/storm.ts and test/integration/storm.test.ts:
 *
 *   node --import tsx bench/storm/server.ts '<StormServerConfig as JSON>'
 *
 * It says `listening` once subscribed and listening, then a sample every
 * `sampleMs` (sessions, sessions with their push config applied, accepted
 * and refused attempts, the longest event-loop delay, memory). It has no
 * `uncaughtException` handler: a crash must show as an exit the parent sees.
 *
 * With `workers` > 1 it is a node:cluster primary whose workers share the
 * port (examples/cluster/per-core.ts is the documented form of this): each
 * worker holds its own sessions, so that more sessions than one process's
 * open-file limit fit on the machine. The primary sums the workers' samples;
 * a worker that dies takes the primary down with it, so that the parent sees
 * the crash.
 */
import cluster, { type Worker } from 'node:cluster';
import { once } from 'node:events';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import express from 'express';
import expressWs from 'express-ws';
import { pushMiddleware, type Plugin, type PubSubClient } from '../../lib/index.js';
import { connectionRateLimitPlugin } from '../../plugins/limits/index.js';
import {
  childConfig,
  hasHistory,
  tellParent,
  type ServerMessage,
  type ServerSample,
  type StormServerConfig,
} from './common.js';

/** The listen backlog by default: Node's own (4096 livelocked a storm, see serve). */
const LISTEN_BACKLOG = 511;

const config = childConfig<StormServerConfig>();

async function createPubSub(): Promise<PubSubClient> {
  const history = hasHistory(config.backend) ? { maxEvents: config.maxEvents } : undefined;
  const onError = (error: unknown): void => {
    // Outages are part of the storm: one line each, on stderr, never a crash.
    process.stderr.write(`storm-server: pub/sub: ${String(error)}\n`);
  };
  if (config.backend === 'nats' || config.backend === 'jetstream') {
    const { NatsPubSub } = await import('../../lib/pubsub/nats.js');
    return new NatsPubSub({ servers: config.url, onError, ...(history ? { history } : {}) });
  }
  const { RedisPubSub } = await import('../../lib/pubsub/redis.js');
  return new RedisPubSub({ url: config.url, onError, ...(history ? { history } : {}) });
}

async function serve(): Promise<void> {
  const pubsub = await createPubSub();
  const plugins: Plugin[] = config.rateLimit
    ? [
        connectionRateLimitPlugin({
          maxAttempts: config.rateLimit.maxAttempts,
          intervalMs: config.rateLimit.intervalMs,
        }),
      ]
    : [];
  const app = express();
  const ews = expressWs(app);
  const push = pushMiddleware(pubsub, config.topic, { plugins });
  app.use('/api', push);
  push.attach(ews);

  try {
    await push.ready;
  } catch (error) {
    tellParent({ type: 'fatal', message: `push.ready: ${String(error)}` });
    process.exit(1);
  }
  // Node's default backlog, 511. A deeper one (4096, this machine's net.core.somaxconn) looked
  // like the cure for dropped SYNs in a storm, and livelocked it instead: connections waited in
  // the queue past the client's 10 s handshake timeout, so most accepted ones were already
  // abandoned (bench/results/storm-backlog4096.md). `--backlog` sets another. Under node:cluster with scheduling `none` the primary only binds the
  // socket; each worker calls listen(2) on the shared socket with this backlog (Node's net.js,
  // listenInCluster → _listen2). With `rr` the primary listens, with the first worker's backlog.
  const server = app.listen({
    port: config.port,
    host: '127.0.0.1',
    backlog: config.backlog ?? LISTEN_BACKLOG,
  });
  await once(server, 'listening');

  // The longest delay of each sample's interval: a storm shows as spikes, which a mean would hide.
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  const sample = (): void => {
    const stats = push.stats();
    let configured = 0;
    for (const session of push.sessions()) if (session.pushConfig !== undefined) configured++;
    let refused = 0;
    for (const count of Object.values(stats.sessionsRefused)) refused += count;
    const memory = process.memoryUsage();
    tellParent({
      type: 'sample',
      sample: {
        t: Date.now(),
        sessions: stats.sessionsOpen,
        configured,
        accepted: stats.sessionsAccepted,
        refused429: stats.sessionsRefused[429] ?? 0,
        refused,
        recoveries: stats.recoveries,
        recoveriesFailed: stats.recoveriesFailed,
        loopDelayMax: loopDelay.max / 1e6,
        rss: memory.rss,
        heapUsed: memory.heapUsed,
        backend: pubsub.status,
      },
    });
    loopDelay.reset();
  };
  setInterval(sample, config.sampleMs);
  tellParent({ type: 'listening', pid: process.pid, port: config.port });

  // A parent that goes away (killed, crashed) closes the IPC channel: never outlive it.
  process.on('disconnect', () => process.exit(0));
  process.once('SIGTERM', () => {
    void push
      .close()
      .then(() => pubsub.disconnect())
      .finally(() => process.exit(0));
  });
}

/** The cluster primary: forks the workers, sums their samples, forwards it all to the parent. */
function lead(workers: number): void {
  const latest = new Map<number, ServerSample>();
  let listening = 0;
  let stopping = false;
  const onMessage = (worker: Worker, message: ServerMessage): void => {
    if (message.type === 'sample') latest.set(worker.id, message.sample);
    else if (message.type === 'listening' && ++listening === workers) {
      tellParent({ type: 'listening', pid: process.pid, port: config.port });
      setInterval(() => {
        const all = [...latest.values()];
        if (all.length === 0) return;
        const total = (pick: (s: ServerSample) => number): number =>
          all.reduce((a, s) => a + pick(s), 0);
        tellParent({
          type: 'sample',
          sample: {
            t: Date.now(),
            sessions: total((s) => s.sessions),
            configured: total((s) => s.configured),
            accepted: total((s) => s.accepted),
            refused429: total((s) => s.refused429),
            refused: total((s) => s.refused),
            recoveries: total((s) => s.recoveries),
            recoveriesFailed: total((s) => s.recoveriesFailed),
            loopDelayMax: Math.max(...all.map((s) => s.loopDelayMax)),
            rss: total((s) => s.rss) + process.memoryUsage().rss,
            heapUsed: total((s) => s.heapUsed),
            backend: [...new Set(all.map((s) => s.backend))].join('/'),
          },
        });
      }, config.sampleMs);
    } else if (message.type === 'fatal') tellParent(message);
  };
  cluster.on('message', onMessage);
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0);
      return;
    }
    process.stderr.write(
      `storm-server: worker ${worker.id} died (code ${code}, signal ${signal})\n`,
    );
    process.exit(1);
  });
  // Under a storm the round-robin primary hands out one connection per worker per round trip,
  // and busy workers answer late: `none` lets every worker accept by itself.
  cluster.schedulingPolicy = config.scheduling === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on('disconnect', () => process.exit(0));
  process.once('SIGTERM', () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGTERM');
  });
}

if (cluster.isPrimary && (config.workers ?? 1) > 1) lead(config.workers ?? 1);
else await serve();
