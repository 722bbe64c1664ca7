/**
 * V8 options `mailfront serve` sets for itself, each chosen by measurement on the Node.js release
 * it applies to (docs/performance.md, "V8's lazy feedback allocation").
 *
 * `--no-lazy-feedback-allocation`, on Node 20 only. Node 20's V8 (11.3) gives a function its
 * inline caches' storage only after it has run for a while. In mailfront on Node 20, every
 * socket's options object reached node's `Socket` and `Duplex` constructors with a map of its
 * own, and about 30 of their inline caches missed for every socket (V8's `--log-ic`); with the
 * option they stop missing. It cut mailfront's CPU per warm login by 6.5 to 8.5 % when set here,
 * at the start of `serve`, and by 10 % when given on node's command line (where it also covers
 * node's own bootstrap). On Node 22 (V8 12.4) the same option cost 4 to 6 % more, so it is left
 * alone there. Why it helps mailfront is not fully known: the floor relay of bench/floor.ts shows
 * the same misses, keeps them with the option, and does not gain from it.
 */
import { setFlagsFromString } from 'node:v8';

interface V8Flag {
  readonly flag: string;
  /** The node major versions it was measured to help on. */
  readonly nodeMajors: readonly number[];
}

const FLAGS: readonly V8Flag[] = [{ flag: '--no-lazy-feedback-allocation', nodeMajors: [20] }];

/** The flags for this node (`nodeVersion`, as in process.versions.node) not already on its command line (`execArgv`). */
export function serveV8Flags(nodeVersion: string = process.versions.node, execArgv: readonly string[] = process.execArgv): string[] {
  const major = Number(nodeVersion.split('.')[0]);
  return FLAGS.filter((f) => f.nodeMajors.includes(major) && !execArgv.includes(f.flag)).map((f) => f.flag);
}

/** Sets serveV8Flags() in this process. Called before the server's modules load. */
export function applyServeV8Flags(): void {
  for (const flag of serveV8Flags()) setFlagsFromString(flag);
}
