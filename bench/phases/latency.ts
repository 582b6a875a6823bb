/**
 * The latency phase: every mode at a fixed load, half the raw loop's limit
 * measured by the throughput phase of the same run; per-delivery and
 * last-session percentiles.
 */
import type { Mode } from '../common.js';
import { inRepOrder, pick, type Bench, type LatencySample, type Setup } from '../measurement.js';
import type { BenchResults, LatencyFigures } from '../report.js';

/**
 * Runs the phase and stores its figures in `results.latency`; without a
 * throughput figure to halve it falls back to 200 events/s.
 */
export async function latencyPhase(bench: Bench, results: BenchResults): Promise<void> {
  const { options } = bench;
  for (const sessions of options.sessions) {
    // Half of the raw limit measured earlier in this run (or of the fastest mode measured).
    const raw = results.throughput[String(sessions)]?.raw?.eventsPerSecPerSession.median;
    const fallback = Math.max(
      ...Object.values(results.throughput[String(sessions)] ?? {}).map(
        (f) => f?.eventsPerSecPerSession.median ?? 0,
      ),
      0,
    );
    const limit = raw !== undefined && raw > 0 ? raw : fallback > 0 ? fallback : 200;
    const rate = Math.max(1, Math.round(limit / 2));
    console.log(
      `Latency at ${rate} events/s (half the raw limit) in bursts of ${options.batch}, ${sessions} sessions:`,
    );
    const samples = new Map<Mode, LatencySample[]>();
    for (let rep = 0; rep < options.reps; rep++) {
      for (const mode of inRepOrder(options.modes, rep)) {
        const setup: Setup = { mode, sessions, variant: 'none', slow: 0, memory: false };
        const sample = await bench.safely(setup, () => bench.latency(setup, rate));
        if (sample === undefined) continue;
        samples.set(mode, [...(samples.get(mode) ?? []), sample]);
      }
    }
    const modes: Partial<Record<Mode, LatencyFigures>> = {};
    for (const [mode, s] of samples) {
      modes[mode] = {
        p50: pick(s, 'p50'),
        p99: pick(s, 'p99'),
        lastP50: pick(s, 'lastP50'),
        lastP99: pick(s, 'lastP99'),
        achievedRate: pick(s, 'achievedRate'),
        incompleteEvents: pick(s, 'incompleteEvents'),
        clientCpuPctMax: pick(s, 'clientCpuPctMax'),
        serverCpuPct: pick(s, 'serverCpuPct'),
        otherCpuPct: pick(s, 'otherCpuPct'),
      };
    }
    results.latency[String(sessions)] = { rateEventsPerSec: rate, modes };
  }
}
