/**
 * The per-session work phase: pushwire JSON at maximum load with each
 * per-session cost (a push config, a dispatch plugin, a filter, tracing)
 * against none, as ratios of delivered rate.
 */
import { VARIANTS, type Variant } from '../common.js';
import { inRepOrder, pick, type Bench, type Setup, type ThroughputSample } from '../measurement.js';
import type { BenchResults, WorkFigures } from '../report.js';

/** Runs the phase and stores its figures in `results.work`. */
export async function workPhase(bench: Bench, results: BenchResults): Promise<void> {
  const { options } = bench;
  const sessions = options.workSessions;
  console.log(`Per-session work, pushwire JSON, ${sessions} sessions:`);
  const samples = new Map<Variant, ThroughputSample[]>();
  for (let rep = 0; rep < options.reps; rep++) {
    for (const variant of inRepOrder(VARIANTS, rep)) {
      const setup: Setup = { mode: 'pushwire-json', sessions, variant, slow: 0, memory: false };
      const sample = await bench.safely(setup, () => bench.throughput(setup, options.durationS));
      if (sample === undefined) continue;
      samples.set(variant, [...(samples.get(variant) ?? []), sample]);
    }
  }
  const base = pick(samples.get('none') ?? [], 'deliveriesPerSec').median;
  const variants: Partial<Record<Variant, WorkFigures>> = {};
  for (const [variant, s] of samples) {
    const rate = pick(s, 'deliveriesPerSec');
    variants[variant] = {
      deliveriesPerSec: rate,
      cpuUsPerDelivery: pick(s, 'cpuUsPerDelivery'),
      clientCpuPctMax: pick(s, 'clientCpuPctMax'),
      ratio: rate.median / base,
    };
  }
  results.work = { sessions, variants };
}
