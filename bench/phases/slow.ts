/**
 * The slow-consumer phase: 1% of the sessions never read; the others' rate
 * against a run without them, and the server's RSS over time (it must stay
 * flat: the outbound buffer is bounded).
 */
import type { Mode } from '../common.js';
import { inRepOrder, pick, type Bench, type Setup, type ThroughputSample } from '../measurement.js';
import { summarize, type BenchResults, type SlowFigures, type Summary } from '../report.js';

/** Runs the phase and stores its figures in `results.slow`. */
export async function slowPhase(bench: Bench, results: BenchResults): Promise<void> {
  const { options } = bench;
  const sessions = options.workSessions;
  const slow = Math.max(1, Math.ceil(sessions * 0.01));
  console.log(`Slow consumers: ${slow} of ${sessions} sessions never read:`);
  const samples = new Map<Mode, ThroughputSample[]>();
  // pushwire's target is a ratio: its baseline is measured here, next to each slow run,
  // not taken from the throughput phase (minutes earlier, under other neighbours).
  const baselines = new Map<Mode, ThroughputSample[]>();
  for (let rep = 0; rep < options.reps; rep++) {
    for (const mode of inRepOrder(options.modes, rep)) {
      if (mode.startsWith('pushwire')) {
        const normal: Setup = { mode, sessions, variant: 'none', slow: 0, memory: false };
        const base = await bench.safely(normal, () =>
          bench.throughput(normal, options.slowDurationS),
        );
        if (base !== undefined) baselines.set(mode, [...(baselines.get(mode) ?? []), base]);
      }
      const setup: Setup = { mode, sessions, variant: 'none', slow, memory: false };
      const sample = await bench.safely(setup, () =>
        bench.throughput(setup, options.slowDurationS),
      );
      if (sample === undefined) continue;
      samples.set(mode, [...(samples.get(mode) ?? []), sample]);
    }
  }
  const modes: Partial<Record<Mode, SlowFigures>> = {};
  for (const [mode, s] of samples) {
    const others = pick(s, 'eventsPerSecPerSession');
    const paired = baselines.get(mode);
    const baseline =
      paired !== undefined && paired.length > 0
        ? pick(paired, 'eventsPerSecPerSession').median
        : (results.throughput[String(sessions)]?.[mode]?.eventsPerSecPerSession.median ?? NaN);
    const mib = (f: (series: Array<[number, number]>) => number): Summary =>
      summarize(s.map((x) => f(x.rss)));
    const at = (series: Array<[number, number]>, t: number): number => {
      let value = NaN;
      for (const [time, v] of series) if (time <= t) value = v;
      return value;
    };
    modes[mode] = {
      othersEventsPerSecPerSession: others,
      othersDeliveriesPerSec: pick(s, 'deliveriesPerSec'),
      ratioToBaseline: others.median / baseline,
      baseline: paired !== undefined && paired.length > 0 ? 'paired' : 'throughput phase',
      rssStartMiB: summarize(s.map((x) => at(x.rss, x.rssWindowStartS))),
      rssEndMiB: mib((series) => series[series.length - 1]?.[1] ?? NaN),
      rssMaxMiB: mib((series) => Math.max(...series.map(([, v]) => v))),
      rssGrowthSecondHalfMiB: summarize(
        s.map((x) => {
          const end = x.rss[x.rss.length - 1];
          if (end === undefined) return NaN;
          const start = x.rssWindowStartS;
          return end[1] - at(x.rss, start + (end[0] - start) / 2);
        }),
      ),
      dropped: pick(s, 'dropped'),
      rssSeries: s[0]?.rss ?? [],
    };
  }
  results.slow = { sessions, slowSessions: slow, modes };
}
