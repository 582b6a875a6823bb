/**
 * Builds the browser bundle of pushwire/client with esbuild: one minified
 * ES module, `dist/client/pushwire-client.min.js` (and its source map), and
 * prints its size minified and gzipped. Fails when the bundle would pull in
 * `ws` or a Node built-in (the browser entry must not), or grows past the
 * size budget.
 *
 *   tsx scripts/build-client.ts
 *
 * The example server imports {@link bundleClient} to serve the same bundle
 * from memory, so `npm start` needs no build step.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
/** Where the CLI writes the bundle. */
export const CLIENT_BUNDLE_PATH = `${root}dist/client/pushwire-client.min.js`;
/** The budget: the client with its MessagePack codec, gzipped. */
const GZIP_BUDGET = 10 * 1024;

/** The bundle, its source map and its sizes in bytes. */
export interface ClientBundle {
  code: Uint8Array;
  map: Uint8Array;
  minified: number;
  gzipped: number;
}

/**
 * Bundles client/index.ts for browsers (ES2022: native private fields keep
 * the output small) in memory. Rejects with esbuild's error, or when an
 * input is `ws` or a Node built-in.
 */
export async function bundleClient(): Promise<ClientBundle> {
  const result = await build({
    entryPoints: [`${root}client/index.ts`],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    minify: true,
    sourcemap: 'linked',
    legalComments: 'none',
    outfile: CLIENT_BUNDLE_PATH,
    write: false,
    metafile: true,
    logLevel: 'silent',
  });
  const forbidden = Object.keys(result.metafile.inputs).filter(
    (input) => /(^|\/)node_modules\/ws\//.test(input) || input.startsWith('node:'),
  );
  if (forbidden.length > 0) {
    throw new Error(`the browser bundle must not include ${forbidden.join(', ')}`);
  }
  const code = result.outputFiles.find((file) => file.path.endsWith('.js'));
  const map = result.outputFiles.find((file) => file.path.endsWith('.map'));
  if (code === undefined || map === undefined) throw new Error('esbuild produced no bundle');
  return {
    code: code.contents,
    map: map.contents,
    minified: code.contents.byteLength,
    gzipped: gzipSync(code.contents, { level: 9 }).byteLength,
  };
}

async function main(): Promise<void> {
  const bundle = await bundleClient();
  await mkdir(new URL('../dist/client/', import.meta.url), { recursive: true });
  await writeFile(CLIENT_BUNDLE_PATH, bundle.code);
  await writeFile(`${CLIENT_BUNDLE_PATH}.map`, bundle.map);
  const kb = (n: number): string => `${(n / 1024).toFixed(2)} KB`;
  console.log(
    `${CLIENT_BUNDLE_PATH.slice(root.length)}: ${kb(bundle.minified)} minified, ${kb(bundle.gzipped)} gzipped`,
  );
  if (bundle.gzipped > GZIP_BUDGET) {
    throw new Error(`the client bundle is over its budget of ${kb(GZIP_BUDGET)} gzipped`);
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exitCode = 1;
  });
}
