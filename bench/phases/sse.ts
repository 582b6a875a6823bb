/**
 * Server-Sent Events against the WebSocket path (issue 16), in one run: the
 * same pushwire server (LocalPubSub, JSON) at maximum load with every
 * session reading an event stream, then every session on a WebSocket,
 * interleaved; delivered rate, server CPU per delivery and idle memory per
 * session of each, as ratios SSE over WebSocket.
 */
import { inRepOrder, pick, type Bench, type Setup, type ThroughputSample } from '../measurement.js';
import { summarize, type BenchResults } from '../report.js';

/** Runs the phase and stores its figures in `results.sse`; failures go to `bench.failures`. */
export async function ssePhase(bench: Bench, results: BenchResults): Promise<void> {
  const { options } = bench;
  const sessions = options.sseSessions;
  console.log(`Server-Sent Events against WebSocket JSON, pushwire, ${sessions} sessions:`);
  const samples = { websocket: [] as ThroughputSample[], sse: [] as ThroughputSample[] };
  const pairRates: number[] = [];
  const pairCpus: number[] = [];
  for (let rep = 0; rep < options.reps; rep++) {
    const pair: { websocket?: ThroughputSample; sse?: ThroughputSample } = {};
    for (const transport of inRepOrder(['websocket', 'sse'] as const, rep)) {
      const setup: Setup = {
        mode: transport === 'sse' ? 'pushwire-sse' : 'pushwire-json',
        sessions,
        variant: 'none',
        slow: 0,
        memory: true,
      };
      const sample = await bench.safely(setup, () => bench.throughput(setup, options.durationS));
      if (sample === undefined) continue;
      samples[transport].push(sample);
      pair[transport] = sample;
    }
    if (pair.sse !== undefined && pair.websocket !== undefined) {
      pairRates.push(pair.sse.deliveriesPerSec / pair.websocket.deliveriesPerSec);
      pairCpus.push(pair.sse.cpuUsPerDelivery / pair.websocket.cpuUsPerDelivery);
    }
  }
  const figures = (list: ThroughputSample[]) => ({
    deliveriesPerSec: pick(list, 'deliveriesPerSec'),
    cpuUsPerDelivery: pick(list, 'cpuUsPerDelivery'),
    memoryPerSessionKiB: pick(list, 'memoryPerSessionKiB'),
    heapPerSessionKiB: pick(list, 'heapPerSessionKiB'),
  });
  const websocket = figures(samples.websocket);
  const sse = figures(samples.sse);
  results.sse = {
    sessions,
    websocket,
    sse,
    rateRatio: sse.deliveriesPerSec.median / websocket.deliveriesPerSec.median,
    cpuRatio: sse.cpuUsPerDelivery.median / websocket.cpuUsPerDelivery.median,
    memoryRatio: sse.memoryPerSessionKiB.median / websocket.memoryPerSessionKiB.median,
    pairRateRatios: summarize(pairRates),
    pairCpuRatios: summarize(pairCpus),
  };
}
