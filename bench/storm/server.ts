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
 */
import { once } from 'node:events';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import express from 'express';
import expressWs from 'express-ws';
import { pushMiddleware, type Plugin, type PubSubClient } from '../../lib/index.js';
import { connectionRateLimitPlugin } from '../../plugins/limits/index.js';
import { hasHistory, type ServerMessage, type StormServerConfig } from './common.js';

const config = JSON.parse(process.argv[2] ?? '{}') as StormServerConfig;

function say(message: ServerMessage): void {
  process.send?.(message);
}

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
  say({ type: 'fatal', message: `push.ready: ${String(error)}` });
  process.exit(1);
}
const server = app.listen(config.port, '127.0.0.1');
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
  say({
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
say({ type: 'listening', pid: process.pid, port: config.port });

// A parent that goes away (killed, crashed) closes the IPC channel: never outlive it.
process.on('disconnect', () => process.exit(0));
process.once('SIGTERM', () => {
  void push
    .close()
    .then(() => pubsub.disconnect())
    .finally(() => process.exit(0));
});
