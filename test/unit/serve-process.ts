// `mailfront serve` as its own process, for the tests that need the command itself (its signal
// handling, a reload by SIGHUP): its log read as it comes, events awaited with a deadline.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The build's src folder (dist/src). */
export const DIST_SRC = join(dirname(fileURLToPath(import.meta.url)), '../../src');
export const CLI = join(DIST_SRC, 'cli/main.js');

/** The store map of the tests' configs that route nowhere in particular: one store, one slot (nothing dials it). */
export const ONE_SLOT_STORE_MAP = 'stores:\n  store1:\n    current_master: slot1\n    slots:\n      slot1: { host: 127.0.0.1, imap_port: 1430 }\n';

/** A new temporary folder (named from `prefix`) holding `stores.yaml`, ONE_SLOT_STORE_MAP; the caller removes it. */
export async function folderWithStoreMap(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await writeFile(join(dir, 'stores.yaml'), ONE_SLOT_STORE_MAP);
  return dir;
}

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

/**
 * Runs `mailfront serve -c config`, with `nodeOptions` before the CLI on node's command line, and
 * node run by `wrapper` when given (`['prlimit', '--nofile=300']`: a command that execs the rest).
 */
export function serve(config: string, nodeOptions: readonly string[] = [], wrapper: readonly string[] = []): Serve {
  const command = [...wrapper, process.execPath, ...nodeOptions, CLI, 'serve', '-c', config];
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
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

/**
 * node's options for a serve process that sends itself `signal` when `module` (a file of the
 * build) is evaluated: a loader hook adds `process.kill(process.pid, signal)` to its code. An
 * import is evaluated before the module's own code: the kill runs after every module it imports.
 * Several (module, signal) pairs may be given.
 */
export function signalAt(...at: ReadonlyArray<readonly [module: string, signal: NodeJS.Signals]>): string[] {
  const targets = Object.fromEntries(at.map(([module, signal]) => [new URL(`file://${module}`).href, signal]));
  const hooks = `
    const targets = ${JSON.stringify(targets)};
    export async function load(url, context, next) {
      const loaded = await next(url, context);
      const signal = targets[url];
      if (signal === undefined) return loaded;
      const source = typeof loaded.source === 'string' ? loaded.source : new TextDecoder().decode(loaded.source);
      // After a #! line, which must stay first.
      const cut = source.startsWith('#!') ? source.indexOf('\\n') + 1 : 0;
      return { ...loaded, source: source.slice(0, cut) + "process.kill(process.pid, '" + signal + "');" + source.slice(cut) };
    }`;
  const register = `import { register } from 'node:module'; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(hooks)}`)});`;
  return ['--import', `data:text/javascript,${encodeURIComponent(register)}`];
}

/** Stops serve with SIGTERM; its exit code. */
export async function stop(s: Serve): Promise<number | null> {
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
  return (await s.exited).code;
}
