/**
 * V8 options `mailfront serve` sets for itself, each chosen by measurement on the Node.js release
 * it applies to (docs/performance.md, "V8's lazy feedback allocation").
 *
 * `--no-lazy-feedback-allocation`, on Node 20 only. Node 20's V8 (11.3) gives a function its
 * inline caches' storage only after it has run for a while, and in that state the constructors
 * of node's sockets and streams kept missing their caches on every login (property lookups and
 * map transitions in V8's runtime). Allocating the storage at once cut mailfront's CPU per warm
 * login by 6.5 % when set here, at the start of `serve`, and by 10 % when given on node's command
 * line (where it also covers node's own bootstrap). On Node 22 (V8 12.4) the same option cost 6 %
 * more, so it is left alone there.
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

/** Sets serveV8Flags() in this process; returns what it set. Called before the server's modules load. */
export function applyServeV8Flags(): string[] {
  const flags = serveV8Flags();
  for (const flag of flags) setFlagsFromString(flag);
  return flags;
}
