/**
 * The storm's results: their shape, the Markdown tables and the SVG plot
 * (session count, connection rate and event-loop delay over time), written
 * by bench/storm.ts beside each other.
 */
import { hasHistory, type LoadVerification, type StormBackend } from './common.js';

/** One scenario: the server or the broker killed and restarted under every session. */
export interface ScenarioResult {
  scenario: 'server' | 'broker';
  /** From the SIGKILL to the restarted process accepting connections, in ms. */
  downMs: number;
  /** From the SIGKILL to the first server sample with every session open and configured (server scenario). */
  backMs: number;
  /** From the SIGKILL until every client reopened (and, with history, got recovered: true). */
  recoveredMs: number;
  /** From the SIGKILL until every client received an event published after the restart. */
  caughtUpMs: number;
  /** The most handshakes completed in any 1 s window after the restart. */
  peakAcceptsPerSecond: number;
  /** The same over 100 ms samples, as a per-second rate. */
  peakAcceptsPer100ms: number;
  loopDelayMaxMs: number;
  /** The 99th percentile of the per-sample (100 ms) longest delays. */
  loopDelayP99Ms: number;
  peakRssMiB: number;
  peakHeapMiB: number;
  /** The fewest sessions open in any sample after the restart. */
  minSessions: number;
  /** Attempts refused with 429 by connectionRateLimitPlugin (the restarted server's counter). */
  refused429: number;
  /** Refusals the clients saw, by status. */
  refusedByClients: Record<string, number>;
  /** Reconnect attempts the clients scheduled. */
  retries: number;
  /** Publishes that failed (and were retried) since the run began. */
  publishFailures: number;
  /** Cores of the machine, how many were busy on average, and how many by processes not ours. */
  cpu: { cores: number; machineBusyCores: number; othersCores: number };
  /** Timestamps (Date.now): the scenario's start, the kill, the restart. */
  t0: number;
  tDown: number;
  tUp: number;
}

/** Everything a run writes to storm.json. */
export interface StormResults {
  date: string;
  command: string;
  options: {
    sessions: number;
    loadgens: number;
    workers: number;
    scheduling: string;
    backend: string;
    rateLimit: { maxAttempts: number; intervalMs: number } | null;
    clientsPerAddress: number;
    downMs: number;
    publishRate: number;
    minDelay: number;
    maxDelay: number;
    /** The server's listen backlog; absent in runs before it was set (Node's default, 511). */
    backlog?: number;
  };
  /** `cpuAccounting` 2: the CPU of cluster workers and of a killed process is counted as ours. */
  machine: { loadavgAtStart: number[]; cpuAccounting?: number };
  scenarios: ScenarioResult[];
  /** The load generators' verifications summed, after the last event `lastSeq`. */
  verification?: LoadVerification & { lastSeq: number };
  crashes: string[];
  /** Why the run stopped early, if it did. */
  failure?: string;
  timeline?: {
    server: Array<{
      t: number;
      sessions: number;
      configured: number;
      accepted: number;
      loopDelayMax: number;
    }>;
    clients: Array<{ t: number; open: number; reopened: number; recovered: number }>;
  };
}

/**
 * What makes a run fail, one line each; none when it passed. With history every reconnection
 * resumes with `since`, so an event missing, twice, of an identity its push config excludes, or a
 * recovered: false is a defect; without history a reconnection starts afresh and only a crash or
 * an unfinished run counts.
 */
export function stormDefects(r: StormResults): string[] {
  const defects: string[] = [];
  if (r.failure !== undefined) defects.push(`the run stopped early: ${r.failure}`);
  if (r.crashes.length > 0) defects.push(`the server crashed: ${r.crashes.join('; ')}`);
  const v = r.verification;
  if (v === undefined) {
    if (r.failure === undefined) defects.push('no verification');
    return defects;
  }
  if (!hasHistory(r.options.backend as StormBackend)) return defects;
  if (v.missing > 0) defects.push(`${v.missing} events missing`);
  if (v.duplicates > 0) defects.push(`${v.duplicates} events received twice or out of order`);
  if (v.excluded > 0) {
    defects.push(
      `${v.excluded} events of an excluded identity after a reconnection: resumed sessions received (part of) their replay without their push config applied`,
    );
  }
  if (v.recoveriesFalse > 0)
    defects.push(`${v.recoveriesFalse} recovery frames said recovered: false`);
  return defects;
}

const s = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

/** The Markdown report: one table per scenario, the verification, the run's conditions. */
export function stormMarkdown(r: StormResults, svgName = 'storm.svg'): string {
  const o = r.options;
  const lines = [
    `# Reconnect storm: ${o.sessions.toLocaleString('en')} sessions, ${o.backend}`,
    '',
    `\`${r.command}\` — ${r.date}; ${o.workers === 1 ? 'one server process' : `${o.workers} server processes (node:cluster, one port, scheduling ${o.scheduling})`}, ${o.loadgens} load generators, ${o.clientsPerAddress} clients per source address, ` +
      `rate limit ${o.rateLimit ? `${o.rateLimit.maxAttempts} attempts / ${o.rateLimit.intervalMs} ms per address` : 'off'}, ` +
      `down ${o.downMs} ms, ${o.publishRate} events/s published throughout, client backoff ${o.minDelay}–${o.maxDelay} ms, listen backlog ${o.backlog ?? 511}; ` +
      `load average at start ${r.machine.loadavgAtStart.join(' / ')}.`,
    '',
  ];
  // A run that stopped before its first scenario ended has no column: no table, only the failure.
  if (r.scenarios.length === 0) lines.push('No scenario finished.');
  else {
    lines.push(
      '| figure | ' + r.scenarios.map((x) => `${x.scenario} killed`).join(' | ') + ' |',
      '| --- | ' + r.scenarios.map(() => '---:').join(' | ') + ' |',
    );
  }
  const row = (name: string, f: (x: ScenarioResult) => string): void => {
    if (r.scenarios.length > 0) lines.push(`| ${name} | ${r.scenarios.map(f).join(' | ')} |`);
  };
  row('down (SIGKILL → accepting again)', (x) => s(x.downMs));
  row('every session back and configured (from the kill)', (x) =>
    x.scenario === 'server'
      ? s(x.backMs)
      : `${x.minSessions === o.sessions ? 'never left' : `${x.minSessions} left`}`,
  );
  row('every client reopened and recovered: true', (x) =>
    x.scenario === 'server' ? s(x.recoveredMs) : '–',
  );
  row('every client received an event published after the restart', (x) => s(x.caughtUpMs));
  row('peak handshakes, best 1 s', (x) => x.peakAcceptsPerSecond.toLocaleString('en'));
  row(
    'event-loop delay, max / p99 of 100 ms samples',
    (x) => `${x.loopDelayMaxMs} / ${x.loopDelayP99Ms} ms`,
  );
  row('server peak RSS / heap', (x) => `${x.peakRssMiB} / ${x.peakHeapMiB} MiB`);
  row(
    'refused 429 (server) / by status (clients)',
    (x) => `${x.refused429} / ${JSON.stringify(x.refusedByClients)}`,
  );
  row('reconnect attempts scheduled', (x) => x.retries.toLocaleString('en'));
  row('failed publishes (retried), run total', (x) => String(x.publishFailures));
  const cores = r.scenarios[0]?.cpu.cores ?? '?';
  if (r.machine.cpuAccounting === 2) {
    row(
      `machine: busy cores of ${cores} / by processes not ours`,
      (x) => `${x.cpu.machineBusyCores} / ${x.cpu.othersCores}`,
    );
  } else {
    // Earlier runs counted neither a cluster's workers nor a killed process: only "busy" holds.
    row(`machine: busy cores of ${cores}`, (x) => String(x.cpu.machineBusyCores));
  }
  const v = r.verification;
  lines.push('');
  if (v) {
    lines.push(
      `Verification after the last event (${v.lastSeq + 1} events of the storm identity published): ` +
        `${v.complete.toLocaleString('en')} of ${v.clients.toLocaleString('en')} clients received every event from their first to the last; ` +
        `${v.missing} missing, ${v.duplicates} duplicates, ${v.excluded} events of an excluded identity after a reconnection (${v.excludedFirst} on first connections, before their push config: allowed without \`since\`); ` +
        `${v.recoveries.toLocaleString('en')} recovery frames, ${v.recoveriesFalse} of them recovered: false.`,
    );
  }
  lines.push(
    '',
    r.crashes.length === 0 ? 'The server never crashed.' : `Crashes: ${r.crashes.join('; ')}`,
    '',
  );
  const defects = stormDefects(r);
  if (defects.length > 0) lines.push(...defects.map((d) => `FAILED: ${d}.`), '');
  lines.push(`![sessions during the storm](${svgName})`, '');
  return lines.join('\n');
}

function escapeXml(text: string): string {
  return text.replace(
    /[<>&"]/g,
    (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c] ?? c,
  );
}

function niceMax(v: number): number {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

interface Series {
  name: string;
  color: string;
  points: Array<[number, number]>;
}

function panel(
  title: string,
  series: Series[],
  markers: Array<{ x: number; label: string }>,
  xRange: [number, number],
  box: { x: number; y: number; w: number; h: number },
): string {
  const { x, y, w, h } = box;
  const left = x + 56;
  const top = y + 24;
  const width = w - 70;
  const height = h - 60;
  const yMax = niceMax(Math.max(0, ...series.flatMap((s2) => s2.points.map((p) => p[1]))));
  const px = (v: number): number => left + ((v - xRange[0]) / (xRange[1] - xRange[0])) * width;
  const py = (v: number): number => top + height - (v / yMax) * height;
  const out: string[] = [
    `<text x="${x + 8}" y="${y + 14}" font-size="13" font-weight="600">${escapeXml(title)}</text>`,
    `<rect x="${left}" y="${top}" width="${width}" height="${height}" fill="none" stroke="#ccc"/>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    out.push(
      `<line x1="${left}" x2="${left + width}" y1="${py(v)}" y2="${py(v)}" stroke="#eee"/>`,
      `<text x="${left - 4}" y="${py(v) + 4}" font-size="10" text-anchor="end">${v >= 1000 ? `${v / 1000}k` : Math.round(v * 10) / 10}</text>`,
    );
  }
  const step = niceMax((xRange[1] - xRange[0]) / 8);
  for (let t = Math.ceil(xRange[0] / step) * step; t <= xRange[1]; t += step) {
    out.push(
      `<text x="${px(t)}" y="${top + height + 14}" font-size="10" text-anchor="middle">${Math.round(t)}</text>`,
    );
  }
  out.push(
    `<text x="${left + width / 2}" y="${top + height + 28}" font-size="10" text-anchor="middle">seconds from the SIGKILL</text>`,
  );
  markers.forEach((m, i) => {
    // Staggered: the kill and the restart can be a few pixels apart.
    out.push(
      `<line x1="${px(m.x)}" x2="${px(m.x)}" y1="${top}" y2="${top + height}" stroke="#999" stroke-dasharray="3,3"/>`,
      `<text x="${px(m.x) + 3}" y="${top + 10 + i * 11}" font-size="9" fill="#666">${escapeXml(m.label)}</text>`,
    );
  });
  series.forEach((s2, i) => {
    if (s2.points.length === 0) return;
    const d = s2.points
      .map((p, j) => `${j === 0 ? 'M' : 'L'}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`)
      .join('');
    out.push(
      `<path d="${d}" fill="none" stroke="${s2.color}" stroke-width="1.5"/>`,
      `<text x="${left + width - 4}" y="${top + 22 + i * 12}" font-size="10" text-anchor="end" fill="${s2.color}">${escapeXml(s2.name)}</text>`,
    );
  });
  return out.join('\n');
}

/** The plot: per scenario, sessions (open, configured, recovered), handshakes/s and loop delay over time. */
export function stormSvg(r: StormResults): string {
  const width = 1100;
  const rowHeight = 260;
  const height = 30 + rowHeight * Math.max(1, r.scenarios.length);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="10" y="20" font-size="15" font-weight="700">${escapeXml(
      `Reconnect storm: ${r.options.sessions.toLocaleString('en')} sessions, ${r.options.workers === 1 ? 'one server process' : `${r.options.workers} server workers`}, ${r.options.backend}, rate limit ${r.options.rateLimit ? `${r.options.rateLimit.maxAttempts}/${r.options.rateLimit.intervalMs} ms` : 'off'}`,
    )}</text>`,
  ];
  const server = r.timeline?.server ?? [];
  const clients = r.timeline?.clients ?? [];
  r.scenarios.forEach((sc, row) => {
    const end = sc.t0 + sc.caughtUpMs + 2000;
    const from = sc.t0 - 2000;
    const rel = (t: number): number => (t - sc.t0) / 1000;
    const win = server.filter((p) => p.t >= from && p.t <= end);
    const cwin = clients.filter((p) => p.t >= from && p.t <= end);
    const rates: Array<[number, number]> = [];
    for (let i = 1; i < win.length; i++) {
      const a = win[i - 1] as (typeof win)[number];
      const b = win[i] as (typeof win)[number];
      if (b.t - a.t > 1000) continue; // the server was down between these two
      const accepts = b.accepted >= a.accepted ? b.accepted - a.accepted : b.accepted;
      rates.push([rel(b.t), (accepts * 1000) / Math.max(1, b.t - a.t)]);
    }
    const markers = [
      { x: 0, label: `${sc.scenario} SIGKILL` },
      { x: rel(sc.tUp), label: 'accepting again' },
    ];
    if (sc.scenario === 'server') markers.push({ x: sc.backMs / 1000, label: 'all back' });
    const xRange: [number, number] = [rel(from), rel(end)];
    const y = 30 + row * rowHeight;
    const sessionSeries: Series[] = [
      {
        name: 'server: open sessions',
        color: '#1f77b4',
        points: win.map((p) => [rel(p.t), p.sessions]),
      },
      {
        name: 'server: with push config',
        color: '#2ca02c',
        points: win.map((p) => [rel(p.t), p.configured]),
      },
    ];
    // Recovery frames come only when clients reconnect: the server scenario.
    if (sc.scenario === 'server' && cwin.some((p) => p.recovered > 0)) {
      sessionSeries.push({
        name: 'clients: recovered: true',
        color: '#d62728',
        points: cwin.map((p) => [rel(p.t), p.recovered]),
      });
    }
    parts.push(
      panel(`${sc.scenario} killed: sessions`, sessionSeries, markers, xRange, {
        x: 0,
        y,
        w: 420,
        h: rowHeight,
      }),
      panel(
        'handshakes per second (100 ms samples)',
        [{ name: 'accepted/s', color: '#9467bd', points: rates }],
        markers,
        xRange,
        { x: 420, y, w: 340, h: rowHeight },
      ),
      panel(
        'event-loop delay, max per 100 ms (ms)',
        [{ name: 'server', color: '#ff7f0e', points: win.map((p) => [rel(p.t), p.loopDelayMax]) }],
        markers,
        xRange,
        { x: 760, y, w: 340, h: rowHeight },
      ),
    );
  });
  parts.push('</svg>', '');
  return parts.join('\n');
}
