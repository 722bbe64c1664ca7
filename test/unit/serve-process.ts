// `mailfront serve` as its own process, for the tests that need the command itself (its signal
// handling, a reload by SIGHUP): its log read as it comes, events awaited with a deadline.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The build's src folder (dist/src). */
export const DIST_SRC = join(dirname(fileURLToPath(import.meta.url)), '../../src');
export const CLI = join(DIST_SRC, 'cli/main.js');

export interface Serve {
  readonly child: ChildProcess;
  /** The log's lines so far. */
  readonly lines: () => Array<Record<string, unknown>>;
  /** The log's events so far. */
  readonly events: () => string[];
  /** Resolves when an event is logged `count` times (or the process ends first: rejects). */
  readonly logged: (event: string, count?: number) => Promise<void>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Runs `mailfront serve -c config`, with `nodeOptions` before the CLI on node's command line. */
export function serve(config: string, nodeOptions: readonly string[] = []): Serve {
  const child = spawn(process.execPath, [...nodeOptions, CLI, 'serve', '-c', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const waiting = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => {
    stdout += d.toString();
    for (const check of waiting) check();
  });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const lines = (): Array<Record<string, unknown>> =>
    stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const events = (): string[] => lines().map((l) => String(l['event']));
  const logged = (event: string, count = 1): Promise<void> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        if (events().filter((e) => e === event).length < count) return;
        waiting.delete(check);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        waiting.delete(check);
        reject(new Error(`no ${event} (x${count}) within 15 s; log: ${events().join(', ')}; stderr: ${stderr}`));
      }, 15_000);
      waiting.add(check);
      check();
      void exited.then(({ code, signal }) => {
        if (!waiting.has(check)) return;
        waiting.delete(check);
        clearTimeout(timer);
        reject(new Error(`serve ended (code ${code}, signal ${signal}) before ${event}; log: ${events().join(', ')}; stderr: ${stderr}`));
      });
    });
  return { child, lines, events, logged, exited };
}

/** Stops serve with SIGTERM; its exit code. */
export async function stop(s: Serve): Promise<number | null> {
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
  return (await s.exited).code;
}
