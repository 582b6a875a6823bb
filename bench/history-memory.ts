/**
 * The memory of LocalPubSub's in-memory history (issue 14): the heap and
 * ArrayBuffer bytes retained per 10,000 stored events of 200-byte
 * payloads, measured after full collections, and that publishing three
 * times more does not grow it (the ring is bounded by maxEvents).
 *
 *   node --import tsx bench/history-memory.ts [events] [payloadBytes]
 */
import { randomBytes } from 'node:crypto';
import { LocalPubSub } from '../lib/pubsub/local.js';
import { gc } from '../test/helpers/heap.js';

const events = Number(process.argv[2] ?? 10_000);
const size = Number(process.argv[3] ?? 200);

/** Heap plus ArrayBuffer backing stores, after full collections. */
async function retained(): Promise<number> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  gc();
  gc();
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}

const payloads = Array.from({ length: 64 }, () => randomBytes(size));
const bus = new LocalPubSub({ history: { maxEvents: events } });
await bus.connect();
const publish = async (count: number): Promise<void> => {
  for (let i = 0; i < count; i++) {
    await bus.publish('events.task.create', payloads[i % payloads.length] ?? new Uint8Array(size));
  }
};
await publish(100); // the ring, the maps and the code paths exist before the baseline
const base = await retained();
await publish(events);
const full = await retained();
await publish(events * 3);
const after = await retained();
const perEvent = (full - base) / events;
console.log(
  JSON.stringify({
    events,
    payloadBytes: size,
    retainedMB: +((full - base) / 1048576).toFixed(2),
    bytesPerEvent: Math.round(perEvent),
    overheadPerEvent: Math.round(perEvent - size),
    afterThreeTimesMoreMB: +((after - base) / 1048576).toFixed(2),
    stored: bus.history?.size('events'),
  }),
);
await bus.disconnect();
