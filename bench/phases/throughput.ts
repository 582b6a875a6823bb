/**
 * The throughput phase: every mode at maximum load, at every session count,
 * interleaved; delivered rate, CPU per delivery, and idle memory per session
 * at the largest count. Its rates also set the latency phase's load.
 */
import type { Mode } from '../common.js';
import { inRepOrder, pick, type Bench, type Setup, type ThroughputSample } from '../measurement.js';
import type { BenchResults, ThroughputFigures } from '../report.js';

/** Runs the phase and stores its figures in `results.throughput`; failures go to `bench.failures`. */
export async function throughputPhase(bench: Bench, results: BenchResults): Promise<void> {
  const { options } = bench;
  const throughputSamples = new Map<string, ThroughputSample[]>();
  const key = (mode: Mode, sessions: number): string => `${mode}@${sessions}`;
  const largest = Math.max(...options.sessions);

  for (const sessions of options.sessions) {
    console.log(`Throughput at maximum load, ${sessions} sessions:`);
    for (let rep = 0; rep < options.reps; rep++) {
      for (const mode of inRepOrder(options.modes, rep)) {
        const setup: Setup = {
          mode,
          sessions,
          variant: 'none',
          slow: 0,
          memory: sessions === largest,
        };
        const sample = await bench.safely(setup, () => bench.throughput(setup, options.durationS));
        if (sample === undefined) continue;
        const k = key(mode, sessions);
        throughputSamples.set(k, [...(throughputSamples.get(k) ?? []), sample]);
      }
    }
    const figures: Partial<Record<Mode, ThroughputFigures>> = {};
    for (const mode of options.modes) {
      const samples = throughputSamples.get(key(mode, sessions)) ?? [];
      figures[mode] = {
        deliveriesPerSec: pick(samples, 'deliveriesPerSec'),
        eventsPerSecPerSession: pick(samples, 'eventsPerSecPerSession'),
        cpuUsPerDelivery: pick(samples, 'cpuUsPerDelivery'),
        systemUsPerDelivery: pick(samples, 'systemUsPerDelivery'),
        serverCpuPct: pick(samples, 'serverCpuPct'),
        clientCpuPctMax: pick(samples, 'clientCpuPctMax'),
        machineCpuPct: pick(samples, 'machineCpuPct'),
        otherCpuPct: pick(samples, 'otherCpuPct'),
        dropped: pick(samples, 'dropped'),
        ...(sessions === largest
          ? {
              memoryPerSessionKiB: pick(samples, 'memoryPerSessionKiB'),
              heapPerSessionKiB: pick(samples, 'heapPerSessionKiB'),
            }
          : {}),
      };
    }
    results.throughput[String(sessions)] = figures;
  }
}
