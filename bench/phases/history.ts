/**
 * The cost of history (issue 14), pushwire JSON on LocalPubSub, as ratios
 * in one run: the fan-out with `history: { maxEvents: 10,000 }` against
 * none, interleaved; the rate of a replay to one session resuming with
 * `?since=` from the first of `--replay-events` stored events, until its
 * recovery frame, against live events to one session; and
 * bench/history-memory.ts's memory of the ring.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import WebSocket from 'ws';
import { progress } from '../children.js';
import { nowMs } from '../common.js';
import { inRepOrder, pick, type Bench, type Setup, type ThroughputSample } from '../measurement.js';
import { formatCount, summarize, type BenchResults, type HistoryFigures } from '../report.js';

/** The history of the fan-out with history on: LocalPubSub's default bound. */
const FANOUT_MAX_EVENTS = 10_000;
const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MEMORY_FILE = fileURLToPath(new URL('../history-memory.ts', import.meta.url));
const RECOVERY_PREFIX = '{"recovery":';

/** What one resuming session saw: the events replayed, and the time from open to the recovery frame. */
interface Resumed {
  events: number;
  seconds: number;
  recovered: boolean;
}

/**
 * Opens one session at `url` (with its `since`), sends an empty push config at once (the
 * replay waits for the first one, or 2 s), and counts event frames until the recovery frame.
 * Rejects after `timeoutMs` without one, or on a socket error.
 */
function resume(url: string, timeoutMs: number): Promise<Resumed> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { perMessageDeflate: false });
    let openedMs = 0;
    let events = 0;
    const timer = setTimeout(() => {
      socket.terminate();
      reject(new Error(`no recovery frame within ${timeoutMs} ms (${events} events)`));
    }, timeoutMs);
    socket.on('open', () => {
      openedMs = nowMs();
      socket.send('{}');
    });
    socket.on('message', (data: Buffer) => {
      // Only the recovery frame starts with this key; events are counted unparsed.
      if (
        data.length > RECOVERY_PREFIX.length &&
        data.toString('latin1', 0, RECOVERY_PREFIX.length) === RECOVERY_PREFIX
      ) {
        const seconds = (nowMs() - openedMs) / 1000;
        clearTimeout(timer);
        socket.terminate();
        const frame = JSON.parse(data.toString('utf8')) as { recovery: { recovered: boolean } };
        resolve({ events, seconds, recovered: frame.recovery.recovered });
        return;
      }
      events++;
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/**
 * One replay: a fresh server (`setup`, whose history holds `count` + 1 events), `count` + 1
 * events published before any session, then one session resuming from the first.
 */
async function replayOnce(
  bench: Bench,
  setup: Setup,
  count: number,
): Promise<{ eventsPerSec: number; cpuUsPerEvent: number }> {
  const { server, port, path } = await bench.startServer(setup);
  try {
    const filled = await server.request(
      { type: 'fill-history', count: count + 1 },
      'history-filled',
      60_000,
    );
    if (filled.stored !== count + 1) {
      throw new Error(`the history holds ${filled.stored} of ${count + 1} events`);
    }
    const url =
      `ws://127.0.0.1:${port}${path}${path.includes('?') ? '&' : '?'}` +
      `since=${encodeURIComponent(filled.since)}`;
    const before = await server.request({ type: 'snapshot' }, 'snapshot');
    const resumed = await resume(url, 60_000);
    const after = await server.request({ type: 'snapshot' }, 'snapshot');
    if (!resumed.recovered || resumed.events !== count) {
      throw new Error(
        `replay: ${resumed.events} of ${count} events, recovered ${String(resumed.recovered)}`,
      );
    }
    const eventsPerSec = resumed.events / resumed.seconds;
    const cpuUsPerEvent = (after.snapshot.cpuUs - before.snapshot.cpuUs) / resumed.events;
    progress(
      `replay of ${count} events to one session: ${formatCount(eventsPerSec)} events/s ` +
        `(${(resumed.seconds * 1000).toFixed(0)} ms to the recovery frame), ` +
        `${cpuUsPerEvent.toFixed(2)} µs server CPU/event`,
    );
    return { eventsPerSec, cpuUsPerEvent };
  } finally {
    await server.stop();
  }
}

/** bench/history-memory.ts in its own process (its figures are its own heap's); undefined on failure. */
async function historyMemory(bench: Bench): Promise<HistoryFigures['memory']> {
  try {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--import', 'tsx', MEMORY_FILE, '10000', '200'],
      { cwd: REPO_ROOT, timeout: 120_000 },
    );
    const memory = JSON.parse(stdout.trim().split('\n').pop() ?? '') as NonNullable<
      HistoryFigures['memory']
    >;
    progress(
      `history memory: ${memory.retainedMB} MB per ${memory.events} events of ${memory.payloadBytes} bytes ` +
        `(${memory.bytesPerEvent} B/event), ${memory.afterThreeTimesMoreMB} MB after ${memory.events * 3} more`,
    );
    return memory;
  } catch (error) {
    bench.failures.push(
      `history memory: ${error instanceof Error ? error.message : String(error)}`,
    );
    return undefined;
  }
}

/** Runs the phase and stores its figures in `results.history`; failures go to `bench.failures`. */
export async function historyPhase(bench: Bench, results: BenchResults): Promise<void> {
  const { options } = bench;
  const sessions = options.workSessions;
  console.log(`Cost of history, pushwire JSON, LocalPubSub, ${sessions} sessions:`);
  const samples = { off: [] as ThroughputSample[], on: [] as ThroughputSample[] };
  const replays: Array<{ eventsPerSec: number; cpuUsPerEvent: number }> = [];
  const liveOne: ThroughputSample[] = [];
  // On over off within each repetition: the two ran back to back, so a neighbour's load that
  // comes and goes between repetitions moves both.
  const pairRates: number[] = [];
  const pairCpus: number[] = [];
  for (let rep = 0; rep < options.reps; rep++) {
    const pair: { off?: ThroughputSample; on?: ThroughputSample } = {};
    for (const history of inRepOrder(['off', 'on'] as const, rep)) {
      const setup: Setup = {
        mode: 'pushwire-json',
        sessions,
        variant: 'none',
        slow: 0,
        memory: false,
        ...(history === 'on' ? { history: FANOUT_MAX_EVENTS } : {}),
      };
      const sample = await bench.safely(setup, () => bench.throughput(setup, options.durationS));
      if (sample === undefined) continue;
      samples[history].push(sample);
      pair[history] = sample;
    }
    if (pair.on !== undefined && pair.off !== undefined) {
      pairRates.push(pair.on.deliveriesPerSec / pair.off.deliveriesPerSec);
      pairCpus.push(pair.on.cpuUsPerDelivery / pair.off.cpuUsPerDelivery);
    }
    const replaySetup: Setup = {
      mode: 'pushwire-json',
      sessions: 1,
      variant: 'none',
      slow: 0,
      memory: false,
      history: options.replayEvents + 1,
    };
    const replay = await bench.safely(replaySetup, () =>
      replayOnce(bench, replaySetup, options.replayEvents),
    );
    if (replay !== undefined) replays.push(replay);
    // The replay's reference: live events to one session at maximum load, history on (a replay
    // writes to one socket, where a fan-out shares each event's encoding among many). Not in
    // the smoke run, which keeps this phase under 10 s; bench.throughput runs in other phases.
    if (options.smoke) continue;
    const liveSetup: Setup = { ...replaySetup, history: FANOUT_MAX_EVENTS };
    const live = await bench.safely(liveSetup, () =>
      bench.throughput(liveSetup, options.durationS),
    );
    if (live !== undefined) liveOne.push(live);
  }
  const off = {
    deliveriesPerSec: pick(samples.off, 'deliveriesPerSec'),
    cpuUsPerDelivery: pick(samples.off, 'cpuUsPerDelivery'),
  };
  const on = {
    deliveriesPerSec: pick(samples.on, 'deliveriesPerSec'),
    cpuUsPerDelivery: pick(samples.on, 'cpuUsPerDelivery'),
  };
  const replayRate = summarize(replays.map((r) => r.eventsPerSec));
  const liveOneRate = pick(liveOne, 'deliveriesPerSec');
  const memory = await historyMemory(bench);
  results.history = {
    sessions,
    maxEvents: FANOUT_MAX_EVENTS,
    off,
    on,
    rateRatio: on.deliveriesPerSec.median / off.deliveriesPerSec.median,
    cpuRatio: on.cpuUsPerDelivery.median / off.cpuUsPerDelivery.median,
    pairRateRatios: summarize(pairRates),
    pairCpuRatios: summarize(pairCpus),
    replay: {
      events: options.replayEvents,
      eventsPerSec: replayRate,
      cpuUsPerEvent: summarize(replays.map((r) => r.cpuUsPerEvent)),
      liveOneSession: {
        deliveriesPerSec: liveOneRate,
        cpuUsPerDelivery: pick(liveOne, 'cpuUsPerDelivery'),
      },
      ratioToLive: replayRate.median / liveOneRate.median,
    },
    ...(memory === undefined ? {} : { memory }),
  };
}
