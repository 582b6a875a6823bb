/**
 * examples/cluster/per-core.ts, for real (issue 15 item 4): a node:cluster
 * primary with 2 workers sharing one port and a NATS broker started by the
 * test.
 *
 * - Sessions land on both workers (each says which one in its hello).
 * - An event published through one worker reaches the sessions of both,
 *   and so does one published through the other.
 * - SIGTERM to the primary closes every session with 1001 (each worker's
 *   push.close()) and the process exits 0.
 *
 * No sleeps: every wait is for a log line, an event or a close, with a deadline.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { request } from 'node:http';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { createPushClient, type PushClient, type ReceivedEvent } from '../../client/node.js';
import { freePort, startNats, type Broker } from '../helpers/brokers.js';
import { deferred, waitFor, withTimeout, type Deferred } from '../helpers/wait.js';

const EXAMPLE = fileURLToPath(new URL('../../examples/cluster/per-core.ts', import.meta.url));
const REPO = fileURLToPath(new URL('../..', import.meta.url));
/** Two workers start (tsx, Express, NATS) on a busy two-core machine: generous. */
const START_MS = 60_000;
const DELIVERY_MS = 15_000;

/** The entity of the example's events: the publishing worker stamps it. */
interface TaskEntity {
  ID?: string;
  publishedBy?: string;
}
const entityOf = (e: ReceivedEvent): TaskEntity => e.entity as TaskEntity;

interface Session {
  client: PushClient;
  worker: Deferred<number>;
  events: ReceivedEvent[];
  closed: Deferred<number>;
}

function open(url: string): Session {
  const s: Session = {
    client: createPushClient(url, { reconnect: false }),
    worker: deferred<number>(),
    events: [],
    closed: deferred<number>(),
  };
  s.client.on('event', (event) => {
    if (event.identity === 'worker' && event.type === 'hello') {
      s.worker.resolve((event.entity as { worker: number }).worker);
    } else s.events.push(event);
  });
  s.client.on('close', ({ code }) => s.closed.resolve(code));
  return s;
}

/** POSTs an event on a fresh connection (no keep-alive), so that the primary hands it to the next worker. */
function publish(port: number, name: string): Promise<{ status: number; by: string }> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ identity: 'task', type: 'create', entity: { ID: name } });
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: '/api/publish',
        method: 'POST',
        agent: false,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          const parsed = JSON.parse(text) as { by?: string };
          resolve({ status: res.statusCode ?? 0, by: parsed.by ?? '' });
        });
      },
    );
    req.once('error', reject);
    req.end(body);
  });
}

describe('examples/cluster/per-core.ts: 2 workers on one port and one broker', () => {
  let broker: Broker;
  let child: ChildProcess;
  let port: number;
  const lines: string[] = [];
  const sessions: Session[] = [];

  before(async () => {
    broker = await startNats();
    port = await freePort();
    child = spawn(process.execPath, ['--import', 'tsx', EXAMPLE], {
      cwd: REPO,
      env: { ...process.env, WORKERS: '2', PORT: String(port), NATS_URL: broker.url },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const ready = deferred();
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      lines.push(line);
      if (line.includes('"workers":2')) ready.resolve();
    });
    child.once('exit', (code) => ready.reject(new Error(`per-core exited early: code ${code}`)));
    await withTimeout(ready.promise, START_MS, 'the primary logged that 2 workers listen');
  });

  after(async () => {
    for (const s of sessions) s.client.close();
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
    await broker.stop();
  });

  it('sessions on both workers receive an event published through either', async () => {
    const url = `ws://127.0.0.1:${port}/api/events`;
    // The primary hands connections out in turn: a few sessions reach both workers.
    const workers = new Set<number>();
    while (workers.size < 2) {
      assert.ok(sessions.length < 40, `40 sessions all landed on worker ${[...workers].join()}`);
      const s = open(url);
      sessions.push(s);
      workers.add(await withTimeout(s.worker.promise, DELIVERY_MS, 'a hello from its worker'));
    }
    for (let i = 0; i < 4; i++) sessions.push(open(url));
    await withTimeout(
      Promise.all(sessions.map((s) => s.worker.promise)),
      DELIVERY_MS,
      'every session said hello',
    );

    const publishers = new Set<string>();
    for (let n = 0; publishers.size < 2; n++) {
      assert.ok(n < 20, 'twenty publishes all went through one worker');
      const { status, by } = await publish(port, `event-${n}`);
      assert.equal(status, 202);
      publishers.add(by);
      await waitFor(
        () => sessions.every((s) => s.events.some((e) => entityOf(e).ID === `event-${n}`)),
        {
          timeout: DELIVERY_MS,
          message: `every session, on both workers, received event-${n} published by ${by}`,
        },
      );
      for (const s of sessions) {
        const got = s.events.find((e) => entityOf(e).ID === `event-${n}`);
        assert.equal(
          got === undefined ? undefined : entityOf(got).publishedBy,
          by,
          'the event says which worker published it',
        );
      }
    }
    const byWorker = await Promise.all(sessions.map((s) => s.worker.promise));
    assert.equal(new Set(byWorker).size, 2, 'sessions on two workers');
  });

  it('SIGTERM closes every session with 1001 and exits 0', async () => {
    const exit = once(child, 'exit');
    child.kill('SIGTERM');
    const codes = await withTimeout(
      Promise.all(sessions.map((s) => s.closed.promise)),
      DELIVERY_MS,
      'every session closed',
    );
    assert.deepEqual(new Set(codes), new Set([1001]), 'closed by push.close() with 1001');
    const [code] = (await withTimeout(exit, DELIVERY_MS, 'the primary exited')) as [number];
    assert.equal(code, 0);
    assert.ok(
      lines.some((l) => l.includes('"msg":"stopped"')),
      'the primary logged stopped',
    );
  });
});
