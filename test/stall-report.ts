/**
 * Preloaded (`node --import`) into every test file's process by scripts/test.sh, with
 * blocking-stdout.ts. A test file still running at 80 % of the runner's per-file timeout (its
 * --test-timeout, which the runner passes on to each file's process) writes on stderr what its
 * event loop is waiting on, and what each of its threads is doing; the runner shows those lines
 * under the file when it reports it timed out. One file once hung until the timeout with no output
 * at all, asleep, no socket open, and nothing told why (oauth-verify: its main thread deadlocked in
 * Node's EC key export, seen only with gdb; test/integration/oauth-idp.ts, makeKey()).
 *
 * What it tells: the resources that keep the loop alive (process.getActiveResourcesInfo(): timers,
 * sockets, child processes, and requests on the libuv thread pool, such as FSReqCallback for a file
 * read under way), and for each thread its state, kernel wait channel and system call
 * (/proc/self/task: the main thread, the four threads of the libuv pool, V8's). No such lines
 * before the timeout: the main thread never came back to its loop, stuck in a synchronous call.
 * The timer is unref'd: it keeps no process alive, and a file done in time never fires it.
 */
import { readFileSync, readdirSync, writeSync } from 'node:fs';

/** When to report, as a share of the per-file timeout: early enough to be read before the runner kills the file. */
const REPORT_AT = 0.8;

function read(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (error) {
    return `(${error instanceof Error ? error.message : String(error)})`;
  }
}

/** One line per thread: its name, state (R running, S asleep, D in the kernel, T stopped), wait channel and system call. */
function threads(): string[] {
  let tasks: string[];
  try {
    tasks = readdirSync('/proc/self/task');
  } catch {
    return ['(no /proc/self/task)'];
  }
  return tasks.map((tid) => {
    const stat = read(`/proc/self/task/${tid}/stat`);
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] || '?';
    return `thread ${tid} ${read(`/proc/self/task/${tid}/comm`)}: state ${state}, wchan ${read(`/proc/self/task/${tid}/wchan`) || '-'}, syscall ${read(`/proc/self/task/${tid}/syscall`)}`;
  });
}

function report(afterMs: number): void {
  const lines = [
    `stall-report: ${process.argv[1] ?? 'this test file'} (pid ${process.pid}) still running after ${afterMs} ms`,
    `stall-report: the event loop waits on: ${process.getActiveResourcesInfo().join(', ') || 'nothing'}`,
    ...threads().map((line) => `stall-report: ${line}`),
  ];
  // Synchronous, and not through process.stderr: whatever state the streams are in, the lines go out now.
  writeSync(2, `${lines.join('\n')}\n`);
}

const timeoutMs = Number(/^--test-timeout=(\d+)$/.exec(process.execArgv.find((arg) => arg.startsWith('--test-timeout=')) ?? '')?.[1] ?? NaN);
// A test file's process under the runner (not the runner itself, not a file run by hand), with a finite timeout.
if (process.env['NODE_TEST_CONTEXT'] !== undefined && Number.isFinite(timeoutMs) && timeoutMs > 0) {
  const afterMs = Math.round(timeoutMs * REPORT_AT);
  setTimeout(() => report(afterMs), afterMs).unref();
}
