// Measures what young-generation collections (scavenges) move to the old generation while a
// container that has been through full collections sees members come and go: what a set or map of
// live sessions keeps of the ones that ended (src/live-set.ts). V8's own `gc()`, exposed for this
// process at run time.
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (options: { type: 'major' | 'minor'; execution: 'sync' }) => void;

function oldSpaceUsed(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === 'old_space')!.space_used_size;
}

/** A member's payload: this many bytes of array in the young generation, never shared. */
export const PAYLOAD_BYTES = 32 * 1024;

export function payload(seed: number): number[] {
  return new Array<number>(PAYLOAD_BYTES / 8).fill(seed);
}

/**
 * Runs `setUp` and moves what it made to the old generation (two full collections), then runs
 * `churn` and two young collections: returns the bytes the old generation grew by. Whatever
 * `churn` let go of and nothing old points to stays young and is collected; what an old object
 * (live or not) still points to is moved to the old generation.
 */
export function promotedBy(setUp: () => void, churn: () => void): number {
  setUp();
  gc({ type: 'major', execution: 'sync' });
  gc({ type: 'major', execution: 'sync' });
  gc({ type: 'minor', execution: 'sync' });
  const before = oldSpaceUsed();
  churn();
  gc({ type: 'minor', execution: 'sync' });
  gc({ type: 'minor', execution: 'sync' });
  return oldSpaceUsed() - before;
}
