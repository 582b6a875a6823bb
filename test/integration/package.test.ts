/**
 * The package as an application gets it (issue 19, item 6d): `npm pack` of the built tree,
 * unpacked into a fresh app in a temporary directory outside the repository, with its
 * dependencies and peers beside it; then every entry of the `exports` map is imported by Node
 * from that app, and a small strict TypeScript file is checked against the packed
 * declarations. It catches a file missing from `files`, an `exports` entry pointing nowhere,
 * a declaration that imports a package the app does not have.
 *
 * No network: the dependencies are symlinked from this repository's node_modules (what
 * `npm install ./pushwire-0.1.0.tgz` would put there, already installed), and the tarball is
 * unpacked as npm unpacks it. `npm pack --ignore-scripts`, so `prepare` does not build again:
 * `npm test` built dist/ just before.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MODULES = join(ROOT, 'node_modules');

interface PackageJson {
  name: string;
  exports: Record<string, unknown>;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

let dir = '';
let app = '';
let manifest: PackageJson;

/** Links `name` from this repository's node_modules into the app's. */
async function link(name: string): Promise<void> {
  const target = join(app, 'node_modules', name);
  await mkdir(dirname(target), { recursive: true });
  await symlink(join(MODULES, name), target, 'dir');
}

before(async () => {
  assert.ok(
    existsSync(join(ROOT, 'dist/lib/index.js')),
    'dist/ is missing: run `npm run build` first (npm test does)',
  );
  dir = await mkdtemp(join(tmpdir(), 'pushwire-package-'));
  const { stdout } = await run(
    'npm',
    ['pack', '--ignore-scripts', '--json', '--pack-destination', dir],
    { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 },
  );
  const [packed] = JSON.parse(stdout) as Array<{
    filename: string;
    files: Array<{ path: string }>;
  }>;
  assert.ok(packed);
  for (const file of packed.files) {
    assert.match(file.path, /^(dist\/|package\.json$|README\.md$|LICENSE)/, `packed ${file.path}`);
  }
  app = join(dir, 'app');
  const home = join(app, 'node_modules', 'pushwire');
  await mkdir(home, { recursive: true });
  await run('tar', ['-xzf', join(dir, packed.filename), '-C', home, '--strip-components=1']);
  manifest = JSON.parse(await readFile(join(home, 'package.json'), 'utf8')) as PackageJson;
  await writeFile(
    join(app, 'package.json'),
    JSON.stringify({ name: 'app', private: true, type: 'module' }),
  );
  // What the app installs: pushwire's dependencies, every peer (so that every entry can be
  // imported), and the type packages of a TypeScript app using Express and express-ws.
  const names = new Set([
    ...Object.keys(manifest.dependencies ?? {}),
    ...Object.keys(manifest.peerDependencies ?? {}),
    '@types/node',
    '@types/express',
    '@types/express-ws',
  ]);
  for (const name of names) await link(name);
});

after(async () => {
  if (dir !== '') await rm(dir, { recursive: true, force: true });
});

describe('the packed package, in a fresh app', () => {
  it('imports every entry of the exports map', async () => {
    const entries = Object.keys(manifest.exports)
      .filter((key) => key !== './package.json')
      .map((key) => (key === '.' ? manifest.name : `${manifest.name}${key.slice(1)}`));
    assert.ok(entries.length >= 10, entries.join(', '));
    const script = `
      const out = {};
      for (const specifier of ${JSON.stringify(entries)}) {
        // The bundle is a browser script: it resolves and loads, and may export nothing.
        const module = await import(specifier);
        out[specifier] = Object.keys(module);
      }
      console.log(JSON.stringify(out));
    `;
    await writeFile(join(app, 'imports.mjs'), script);
    const { stdout } = await run(process.execPath, ['imports.mjs'], { cwd: app });
    const exported = JSON.parse(stdout) as Record<string, string[]>;
    for (const entry of entries) {
      if (entry.endsWith('/bundle')) continue;
      assert.ok((exported[entry] ?? []).length > 0, `${entry} exports nothing`);
    }
    assert.ok(exported.pushwire?.includes('pushMiddleware'));
    assert.ok(exported['pushwire/client/node']?.includes('createPushClient'));
  });

  it('typechecks a strict TypeScript file against the packed declarations', async () => {
    await writeFile(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noUncheckedIndexedAccess: true,
          noEmit: true,
          // Declarations are checked too: one importing a package the app lacks fails here.
          skipLibCheck: false,
          types: ['node'],
        },
        files: ['app.ts'],
      }),
    );
    await writeFile(
      join(app, 'app.ts'),
      `import express from 'express';
import expressWs from 'express-ws';
import { authPlugin, LocalPubSub, pushMiddleware, type PushSession } from 'pushwire';
import { NatsPubSub } from 'pushwire/pubsub/nats';
import { RedisPubSub } from 'pushwire/pubsub/redis';
import { jwtAuthPlugin } from 'pushwire/plugins/jwt';
import { tracingPlugin } from 'pushwire/plugins/tracing';
import { registerMetrics } from 'pushwire/plugins/metrics';
import { createPushClient } from 'pushwire/client/node';
import type { PushClient } from 'pushwire/client';

const app = express();
const ews = expressWs(app);
const push = pushMiddleware(new LocalPubSub(), 'events', {
  plugins: [authPlugin((session: PushSession) => (session.token === 'x' ? 'ok' : 'ko'))],
  maxPayload: 1024,
});
app.use('/api', push);
push.attach(ews);
await push.ready;
await push.publish({ identity: 'task', type: 'create', entity: { ID: '1' } });
const backends: unknown[] = [NatsPubSub, RedisPubSub, jwtAuthPlugin, tracingPlugin, registerMetrics];
const client: PushClient = createPushClient('ws://localhost/api/events', {
  headers: { Authorization: 'Bearer x' },
});
client.on('event', (event) => console.log(event.identity, backends.length));
`,
    );
    const tsc = join(MODULES, 'typescript/bin/tsc');
    try {
      await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: app });
    } catch (error) {
      const { stdout, stderr } = error as { stdout?: string; stderr?: string };
      assert.fail(`tsc failed in the fresh app:\n${stdout ?? ''}${stderr ?? ''}`);
    }
  });
});
