/**
 * tenantIsolationPlugin: an event reaches a session only when the session's
 * namespace claim is the event's namespace or an ancestor of it. First the
 * rules on one server, then the load test of issue 5: 2 tenants, 200
 * sessions, 5,000 events interleaved, published from 2 servers over a real
 * NATS, zero cross-tenant deliveries and no event missing.
 *
 * To prove that something was NOT delivered, each session is sent a marker
 * with directPush after the events: frames to one socket are written in
 * order, so anything sent before the marker has arrived when it does.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { authPlugin } from '../../lib/index.js';
import { NatsPubSub } from '../../lib/pubsub/nats.js';
import { isWithinNamespace, tenantIsolationPlugin } from '../../plugins/tenant/index.js';
import { startNats, type Broker } from '../helpers/brokers.js';
import { startPushApp, type PushApp } from '../helpers/push-app.js';
import { deferred, waitFor, withTimeout } from '../helpers/wait.js';

const MARKER = 'marker';

/** Auth for these tests: `?ns=/a,/b` becomes one `namespace=` claim per value; no `ns`, no claim. */
const namespaceAuth = authPlugin((session) => {
  const ns = session.parameter('ns');
  session.setClaims(ns === undefined ? [] : ns.split(',').map((n) => `namespace=${n}`));
  return 'ok';
});

/** A lean client for many sessions: counts events by ID, checks each against its namespaces. */
class TenantClient {
  readonly ids = new Set<number>();
  readonly received: string[] = [];
  readonly violations: string[] = [];
  duplicates = 0;
  #marker = deferred<void>();
  #target = 0;
  #reached = deferred<void>();

  private constructor(
    readonly ws: WebSocket,
    readonly namespaces: readonly string[],
    readonly keepNames: boolean,
  ) {
    ws.on('message', (data) => this.#onMessage(data as Buffer));
  }

  static async connect(wsUrl: string, namespaces: readonly string[], keepNames = false) {
    const url = new URL(wsUrl);
    if (namespaces.length > 0) url.searchParams.set('ns', namespaces.join(','));
    const ws = new WebSocket(url);
    ws.on('error', () => undefined);
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        ws.once('open', () => resolve());
        ws.once('error', reject);
        ws.once('unexpected-response', (_q, res) => reject(new Error(`status ${res.statusCode}`)));
      }),
      5_000,
      'connect',
    );
    return new TenantClient(ws, namespaces, keepNames);
  }

  #onMessage(data: Buffer): void {
    const event = JSON.parse(data.toString()) as {
      identity: string;
      entity: { ID?: number; namespace?: string };
    };
    if (event.identity === MARKER) {
      this.#marker.resolve();
      return;
    }
    const ns = event.entity.namespace ?? '(none)';
    if (this.keepNames) this.received.push(ns);
    // Checked independently of the plugin's own isWithinNamespace, so a bug there cannot hide.
    const allowed = this.namespaces.some(
      (mine) => ns === mine || ns.startsWith(mine.endsWith('/') ? mine : `${mine}/`),
    );
    if (!allowed) {
      this.violations.push(`${this.namespaces.join(',') || '(no claim)'} got ${ns}`);
    }
    const id = event.entity.ID ?? -1;
    if (this.ids.has(id)) this.duplicates++;
    this.ids.add(id);
    if (this.#target > 0 && this.ids.size >= this.#target) this.#reached.resolve();
  }

  /** Resolves once `n` distinct events arrived. */
  waitForCount(n: number, ms: number): Promise<void> {
    this.#target = n;
    if (this.ids.size >= n) this.#reached.resolve();
    return withTimeout(this.#reached.promise, ms, `expected ${n} events, got ${this.ids.size}`);
  }

  waitForMarker(ms: number): Promise<void> {
    return withTimeout(this.#marker.promise, ms, 'no marker');
  }

  close(): void {
    this.ws.close();
  }
}

/** Sends the marker to every open session of the apps. */
function pushMarkers(apps: readonly PushApp[]): void {
  for (const app of apps) {
    for (const session of app.push.sessions()) {
      session.directPush({ identity: MARKER, type: 'create', entity: {} });
    }
  }
}

describe('isWithinNamespace', () => {
  const cases: Array<[string, string, boolean]> = [
    ['/acme', '/acme', true],
    ['/acme/x', '/acme', true],
    ['/acme/x/y', '/acme', true],
    ['/acmex', '/acme', false],
    ['/acme', '/acme/x', false],
    ['/other', '/acme', false],
    ['/acme', '/', true],
    ['/acme', '', false],
    ['', '/acme', false],
  ];
  for (const [ns, ancestor, expected] of cases) {
    it(`${JSON.stringify(ns)} is ${expected ? '' : 'not '}within ${JSON.stringify(ancestor)}`, () => {
      assert.equal(isWithinNamespace(ns, ancestor), expected);
    });
  }
});

describe('tenantIsolationPlugin on one server', () => {
  let app: PushApp;
  let summaries = 0;
  before(async () => {
    app = await startPushApp({
      plugins: [
        namespaceAuth,
        tenantIsolationPlugin({
          namespaceOf: (event) => {
            summaries++;
            const ns = (event.entity as { namespace?: unknown }).namespace;
            return typeof ns === 'string' ? ns : undefined;
          },
        }),
      ],
    });
  });
  after(() => app.close());

  it('delivers to the namespace and its ancestors only; fails closed without a claim or a namespace', async () => {
    const sessions: Record<string, readonly string[]> = {
      acme: ['/acme'],
      acmeX: ['/acme/x'],
      acmex: ['/acmex'],
      root: ['/'],
      trailing: ['/acme/'],
      several: ['/acme/x', '/other'],
      none: [],
    };
    const clients: Record<string, TenantClient> = {};
    for (const [name, namespaces] of Object.entries(sessions)) {
      clients[name] = await TenantClient.connect(app.wsUrl, namespaces, true);
    }
    const published = ['/acme', '/acme/x', '/acme/x/y', '/acmex', '/other', '/acme/'];
    summaries = 0;
    await app.push.publish(
      ...published.map((namespace, i) => ({
        identity: 'task',
        type: 'create',
        entity: { ID: i, namespace },
      })),
      { identity: 'task', type: 'create', entity: { ID: 99 } }, // no namespace
    );
    // Once every event went through the dispatch phase, the marker follows them on every socket.
    await waitFor(() => summaries >= published.length + 1, {
      timeout: 5_000,
      message: 'every event summarized',
    });
    pushMarkers([app]);
    await Promise.all(Object.values(clients).map((c) => c.waitForMarker(5_000)));
    const got = (name: string): string[] => [...(clients[name]?.received ?? [])].sort();
    assert.deepEqual(got('acme'), ['/acme', '/acme/', '/acme/x', '/acme/x/y']);
    assert.deepEqual(got('acmeX'), ['/acme/x', '/acme/x/y']);
    assert.deepEqual(got('acmex'), ['/acmex'], '/acme is not an ancestor of /acmex');
    assert.deepEqual(
      got('root'),
      [...published].sort(),
      'but an event with no namespace reaches no one',
    );
    assert.deepEqual(got('trailing'), got('acme'), 'a trailing slash in the claim changes nothing');
    assert.deepEqual(got('several'), ['/acme/x', '/acme/x/y', '/other']);
    assert.deepEqual(got('none'), [], 'a session without the claim gets nothing');
    assert.equal(summaries, published.length + 1, 'the namespace is computed once per event');
    for (const c of Object.values(clients)) c.close();
  });

  it('checks its options when called', () => {
    assert.throws(() => tenantIsolationPlugin({ claim: '' }), TypeError);
    assert.throws(() => tenantIsolationPlugin({ claim: 'a=b' }), TypeError);
    assert.throws(() => tenantIsolationPlugin({ namespaceOf: 'ns' } as never), TypeError);
    assert.throws(() => tenantIsolationPlugin({ claims: 'x' } as never), /unknown option/);
  });
});

describe('tenant isolation under load: 2 tenants, 200 sessions, 5,000 events, 2 servers, NATS', () => {
  const TENANTS = ['/acme', '/acmex'] as const; // a prefix trap: /acmex is not under /acme
  const SESSIONS = 200;
  const EVENTS = 5_000;
  const NAMESPACES = ['/acme', '/acme/team', '/acmex', '/acmex/team'];
  let broker: Broker;
  let pubsubs: NatsPubSub[] = [];
  let apps: PushApp[] = [];

  before(async () => {
    broker = await startNats();
    pubsubs = [0, 1].map(() => new NatsPubSub({ servers: broker.url }));
    apps = await Promise.all(
      pubsubs.map((pubsub) =>
        startPushApp({
          pubsub,
          topic: 'tenants',
          plugins: [namespaceAuth, tenantIsolationPlugin()],
        }),
      ),
    );
  });
  after(async () => {
    await Promise.all(apps.map((a) => a.close()));
    await Promise.all(pubsubs.map((p) => p.disconnect()));
    await broker?.stop();
  });

  it('delivers zero events across tenants and every event within its tenant', async () => {
    const clients: TenantClient[] = [];
    const claimless: TenantClient[] = [];
    for (let batch = 0; batch < SESSIONS; batch += 50) {
      clients.push(
        ...(await Promise.all(
          Array.from({ length: 50 }, (_, j) => {
            const i = batch + j;
            // Both tenants on both servers: tenant by parity, server by the next bit.
            const app = apps[Math.floor(i / 2) % 2] as PushApp;
            return TenantClient.connect(app.wsUrl, [TENANTS[i % 2] as string]);
          }),
        )),
      );
    }
    for (const app of apps) {
      claimless.push(await TenantClient.connect(app.wsUrl, []));
    }
    assert.equal(apps[0]?.push.sessions().length, SESSIONS / 2 + 1);

    // Interleaved: consecutive events alternate tenants, sub-namespaces and publishing servers.
    for (let start = 0; start < EVENTS; start += 250) {
      const byServer: Array<Parameters<PushApp['push']['publish']>> = [[], []];
      for (let k = start; k < start + 250; k++) {
        byServer[k % 2]?.push({
          identity: 'task',
          type: 'create',
          entity: { ID: k, namespace: NAMESPACES[k % NAMESPACES.length] as string },
        });
      }
      await Promise.all(byServer.map((events, s) => apps[s]?.push.publish(...events)));
    }

    const perTenant = EVENTS / 2;
    await Promise.all(clients.map((c) => c.waitForCount(perTenant, 25_000)));
    pushMarkers(apps);
    await Promise.all([...clients, ...claimless].map((c) => c.waitForMarker(10_000)));

    const violations = [...clients, ...claimless].flatMap((c) => c.violations);
    assert.deepEqual(violations.slice(0, 5), [], `${violations.length} cross-tenant deliveries`);
    for (const c of clients) {
      assert.equal(c.ids.size, perTenant, 'every event of its tenant, no more');
      assert.equal(c.duplicates, 0);
    }
    for (const c of claimless) assert.equal(c.ids.size, 0, 'no claim, no event');
    for (const app of apps) assert.equal(app.push.stats().dropped, 0);
    for (const c of [...clients, ...claimless]) c.close();
  });
});
