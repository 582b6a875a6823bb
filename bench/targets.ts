/**
 * The targets of issue 7 (and issue 8's filter target), checked on the
 * medians of a run. Reported, never asserted: a missed target is a row of
 * the report, not a failed run. Apart from the report's formatting because
 * `--render` re-checks them on an old latest.json.
 */
import { MODE_LABELS, type Mode } from './common.js';
import type { BenchResults, TargetCheck } from './report.js';

/** Issue 7's targets (and issue 8's filter target), on medians of this run. */
export function evaluateTargets(results: BenchResults): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const ratio = (a: number | undefined, b: number | undefined): number =>
    a !== undefined && b !== undefined && b > 0 ? a / b : NaN;
  const pushModes: Mode[] = ['pushwire-json', 'pushwire-msgpack'];
  for (const [sessions, t] of Object.entries(results.throughput)) {
    for (const mode of pushModes) {
      const rate = t[mode]?.deliveriesPerSec.median;
      const vsRaw = ratio(rate, t.raw?.deliveriesPerSec.median);
      if (Number.isFinite(vsRaw)) {
        checks.push({
          name: `${MODE_LABELS[mode]} delivered/s vs raw, ${sessions} sessions`,
          measured: `${vsRaw.toFixed(2)}×`,
          target: '≥ 0.8×',
          met: vsRaw >= 0.8,
        });
      }
      const vsIo = ratio(rate, t.socketio?.deliveriesPerSec.median);
      if (Number.isFinite(vsIo)) {
        checks.push({
          name: `${MODE_LABELS[mode]} delivered/s vs socket.io, ${sessions} sessions`,
          measured: `${vsIo.toFixed(2)}×`,
          target: '≥ 5×',
          met: vsIo >= 5,
        });
      }
      const mem = t[mode]?.memoryPerSessionKiB?.median;
      const memRaw = ratio(mem, t.raw?.memoryPerSessionKiB?.median);
      if (Number.isFinite(memRaw)) {
        checks.push({
          name: `${MODE_LABELS[mode]} idle memory/session vs raw, ${sessions} sessions`,
          measured: `${memRaw.toFixed(2)}×`,
          target: '≤ 1.5×',
          met: memRaw <= 1.5,
        });
      }
      const memIo = ratio(mem, t.socketio?.memoryPerSessionKiB?.median);
      if (Number.isFinite(memIo)) {
        checks.push({
          name: `${MODE_LABELS[mode]} idle memory/session vs socket.io, ${sessions} sessions`,
          measured: `${memIo.toFixed(2)}×`,
          target: '≤ 0.75×',
          met: memIo <= 0.75,
        });
      }
    }
  }
  for (const [sessions, l] of Object.entries(results.latency)) {
    for (const mode of pushModes) {
      for (const [label, field] of [
        ['per delivery', 'p99'],
        ['last session', 'lastP99'],
      ] as const) {
        const p = l.modes[mode]?.[field].median;
        const raw = l.modes.raw?.[field].median;
        if (p === undefined || raw === undefined || !Number.isFinite(p) || !Number.isFinite(raw))
          continue;
        checks.push({
          name: `${MODE_LABELS[mode]} p99 ${label} vs raw, ${sessions} sessions`,
          measured: `${p.toFixed(2)} ms vs ${raw.toFixed(2)} ms (${p >= raw ? '+' : ''}${(p - raw).toFixed(2)})`,
          target: '≤ raw + 5 ms',
          met: p - raw <= 5,
        });
      }
    }
  }
  const work = results.work;
  if (work !== undefined) {
    for (const variant of ['config', 'dispatch', 'config+dispatch'] as const) {
      const r = work.variants[variant]?.ratio;
      if (r === undefined) continue;
      checks.push({
        name: `per-session work: ${variant} vs none`,
        measured: `${r.toFixed(2)}×`,
        target: '≥ 0.9× (≤ 10% cost)',
        met: r >= 0.9,
      });
    }
    const t = work.variants['tracing-unsampled']?.ratio;
    if (t !== undefined) {
      checks.push({
        name: 'tracing plugin, unsampled, vs none (issue 4)',
        measured: `${t.toFixed(2)}×`,
        target: '≥ 0.95×',
        met: t >= 0.95,
      });
    }
    const f = work.variants.filter?.ratio;
    if (f !== undefined) {
      checks.push({
        name: 'filter (issue 8) vs no filter',
        measured: `${f.toFixed(2)}×`,
        target: '≥ 0.8×',
        met: f >= 0.8,
      });
    }
  }
  const history = results.history;
  if (history !== undefined) {
    checks.push({
      name: `history on vs off, fan-out at ${history.sessions} sessions (issue 14)`,
      measured: `${history.rateRatio.toFixed(2)}×`,
      target: '≥ 0.9×',
      met: history.rateRatio >= 0.9,
    });
  }
  const slow = results.slow;
  if (slow !== undefined) {
    for (const mode of pushModes) {
      const f = slow.modes[mode];
      if (f === undefined) continue;
      checks.push({
        name: `${MODE_LABELS[mode]}: others' rate with 1% slow consumers`,
        measured: `${f.ratioToBaseline.toFixed(2)}×`,
        target: '≥ 0.9×',
        met: f.ratioToBaseline >= 0.9,
      });
      const growth = f.rssGrowthSecondHalfMiB.median;
      checks.push({
        name: `${MODE_LABELS[mode]}: RSS bounded with slow consumers`,
        measured: `+${growth.toFixed(1)} MiB in the 2nd half, max ${f.rssMaxMiB.median.toFixed(0)} MiB`,
        target: 'flat (< 4 MiB growth)',
        met: growth < 4,
      });
    }
  }
  return checks;
}
