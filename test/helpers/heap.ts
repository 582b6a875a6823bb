/**
 * The retained heap, measured after full garbage collections, for the
 * tests that prove memory is given back (issue 19). `gc` is made available
 * without `--expose-gc` on the command line, so that the suites run with
 * the same `node --import tsx --test` as every other.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
/** A full garbage collection. */
export const gc = runInNewContext('gc') as () => void;

/**
 * The heap in use after full collections, in bytes. Waits a turn first: a
 * WeakRef, or what a promise job still holds, is only released once the
 * current job has ended.
 */
export async function retainedHeap(): Promise<number> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

/** Bytes as MB with one decimal, for assertion messages. */
export function mb(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/**
 * A push config with `filters` filters of `comparisons` comparisons each
 * (`a in ["…"]`, the densest construct: two sets per comparison), distinct
 * from every other by `seed`: issue 19's maximal config is
 * `maximalConfig(seed, 15, 256)`, 61 KB of JSON.
 */
export function maximalConfig(
  seed: number,
  filters: number,
  comparisons: number,
): { identities: Record<string, string[]>; filters: Record<string, string> } {
  const identities: Record<string, string[]> = {};
  const sources: Record<string, string> = {};
  for (let f = 0; f < filters; f++) {
    const parts = [`b == "${seed}-${f}"`];
    for (let k = 1; k < comparisons; k++) parts.push(`a in ["${k % 10}"]`);
    identities[`i${f}`] = [];
    sources[`i${f}`] = parts.join(' or ');
  }
  return { identities, filters: sources };
}
