/**
 * The fan-out benchmark (issue 7): pushwire (LocalPubSub; JSON and
 * MessagePack) against socket.io 4 and a raw `ws` loop, in one run,
 * interleaved (A, B, C, D, then D, C, B, A), with the same clients and load.
 *
 *   npm run bench                 # the full run, ~10 minutes on 2 cores
 *   npm run bench:smoke           # 50 sessions, 1 repetition: CI's check that it still runs
 *   tsx bench/run.ts --help       # every flag
 *
 * Each measurement starts a fresh server child (one process per mode, run
 * with --expose-gc) and has the long-lived client children (raw TCP
 * WebSocket clients, over loopback) connect to it. Figures are medians
 * and min–max of the repetitions; they are printed as one table and
 * written to bench/results/latest.json, latest.md and chart.svg.
 *
 * Targets are reported, never asserted: the exit status is non-zero only
 * when something broke (a child crashed, sessions failed to connect, a
 * mode delivered nothing).
 *
 * This module is the orchestration only: read the flags (options.ts), start
 * the client children (children.ts), run the phases in order (phases/*.ts,
 * each over measurement.ts's one-measurement primitives), check the targets
 * (targets.ts) and print and write the report (report.ts).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, platform, release, totalmem } from 'node:os';
import { Child, CLIENT_FILE, type ClientChild } from './children.js';
import { Bench } from './measurement.js';
import { parseOptions } from './options.js';
import { historyPhase } from './phases/history.js';
import { scalePhase } from './phases/scale.js';
import { latencyPhase } from './phases/latency.js';
import { slowPhase } from './phases/slow.js';
import { ssePhase } from './phases/sse.js';
import { throughputPhase } from './phases/throughput.js';
import { workPhase } from './phases/work.js';
import {
  chartSvg,
  environmentLine,
  historyRows,
  mainRows,
  markdownReport,
  sseRows,
  targetRows,
  textTable,
  workRows,
  type BenchResults,
} from './report.js';
import { scaleFanoutRows, scaleMarkdown, scaleMemoryRows } from './scale-report.js';
import { evaluateTargets } from './targets.js';

/**
 * Prints the tables and writes latest.json, latest.md and chart.svg, and scale.json and scale.md
 * when the scale phase ran; a run of the scale phase alone writes only those, so that it never
 * replaces the last full run's fan-out figures.
 */
function writeOutputs(results: BenchResults, out: string, command: string): void {
  mkdirSync(out, { recursive: true });
  const scale = results.scale;
  if (scale !== undefined) {
    console.log('\n' + textTable(scaleMemoryRows(scale)));
    const fanout = scaleFanoutRows(scale);
    if (fanout !== undefined) console.log('\n' + textTable(fanout));
    writeFileSync(
      `${out}/scale.json`,
      JSON.stringify(
        { environment: results.environment, options: results.options, scale },
        null,
        2,
      ) + '\n',
    );
    writeFileSync(`${out}/scale.md`, scaleMarkdown(results, scale, command));
    console.log(`written: ${out}/scale.json, scale.md`);
    const phases = (results.options as { phases?: string[] }).phases ?? [];
    if (phases.every((p) => p === 'scale')) return;
  }
  console.log('');
  console.log(textTable(mainRows(results)));
  const work = workRows(results);
  if (work !== undefined) console.log('\n' + textTable(work));
  const history = historyRows(results);
  if (history !== undefined) console.log('\n' + textTable(history));
  const sse = sseRows(results);
  if (sse !== undefined) console.log('\n' + textTable(sse));
  console.log('\n' + textTable(targetRows(results)));
  console.log(`\n${environmentLine(results)}; ${results.durationSeconds} s`);
  writeFileSync(`${out}/latest.json`, JSON.stringify(results, null, 2) + '\n');
  writeFileSync(`${out}/latest.md`, markdownReport(results, command));
  writeFileSync(`${out}/chart.svg`, chartSvg(results));
  console.log(`written: ${out}/latest.json, latest.md, chart.svg`);
}

/** One run: measure (or, with --render, re-render an old latest.json), then report. */
async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (options.render !== undefined) {
    // A scale.json holds only the environment, the options and the scale phase's figures.
    const results: BenchResults = {
      sessionCounts: [],
      throughput: {},
      latency: {},
      targets: [],
      failures: [],
      durationSeconds: 0,
      ...(JSON.parse(readFileSync(options.render, 'utf8')) as Partial<BenchResults>),
    } as BenchResults;
    results.targets = evaluateTargets(results);
    const smoke = (results.options as { smoke?: boolean }).smoke === true;
    const phases = (results.options as { phases?: string[] }).phases ?? [];
    const scaleOnly = phases.length > 0 && phases.every((p) => p === 'scale');
    writeOutputs(
      results,
      options.out,
      smoke
        ? 'npm run bench:smoke'
        : scaleOnly
          ? 'npm run bench -- --phases scale'
          : 'npm run bench',
    );
    return;
  }
  const started = Date.now();
  const cpuList = cpus();
  const results: BenchResults = {
    environment: {
      node: process.version,
      cpuModel: cpuList[0]?.model.trim() ?? 'unknown',
      cores: cpuList.length,
      platform: `${platform()} ${release()}`,
      totalMemoryMiB: Math.round(totalmem() / 1024 / 1024),
      date: new Date().toISOString(),
    },
    options: { ...options },
    durationSeconds: 0,
    sessionCounts: options.sessions,
    throughput: {},
    latency: {},
    targets: [],
    failures: [],
  };
  console.log(`pushwire fan-out benchmark${options.smoke ? ' (smoke)' : ''}`);
  console.log(environmentLine(results));
  console.log(
    `sessions ${options.sessions.join(', ')}; ${options.reps} interleaved repetitions; warm-up ${options.warmupS} s, ` +
      `windows ${options.durationS} s; ${options.clients} client processes; bursts of ${options.batch} events; ` +
      `entity 200 bytes (JSON)\n`,
  );

  mkdirSync(options.out, { recursive: true });
  const clients: ClientChild[] = Array.from(
    { length: options.clients },
    (_, i) => new Child(`client ${i}`, CLIENT_FILE, [], ['--import', 'tsx']),
  );
  const bench = new Bench(options, clients);
  const stopAll = async (): Promise<void> => {
    await Promise.all(clients.map((c) => c.stop()));
  };

  try {
    // Throughput first: the latency phase's load is half the raw limit it measured.
    if (options.phases.includes('throughput')) await throughputPhase(bench, results);
    if (options.phases.includes('latency')) await latencyPhase(bench, results);
    if (options.phases.includes('work') && options.modes.includes('pushwire-json')) {
      await workPhase(bench, results);
    }
    if (options.phases.includes('slow')) await slowPhase(bench, results);
    if (options.phases.includes('history')) await historyPhase(bench, results);
    if (options.phases.includes('sse')) await ssePhase(bench, results);
    // Last: it holds the most sessions, and its client children are its own.
    if (options.phases.includes('scale')) await scalePhase(bench, results);
  } finally {
    await stopAll();
  }

  results.targets = evaluateTargets(results);
  results.failures = bench.failures;
  results.durationSeconds = Math.round((Date.now() - started) / 1000);

  const command = options.smoke
    ? 'npm run bench:smoke'
    : `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim().replace(/ --$/, '');
  writeOutputs(results, options.out, command);

  if (bench.failures.length > 0) {
    console.error(`\nFAILED:\n  ${bench.failures.join('\n  ')}`);
    process.exitCode = 1;
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
