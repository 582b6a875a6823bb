/**
 * What JetStream history costs the NATS backend, at the pub/sub level (no
 * sessions): the same client code with `history` off (core NATS publish,
 * core subscription) and on (JetStream publish, ordered-consumer follow).
 *
 *   npm run bench:history-nats                   # 2,000 events at 1,000/s, 20,000 back to back
 *   tsx bench/history-nats.ts --events 5000 --rate 2000 --burst 50000
 *   NATS_URL=nats://… tsx bench/history-nats.ts  # a nats-server -js of your own
 *
 * Per mode, one publisher client and one receiving client (two connections,
 * as two servers of a fleet):
 * - `publish()` latency: how long a publish takes to resolve, at `--rate`
 *   events/s (core: written to the socket buffer; history: JetStream's
 *   acknowledgement, one round trip to a file store);
 * - publish-to-receive latency: publish call to the handler of the other
 *   client (`subscribe` off, `follow` on);
 * - burst: `--burst` events published back to back (100 in flight), until
 *   the receiver has them all: events/s.
 * Reported, not asserted. The broker is a `nats-server -js` on a free port
 * with its store in a temporary directory, unless NATS_URL is set.
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { NatsPubSub } from '../lib/pubsub/nats.js';
import { startNats, type Broker } from '../test/helpers/brokers.js';

const { values } = parseArgs({
  options: {
    events: { type: 'string', default: '2000' },
    rate: { type: 'string', default: '1000' },
    burst: { type: 'string', default: '20000' },
  },
});
const EVENTS = Number(values.events);
const RATE = Number(values.rate);
const BURST = Number(values.burst);
const PAYLOAD = new Uint8Array(200).fill(120);

interface Result {
  mode: string;
  publishP50: number;
  publishP99: number;
  receiveP50: number;
  receiveP99: number;
  burstPerSecond: number;
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

async function measure(url: string, history: boolean, topic: string): Promise<Result> {
  const options = { servers: url, ...(history ? { history: { maxEvents: 100_000 } } : {}) };
  const publisher = new NatsPubSub(options);
  const receiver = new NatsPubSub(options);
  await Promise.all([publisher.connect(), receiver.connect()]);
  const sentAt = new Map<number, number>();
  const received: number[] = [];
  let count = 0;
  let onCount: (() => void) | undefined;
  const handler = (payload: Uint8Array): void => {
    const id = new DataView(payload.buffer, payload.byteOffset).getUint32(0);
    const sent = sentAt.get(id);
    if (sent !== undefined) received.push(performance.now() - sent);
    count++;
    onCount?.();
  };
  if (history) {
    await receiver.history?.follow(topic, (payload) => handler(payload));
    // The publisher knows the topic (its stream), as a server that follows it does.
    await publisher.history?.read(topic, '', 1);
  } else {
    await receiver.subscribe(topic, handler);
  }
  const payloadOf = (id: number): Uint8Array => {
    const bytes = PAYLOAD.slice();
    new DataView(bytes.buffer).setUint32(0, id);
    return bytes;
  };

  const publishTimes: number[] = [];
  const interval = 1000 / RATE;
  const start = performance.now();
  for (let id = 0; id < EVENTS; id++) {
    const due = start + id * interval;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    const t = performance.now();
    sentAt.set(id, t);
    await publisher.publish(topic, payloadOf(id));
    publishTimes.push(performance.now() - t);
  }
  await until(() => count >= EVENTS);

  sentAt.clear();
  count = 0;
  const burstStart = performance.now();
  for (let id = 0; id < BURST; id += 100) {
    const batch: Promise<void>[] = [];
    for (let k = id; k < Math.min(BURST, id + 100); k++) {
      batch.push(publisher.publish(topic, payloadOf(EVENTS + k)));
    }
    await Promise.all(batch);
  }
  await until(() => count >= BURST);
  const burstSeconds = (performance.now() - burstStart) / 1000;

  await Promise.all([publisher.disconnect(), receiver.disconnect()]);
  publishTimes.sort((a, b) => a - b);
  received.sort((a, b) => a - b);
  return {
    mode: history ? 'history (JetStream)' : 'core NATS',
    publishP50: quantile(publishTimes, 0.5),
    publishP99: quantile(publishTimes, 0.99),
    receiveP50: quantile(received, 0.5),
    receiveP99: quantile(received, 0.99),
    burstPerSecond: BURST / burstSeconds,
  };

  function until(done: () => boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${count} events arrived`)), 60_000);
      onCount = () => {
        if (!done()) return;
        clearTimeout(timer);
        onCount = undefined;
        resolve();
      };
      onCount();
    });
  }
}

let broker: Broker | undefined;
const url = process.env.NATS_URL ?? (broker = await startNats({ jetstream: true })).url;
try {
  const stamp = Date.now().toString(36);
  const results = [
    await measure(url, false, `bench_core_${stamp}`),
    await measure(url, true, `bench_hist_${stamp}`),
  ];
  const ms = (value: number): string => value.toFixed(3);
  console.log(`${EVENTS} events at ${RATE}/s, burst of ${BURST}, 200-byte payloads`);
  console.log('mode                 publish p50/p99 ms   receive p50/p99 ms   burst events/s');
  for (const r of results) {
    console.log(
      `${r.mode.padEnd(20)} ${`${ms(r.publishP50)} / ${ms(r.publishP99)}`.padEnd(20)} ${`${ms(r.receiveP50)} / ${ms(r.receiveP99)}`.padEnd(20)} ${Math.round(r.burstPerSecond)}`,
    );
  }
} finally {
  await broker?.stop();
}
