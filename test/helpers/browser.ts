/**
 * Headless Chromium for the e2e tests: the Debian package's /usr/bin/chromium
 * (or `CHROMIUM_PATH`), driven by playwright-core, in a throwaway profile.
 * Every page a test opens records its console errors, so that a test can
 * fail on any it did not cause on purpose.
 */
import assert from 'node:assert/strict';
import { access, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

/** Where the e2e tests save their screenshots (test-results/ is git-ignored). */
export const RESULTS = join(
  fileURLToPath(new URL('../../', import.meta.url)),
  'test-results',
  'e2e',
);

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/**
 * A headless run in a container: no sandbox (it does not start as root, nor
 * in most containers), no GPU; and nothing the browser would fetch on its
 * own (updates, sync, QUIC probes), so that the only traffic is the test's.
 */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** A running Chromium: its one context, and how to end it. */
export interface Chromium {
  context: BrowserContext;
  /** Closes the browser and removes its profile. */
  close(): Promise<void>;
}

/**
 * Launches Chromium in a fresh profile (removed by `close`), once it has
 * checked that the binary is there: a missing browser fails with how to
 * install it, not with playwright's spawn error. Creates {@link RESULTS}.
 */
export async function launchChromium(
  options: { viewport?: { width: number; height: number } } = {},
): Promise<Chromium> {
  await access(CHROMIUM).catch(() => {
    throw new Error(
      `no Chromium at ${CHROMIUM}: install the Debian package (apt-get install chromium) or set CHROMIUM_PATH`,
    );
  });
  await mkdir(RESULTS, { recursive: true });
  const userDataDir = await mkdtemp(join(tmpdir(), 'pushwire-chromium-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      ...(options.viewport === undefined ? {} : { viewport: options.viewport }),
    });
  } catch (error) {
    await rm(userDataDir, { recursive: true, force: true });
    throw error;
  }
  return {
    context,
    async close() {
      await context.close();
      await rm(userDataDir, { recursive: true, force: true });
    },
  };
}

/** A console error or uncaught exception of a page, and the script it came from. */
export interface ConsoleError {
  text: string;
  url: string;
}

/** A new page, with every console error and uncaught exception it produces from now on. */
export async function openPage(
  context: BrowserContext,
): Promise<{ page: Page; errors: ConsoleError[] }> {
  const page = await context.newPage();
  const errors: ConsoleError[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error')
      errors.push({ text: message.text(), url: message.location().url });
  });
  page.on('pageerror', (error) => errors.push({ text: `uncaught: ${error.message}`, url: '' }));
  return { page, errors };
}

/**
 * Fails on any console error that none of `allowed` matches: those are the
 * browser's own lines for the network failures a test causes on purpose.
 */
export function assertConsole(errors: ConsoleError[], allowed: RegExp[] = []): void {
  const unexpected = errors.filter((e) => !allowed.some((pattern) => pattern.test(e.text)));
  assert.deepEqual(unexpected, [], 'console errors');
}
