/**
 * Soak test (issue 9, item 4): many sessions, a steady publish rate for a
 * fixed time, 1% slow clients that never read. It checks that
 *
 * - every fast client receives every event, in order;
 * - the server's heap and RSS stay flat after warm-up (sampled every
 *   second; the curve is printed and written to test-results/soak.json);
 * - once every session closed, no handle and no listener is left behind
 *   (`process.getActiveResourcesInfo()` and the HTTP server's listeners,
 *   counted before the sessions opened and after they closed).
 *
 * The server runs in this process (it is what is measured); the clients run
 * in a child process so that their memory and CPU do not blur the curve.
 *
 *   npm run soak                      # 2,000 sessions, 10 events/s, 3 minutes
 *   npm run soak -- --short           # 200 sessions, 15 s: the CI version (< 60 s)
 *   npm run soak -- --sessions 500 --duration 60 --rate 20 --pad 512
 *
 * Exits with 1 when a check fails.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parseArgs } from 'node:util';
import express from 'express';
import expressWs from 'express-ws';
import { Registry } from 'prom-client';
import WebSocket from 'ws';
import { LocalPubSub, pushMiddleware } from '../../lib/index.js';
import { registerMetrics } from '../../plugins/metrics/index.js';

// ---------------------------------------------------------------------------
// Configuration

interface SoakConfig {
  mode: 'full' | 'short' | 'custom';
  /** `clients` in the child process. */
  role: 'server' | 'clients';
  sessions: number;
  /** Seconds of steady publishing. */
  duration: number;
  /** Seconds at the start of publishing that do not count for the flatness check. */
  warmup: number;
  /** Events per second. */
  rate: number;
  /** Bytes of padding in each entity. */
  pad: number;
  /** One slow client every this many sessions (100: 1%). */
  slowEvery: number;
  /** The server's slow-consumer bound per session. */
  maxBufferedBytes: number;
  /** Concurrent handshakes while connecting. */
  connectConcurrency: number;
}

function readConfig(argv: string[]): SoakConfig {
  const { values } = parseArgs({
    args: argv,
    options: {
      short: { type: 'boolean', default: false },
      sessions: { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      rate: { type: 'string' },
      pad: { type: 'string' },
      role: { type: 'string' },
    },
    strict: true,
  });
  const base: Omit<SoakConfig, 'role'> = values.short
    ? {
        mode: 'short',
        sessions: 200,
        duration: 15,
        warmup: 5,
        rate: 10,
        pad: 512,
        slowEvery: 100,
        maxBufferedBytes: 256 * 1024,
        connectConcurrency: 20,
      }
    : {
        mode: 'full',
        sessions: 2000,
        duration: 180,
        warmup: 30,
        rate: 5,
        pad: 512,
        slowEvery: 100,
        maxBufferedBytes: 256 * 1024,
        connectConcurrency: 50,
      };
  const num = (v: string | undefined, fallback: number): number => {
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`soak: invalid number ${v}`);
    return n;
  };
  const custom = ['sessions', 'duration', 'warmup', 'rate', 'pad'].some(
    (k) => values[k as keyof typeof values] !== undefined,
  );
  const duration = num(values.duration, base.duration);
  return {
    ...base,
    mode: custom ? 'custom' : base.mode,
    role: values.role === 'clients' ? 'clients' : 'server',
    sessions: Math.floor(num(values.sessions, base.sessions)),
    duration,
    warmup: Math.min(num(values.warmup, base.warmup), duration / 2),
    rate: num(values.rate, base.rate),
    pad: Math.floor(num(values.pad, base.pad)),
  };
}

// ---------------------------------------------------------------------------
// Messages between the server process and the client process

type ToClients =
  | { cmd: 'connect'; url: string; sessions: number; slowEvery: number; concurrency: number }
  | { cmd: 'expect'; total: number; timeoutMs: number }
  | { cmd: 'close' };

interface ClientReport {
  fast: number;
  slow: number;
  /** Fast clients that received every event, in order. */
  complete: number;
  /** A few fast clients that did not: index, count, first problem. */
  incomplete: Array<{ index: number; received: number; problem: string }>;
  /** Events the slow clients' sockets took in before they stopped reading (they never read more). */
  slowReceived: { min: number; max: number };
  /** Publish-to-receive latency of fast clients, in ms (same machine clock). */
  latencyMs: { p50: number; p99: number; max: number };
}

type FromClients =
  | { kind: 'ready' }
  | { kind: 'connected'; opened: number; failed: number; firstError?: string }
  | { kind: 'report'; report: ClientReport }
  | { kind: 'closed' };

// ---------------------------------------------------------------------------
// The client process

const SEQ_KEY = Buffer.from('"seq":');
const SENT_AT_KEY = Buffer.from('"sentAt":');

/** The non-negative integer after `key` in a JSON frame, or -1. */
function readNumber(frame: Buffer, key: Buffer): number {
  let i = frame.indexOf(key);
  if (i === -1) return -1;
  i += key.length;
  let n = 0;
  for (let c = frame[i]; c !== undefined && c >= 0x30 && c <= 0x39; c = frame[++i]) {
    n = n * 10 + (c - 0x30);
  }
  return n;
}

async function runClients(): Promise<void> {
  const send = (message: FromClients): void => {
    process.send?.(message);
  };
  interface Peer {
    ws: WebSocket;
    slow: boolean;
    received: number;
    next: number;
    problem: string | undefined;
  }
  const peers: Peer[] = [];
  // Latency histogram in 1 ms buckets up to 10 s: percentiles without keeping every sample.
  const latency = new Uint32Array(10_001);
  let expectTotal = Infinity;
  let slowEvery = 100;
  let onProgress: () => void = () => undefined;

  const connectOne = (url: string, index: number, slow: boolean): Promise<void> =>
    new Promise((resolve, reject) => {
      // `slow=1` lets the server side of the soak tell the slow sessions apart.
      const ws = new WebSocket(slow ? `${url}?slow=1` : url, { perMessageDeflate: false });
      const peer: Peer = { ws, slow, received: 0, next: 0, problem: undefined };
      ws.on('error', () => undefined);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
      ws.once('open', () => {
        peers[index] = peer;
        if (slow) {
          // Never reads again: the server must bound what it keeps for this session.
          (ws as unknown as { _socket: { pause(): void } })._socket.pause();
        }
        resolve();
      });
      ws.once('close', () => reject(new Error('closed before open')));
      ws.on('message', (data) => {
        peer.received++;
        if (slow) return;
        // The two numbers are read in place: a full JSON.parse of every frame would make this
        // process, not the server, the bottleneck (2,000 sessions share one client process).
        const frame = data as Buffer;
        const seq = readNumber(frame, SEQ_KEY);
        const sentAt = readNumber(frame, SENT_AT_KEY);
        if (seq !== peer.next && peer.problem === undefined) {
          peer.problem = `expected seq ${peer.next}, got ${seq}`;
        }
        peer.next = seq + 1;
        latency[Math.min(10_000, Math.max(0, Date.now() - sentAt))]!++;
        if (peer.received >= expectTotal) onProgress();
      });
    });

  const percentile = (q: number): number => {
    const total = latency.reduce((a, b) => a + b, 0);
    let seen = 0;
    for (let ms = 0; ms < latency.length; ms++) {
      seen += latency[ms]!;
      if (seen >= q * total) return ms;
    }
    return latency.length - 1;
  };

  const report = (): ClientReport => {
    const fast = peers.filter((p) => !p.slow);
    const slow = peers.filter((p) => p.slow);
    const bad = fast
      .map((p, index) => ({ p, index }))
      .filter(({ p }) => p.received !== expectTotal || p.problem !== undefined);
    let max = 0;
    for (let ms = 0; ms < latency.length; ms++) if (latency[ms]! > 0) max = ms;
    return {
      fast: fast.length,
      slow: slow.length,
      complete: fast.length - bad.length,
      incomplete: bad.slice(0, 5).map(({ p, index }) => ({
        index,
        received: p.received,
        problem: p.problem ?? `received ${p.received} of ${expectTotal}`,
      })),
      slowReceived: {
        min: Math.min(...slow.map((p) => p.received)),
        max: Math.max(...slow.map((p) => p.received)),
      },
      latencyMs: { p50: percentile(0.5), p99: percentile(0.99), max },
    };
  };

  process.on('message', (message: ToClients) => {
    void (async () => {
      if (message.cmd === 'connect') {
        slowEvery = message.slowEvery;
        let next = 0;
        let opened = 0;
        let failed = 0;
        let firstError: string | undefined;
        const worker = async (): Promise<void> => {
          while (next < message.sessions) {
            const index = next++;
            try {
              await connectOne(message.url, index, index % message.slowEvery === 0);
              opened++;
            } catch (error) {
              failed++;
              firstError ??= (error as Error).message;
            }
          }
        };
        await Promise.all(Array.from({ length: message.concurrency }, worker));
        send({ kind: 'connected', opened, failed, ...(firstError ? { firstError } : {}) });
      } else if (message.cmd === 'expect') {
        expectTotal = message.total;
        const done = (): boolean =>
          peers.every((p) => p.slow || p.received >= expectTotal || p.problem !== undefined);
        if (!done()) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, message.timeoutMs);
            onProgress = () => {
              if (done()) {
                clearTimeout(timer);
                resolve();
              }
            };
          });
        }
        send({ kind: 'report', report: report() });
      } else if (message.cmd === 'close') {
        // Half the slow clients vanish (as a dead peer would), the other half read again and
        // close cleanly; the fast ones close cleanly.
        await Promise.all(
          peers.map((p, i) => {
            if (p.ws.readyState === WebSocket.CLOSED) return undefined;
            const closed = once(p.ws, 'close');
            if (p.slow && i % (2 * slowEvery) === 0) p.ws.terminate();
            else {
              if (p.slow) (p.ws as unknown as { _socket: { resume(): void } })._socket.resume();
              p.ws.close(1000);
            }
            return closed;
          }),
        );
        send({ kind: 'closed' });
        // Nothing of this process matters any more; exiting at once keeps the parent's wait short.
        process.disconnect();
        process.exit(0);
      }
    })();
  });
  send({ kind: 'ready' });
}

// ---------------------------------------------------------------------------
// The server process

interface Sample {
  t: number;
  rssMB: number;
  heapUsedMB: number;
  heapTotalMB: number;
  externalMB: number;
  sessions: number;
  published: number;
  deliveries: number;
  dropped: number;
  eventLoopP99ms: number;
}

const MB = 1024 * 1024;
const round = (n: number, digits = 1): number => Number(n.toFixed(digits));

/** Counts of active resources by type (handles and requests that keep the loop alive). */
function resources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const type of process.getActiveResourcesInfo()) counts[type] = (counts[type] ?? 0) + 1;
  return counts;
}

/** Listener counts of an emitter, by event. */
function listeners(emitter: NodeJS.EventEmitter): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const name of emitter.eventNames()) counts[String(name)] = emitter.listenerCount(name);
  return counts;
}

/** What grew between two counts (`after` minus `before`, positive entries only). */
function grown(
  before: Record<string, number>,
  after: Record<string, number>,
): Record<string, number> {
  const diff: Record<string, number> = {};
  for (const [key, n] of Object.entries(after)) {
    const d = n - (before[key] ?? 0);
    if (d > 0) diff[key] = d;
  }
  return diff;
}

/** At most `width` characters: each one the mean of its share of the samples. */
function sparkline(all: number[], width = 80): string {
  const per = Math.max(1, Math.ceil(all.length / width));
  const values: number[] = [];
  for (let i = 0; i < all.length; i += per) {
    const chunk = all.slice(i, i + per);
    values.push(chunk.reduce((a, b) => a + b, 0) / chunk.length);
  }
  const bars = '▁▂▃▄▅▆▇█';
  const min = Math.min(...values);
  const max = Math.max(...values);
  const span = max - min || 1;
  return values.map((v) => bars[Math.min(7, Math.floor(((v - min) / span) * 8))]).join('');
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

/** Waits for one message of a kind from the client process. */
function nextMessage<K extends FromClients['kind']>(
  child: ChildProcess,
  kind: K,
  timeoutMs: number,
): Promise<Extract<FromClients, { kind: K }>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.off('message', onMessage);
      reject(new Error(`soak: no '${kind}' from the client process after ${timeoutMs} ms`));
    }, timeoutMs);
    const onMessage = (message: FromClients): void => {
      if (message.kind !== kind) return;
      clearTimeout(timer);
      child.off('message', onMessage);
      resolve(message as Extract<FromClients, { kind: K }>);
    };
    child.on('message', onMessage);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`soak: the client process exited (${code}) before '${kind}'`));
    });
  });
}

async function waitUntil(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`soak: ${what} (after ${timeoutMs} ms)`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function runServer(config: SoakConfig): Promise<boolean> {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const started = Date.now();
  const log = (message: string): void =>
    console.log(`[soak +${((Date.now() - started) / 1000).toFixed(1)}s] ${message}`);
  log(`config ${JSON.stringify(config)}`);

  const app = express();
  const ews = expressWs(app);
  const push = pushMiddleware(new LocalPubSub(), 'events', {
    maxBufferedBytes: config.maxBufferedBytes,
    // The default keepalive: a client that stops reading stops answering pings too, and is
    // terminated after one to two intervals (the slow clients here are, at 30 to 60 s).
    pingInterval: 30_000,
  });
  const registry = new Registry();
  const metrics = registerMetrics(push, { registry });
  app.use('/api', push);
  push.attach(ews);
  await push.ready;
  const server = app.listen(0, '127.0.0.1') as Server;
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const url = `ws://127.0.0.1:${port}/api/events`;

  const child = fork(fileURLToPath(import.meta.url), ['--role', 'clients'], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  await nextMessage(child, 'ready', 30_000);

  const samples: Sample[] = [];
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  const sample = (): void => {
    const m = process.memoryUsage();
    const s = push.stats();
    samples.push({
      t: round((Date.now() - started) / 1000),
      rssMB: round(m.rss / MB),
      heapUsedMB: round(m.heapUsed / MB),
      heapTotalMB: round(m.heapTotal / MB),
      externalMB: round(m.external / MB),
      sessions: s.sessionsOpen,
      published: s.published,
      deliveries: s.deliveries,
      dropped: s.dropped,
      eventLoopP99ms: round(loopDelay.percentile(99) / 1e6),
    });
    loopDelay.reset();
  };
  const sampler = setInterval(sample, 1000);

  // Baseline: everything this process holds before any session exists.
  gc();
  await new Promise((resolve) => setTimeout(resolve, 200));
  const resourcesBefore = resources();
  const serverListenersBefore = listeners(server);
  const wssListenersBefore = listeners(ews.getWss() as unknown as NodeJS.EventEmitter);

  const checks: Array<{ name: string; ok: boolean; detail: string }> = [];
  const check = (name: string, ok: boolean, detail: string): void => {
    checks.push({ name, ok, detail });
    log(`${ok ? 'PASS' : 'FAIL'} ${name}: ${detail}`);
  };

  let published = 0;
  let heapAfterWarmupMB = 0;
  let heapAtEndMB = 0;
  let report: ClientReport | undefined;
  let slowSessions: Record<string, unknown> | undefined;
  try {
    // 1. Sessions.
    child.send({
      cmd: 'connect',
      url,
      sessions: config.sessions,
      slowEvery: config.slowEvery,
      concurrency: config.connectConcurrency,
    } satisfies ToClients);
    const connected = await nextMessage(child, 'connected', 300_000);
    log(
      `connected ${connected.opened} sessions (${connected.failed} failed${connected.firstError ? `: ${connected.firstError}` : ''})`,
    );
    check('every session opened', connected.failed === 0, `${connected.opened}/${config.sessions}`);
    const connectedFast = connected.opened - Math.ceil(config.sessions / config.slowEvery);
    await waitUntil(
      () => push.stats().sessionsOpen === connected.opened,
      30_000,
      'sessions not registered',
    );

    // 2. Steady publishing.
    const publishStart = Date.now();
    const publishEnd = publishStart + config.duration * 1000;
    let publishErrors = 0;
    let warmedUp = false;
    await new Promise<void>((resolve) => {
      const tick = (): void => {
        const now = Date.now();
        const due = Math.floor(((Math.min(now, publishEnd) - publishStart) / 1000) * config.rate);
        const events = [];
        for (; published < due; published++) {
          events.push({
            identity: 'soak',
            type: 'tick',
            entity: { seq: published, sentAt: Date.now(), pad: 'p'.repeat(config.pad) },
          });
        }
        if (events.length > 0) {
          push.publish(...events).catch(() => {
            publishErrors++;
          });
        }
        if (!warmedUp && now - publishStart >= config.warmup * 1000) {
          warmedUp = true;
          gc();
          heapAfterWarmupMB = process.memoryUsage().heapUsed / MB;
          log(`warm-up over: heap after GC ${heapAfterWarmupMB.toFixed(1)} MB`);
        }
        if (now >= publishEnd) {
          clearInterval(publisher);
          resolve();
        }
      };
      const publisher = setInterval(tick, 20);
    });
    log(`published ${published} events in ${config.duration} s (${publishErrors} publish errors)`);
    check('no publish failed', publishErrors === 0, `${publishErrors} errors`);
    const open = push.sessions();
    const fastOpen = open.filter((s) => s.parameters('slow').length === 0).length;
    const slowOpen = open.filter((s) => s.parameters('slow').length > 0);
    slowSessions = {
      expected: Math.ceil(config.sessions / config.slowEvery),
      stillOpen: slowOpen.length,
      droppedEvents: slowOpen.reduce((n, s) => n + s.droppedEvents, 0),
      closedByCode: push.stats().sessionsClosed,
    };
    log(`slow sessions: ${JSON.stringify(slowSessions)}`);
    check(
      'no fast session was closed during the run',
      fastOpen === connectedFast,
      `${fastOpen}/${connectedFast} fast sessions open; closed so far by code ${JSON.stringify(push.stats().sessionsClosed)}`,
    );

    // 3. Every fast client got every event.
    child.send({ cmd: 'expect', total: published, timeoutMs: 60_000 } satisfies ToClients);
    report = (await nextMessage(child, 'report', 90_000)).report;
    log(`clients: ${JSON.stringify(report)}`);
    check(
      'every fast client received every event, in order',
      report.complete === report.fast && report.fast > 0,
      `${report.complete}/${report.fast} complete${report.incomplete.length ? `; e.g. ${JSON.stringify(report.incomplete)}` : ''}`,
    );
    gc();
    heapAtEndMB = process.memoryUsage().heapUsed / MB;

    // 4. Memory flat after warm-up.
    const heapGrowth = heapAtEndMB - heapAfterWarmupMB;
    const heapLimit = Math.max(32, heapAfterWarmupMB * 0.5);
    check(
      'heap flat after warm-up (after GC)',
      heapGrowth < heapLimit,
      `${heapAfterWarmupMB.toFixed(1)} MB → ${heapAtEndMB.toFixed(1)} MB (growth ${heapGrowth.toFixed(1)} MB, limit ${heapLimit.toFixed(1)} MB)`,
    );
    const steady = samples.filter(
      (s) =>
        s.t * 1000 >= publishStart - started + config.warmup * 1000 &&
        s.t * 1000 <= publishEnd - started,
    );
    const window = Math.max(1, Math.min(10, Math.floor(steady.length / 4)));
    const rssEarly = median(steady.slice(0, window).map((s) => s.rssMB));
    const rssLate = median(steady.slice(-window).map((s) => s.rssMB));
    const rssLimit = Math.max(64, rssEarly * 0.5);
    check(
      'RSS flat after warm-up',
      steady.length >= 2 && rssLate - rssEarly < rssLimit,
      `median of the first ${window} steady samples ${rssEarly} MB, of the last ${window} ${rssLate} MB (limit +${rssLimit.toFixed(0)} MB)`,
    );

    // 5. No leak once every session closed.
    child.send({ cmd: 'close' } satisfies ToClients);
    await nextMessage(child, 'closed', 120_000);
    log('the clients closed their sessions');
    await waitUntil(() => push.stats().sessionsOpen === 0, 60_000, 'sessions still registered');
    if (child.exitCode === null) {
      // A timer of this check must not itself show up as a leftover handle: cleared either way.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        once(child, 'exit'),
        new Promise((resolve) => (timer = setTimeout(resolve, 10_000))),
      ]);
      clearTimeout(timer);
    }
    log('every session closed');
    // Sockets finish closing asynchronously: give handles a bounded time to go.
    let leaked: Record<string, number> = {};
    const deadline = Date.now() + 15_000;
    for (;;) {
      gc();
      leaked = grown(resourcesBefore, resources());
      if (Object.keys(leaked).length > 0)
        log(`waiting for handles to close: ${JSON.stringify(leaked)}`);
      // Only growth counts: the client process and its IPC pipe were in the baseline and are gone.
      if (Object.keys(leaked).length === 0 || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    check(
      'no handle left after every session closed',
      Object.keys(leaked).length === 0,
      `before ${JSON.stringify(resourcesBefore)}, now ${JSON.stringify(resources())}`,
    );
    const serverListenersGrown = grown(serverListenersBefore, listeners(server));
    const wssListenersGrown = grown(
      wssListenersBefore,
      listeners(ews.getWss() as unknown as NodeJS.EventEmitter),
    );
    check(
      'no listener left on the HTTP and WebSocket servers',
      Object.keys(serverListenersGrown).length === 0 && Object.keys(wssListenersGrown).length === 0,
      `server ${JSON.stringify(listeners(server))}, grown ${JSON.stringify({ ...serverListenersGrown, ...wssListenersGrown })}`,
    );
    check(
      'no session left in the registry',
      push.sessions().length === 0,
      `${push.sessions().length}`,
    );
  } catch (error) {
    check('the soak ran to the end', false, (error as Error).message);
  } finally {
    clearInterval(sampler);
    loopDelay.disable();
    if (child.exitCode === null) child.kill();
  }

  // Fan-out duration from the metrics plugin, as Prometheus would see it.
  const histogram = (await registry.getMetricsAsJSON()).find(
    (m) => m.name === 'pushwire_dispatch_duration_seconds',
  );
  const buckets = (histogram?.values ?? []).filter((v) =>
    (v as { metricName?: string }).metricName?.endsWith('_bucket'),
  );
  const count = buckets.at(-1)?.value ?? 0;
  const quantile = (q: number): string => {
    const hit = buckets.find((b) => b.value >= q * count);
    return hit === undefined ? 'n/a' : `≤ ${String(hit.labels.le)} s`;
  };
  const fanOut = { events: count, p50: quantile(0.5), p99: quantile(0.99) };
  metrics.unregister();
  await push.close();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));

  // The curve.
  const every = Math.max(1, Math.ceil(samples.length / 30));
  console.log('\n  t(s)  rss(MB)  heap(MB)  sessions  deliveries/s  dropped  loop p99(ms)');
  for (let i = 0; i < samples.length; i += every) {
    const s = samples[i]!;
    const prev = samples[i - 1];
    const rate =
      prev === undefined ? 0 : (s.deliveries - prev.deliveries) / Math.max(0.001, s.t - prev.t);
    console.log(
      `${s.t.toFixed(0).padStart(6)} ${s.rssMB.toFixed(1).padStart(8)} ${s.heapUsedMB.toFixed(1).padStart(9)} ${String(s.sessions).padStart(9)} ${rate.toFixed(0).padStart(13)} ${String(s.dropped).padStart(8)} ${s.eventLoopP99ms.toFixed(1).padStart(13)}`,
    );
  }
  const rssValues = samples.map((s) => s.rssMB);
  const heapValues = samples.map((s) => s.heapUsedMB);
  console.log(
    `\n  rss  ${sparkline(rssValues)}  ${Math.min(...rssValues)}–${Math.max(...rssValues)} MB`,
  );
  console.log(
    `  heap ${sparkline(heapValues)}  ${Math.min(...heapValues)}–${Math.max(...heapValues)} MB (before GC)`,
  );
  console.log(
    `  fan-out duration (pushwire_dispatch_duration_seconds): ${JSON.stringify(fanOut)}\n`,
  );

  const passed = checks.every((c) => c.ok);
  const out = join(
    dirname(fileURLToPath(import.meta.url)),
    '..',
    '..',
    'test-results',
    'soak.json',
  );
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(
    out,
    JSON.stringify(
      {
        passed,
        config,
        published,
        heapAfterWarmupMB: round(heapAfterWarmupMB),
        heapAtEndMB: round(heapAtEndMB),
        clients: report,
        slowSessions,
        fanOut,
        finalStats: push.stats(),
        checks,
        samples,
      },
      null,
      2,
    ),
  );
  log(
    `${passed ? 'PASSED' : 'FAILED'} (${checks.filter((c) => !c.ok).length} failed checks); curve in ${out}`,
  );
  return passed;
}

// ---------------------------------------------------------------------------

const config = readConfig(process.argv.slice(2));
if (config.role === 'clients' && process.send !== undefined) {
  await runClients();
} else {
  const passed = await runServer(config).catch((error: unknown) => {
    console.error(error);
    return false;
  });
  process.exit(passed ? 0 : 1);
}
