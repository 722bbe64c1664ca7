/**
 * The pino root logger and its redaction rules. Sessions log through child loggers carrying
 * their session id. Secrets (passwords, SASL blobs, bind passwords) are never passed to a
 * logger; the redaction list is a second line of defence, not the first.
 */
import { writeSync } from 'node:fs';
import { pino } from 'pino';
import type { Logger } from 'pino';
import type { DestinationStream } from 'pino';

export type { Logger };

/**
 * Keys whose values are censored at the top level of a log object. Wildcard paths (`*.x`) would
 * cost a deep walk of every line (measured: ~5 % of CPU per login in the benchmark); mailfront
 * never nests secrets in log objects, and the test suite scans every line it logs for them.
 */
const REDACT_PATHS = ['password', 'bindPassword', 'proxyPassword', 'probePassword', 'bind_password', 'proxy_password', 'auth_password', 'token', 'sasl', 'credentials', 'authorization', 'clientSecret', 'client_secret'];

/**
 * Log lines waiting for stdout beyond this are dropped, not buffered without bound: a stalled
 * log reader must not stall or swell the proxy.
 */
const MAX_PENDING_LOG_BYTES = 16 * 1024 * 1024;

/**
 * Lines are gathered up to this many bytes (about 35 login lines) before a write: each write is
 * a job for libuv's thread pool, and its hand-offs (futex, eventfd, wake-ups) cost more than the
 * write itself. Measured: 4 futex calls and 5 other syscalls per login when every burst was
 * written at once; 0.9 system calls per warm login fewer with 12 KiB than with 4 KiB, and 0.988
 * of the CPU (docs/performance.md, "System calls per warm login"). SonicBoom wants it below its
 * maxWrite, 16 KiB.
 */
export const LOG_BATCH_BYTES = 12 * 1024;

/** A quiet process's lines wait at most this long for the batch to fill. */
export const LOG_FLUSH_INTERVAL_MS = 200;

/**
 * The `time` field of a line, in ISO 8601 UTC as pino's isoTime writes it. Formatting a Date
 * costs about 2 µs, and a login logs two lines: the text up to the second is kept and only the
 * milliseconds are written for each line. Exported for its test.
 */
export function isoTimeField(now = Date.now()): string {
  const second = now - (now % 1000);
  if (second !== cachedSecond) {
    cachedSecond = second;
    cachedPrefix = `,"time":"${new Date(second).toISOString().slice(0, 20)}`;
  }
  const ms = now - second;
  return `${cachedPrefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z"`;
}
let cachedSecond = Number.NaN;
let cachedPrefix = '';

/**
 * Creates the root logger writing JSON lines to `destination`. By default that is stdout,
 * written asynchronously in batches of LOG_BATCH_BYTES or every LOG_FLUSH_INTERVAL_MS, whichever
 * comes first; whatever is pending is flushed synchronously when the process exits (unless given
 * up: dropPendingLog()).
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const stream = destination ?? pino.destination({ dest: 1, sync: false, minLength: LOG_BATCH_BYTES, maxLength: MAX_PENDING_LOG_BYTES });
  if (destination === undefined) {
    const destination = stream as unknown as StdoutDestination;
    stdoutDestinations.push(destination);
    watchLogLoss(stream as unknown as LossSource);
    const flusher = flushWhenPending(destination);
    // Its reader gone (EPIPE), stdout takes nothing more, for good, and pino writes no more lines
    // to it; but the batch that failed stays pending, and each flush (every interval, and the
    // stop's) wrote it again and failed again: five write errors a second, counted, for ever.
    (stream as unknown as LossSource).on('error', (error) => {
      if ((error as NodeJS.ErrnoException).code !== 'EPIPE') return;
      clearInterval(flusher);
      destination.flush = (done) => done?.();
    });
  }
  const options = {
    level,
    base: { name: 'mailfront' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: () => isoTimeField(),
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return pino(options, stream);
}

/**
 * Every LOG_FLUSH_INTERVAL_MS, writes the lines of a batch that has not filled. SonicBoom's own
 * periodicFlush flushed at every interval, lines pending or not, and a flush of nothing is a
 * write of nothing all the same: a job for libuv's thread pool (futex hand-offs, a write(2) of 0
 * bytes, the eventfd back to the loop), five times a second on an idle process too.
 */
function flushWhenPending(stream: StdoutDestination): NodeJS.Timeout {
  // `_len` is SonicBoom's own: should a release rename it, every interval flushes again, as
  // periodicFlush did, rather than a quiet process's lines waiting for a batch to fill.
  return setInterval(() => {
    if (stream.destroyed) return;
    if (typeof stream._len !== 'number' || stream._len > 0) stream.flush();
  }, LOG_FLUSH_INTERVAL_MS).unref();
}

/**
 * Log lines stdout did not take while the process ran (mailfront_log_write_errors_total by kind,
 * mailfront_log_bytes_dropped_total). The log is the audit trail (logins, failovers, kicks): its
 * loss is said on stderr, which a service manager keeps apart, and counted for an alert.
 * `closed`: EPIPE, the pipe's reader gone, after which pino writes nothing more, for good;
 * `failed`: any other error (ENOSPC, EIO), after which the lines are kept (up to
 * MAX_PENDING_LOG_BYTES) and written again, so that nothing is lost if stdout takes them again.
 */
export const logLoss = { writeErrors: { closed: 0, failed: 0 }, bytesDropped: 0 };

/** What watchLogLoss() listens to: pino's stdout destination (a SonicBoom). */
export interface LossSource {
  on(event: 'error', listener: (error: Error) => void): unknown;
  on(event: 'drop', listener: (data: string | Uint8Array) => void): unknown;
}

/**
 * What mailfront does meanwhile, as watchLogLoss() says it on stderr: it starts (until the
 * server is up), it serves, it stops (a signal's stop, its last lines waited for `ms`), or it
 * exits as its start failed (the same wait). Set by the CLI's serve.
 */
export type LogLossPhase = { readonly kind: 'starting' } | { readonly kind: 'serving' } | { readonly kind: 'stopping'; readonly ms: number } | { readonly kind: 'failed-start'; readonly ms: number };
let lossPhase: LogLossPhase = { kind: 'starting' };

export function setLogLossPhase(phase: LogLossPhase): void {
  lossPhase = phase;
}

/** What the process does meanwhile, by phase, as the stderr line of a write error says it. */
const LOSS_DOING: Readonly<Record<LogLossPhase['kind'], string>> = {
  starting: 'mailfront goes on with its start',
  serving: 'mailfront goes on serving',
  stopping: 'mailfront goes on with its stop',
  'failed-start': 'mailfront exits, as its start failed',
};

/**
 * The stderr line for a write error of stdout, in the phase the process is in: while it starts or
 * serves, the lines are lost until a restart (EPIPE) or kept to be written again; while it stops
 * or exits, what stdout has not taken within the phase's wait is given up.
 */
function lossText(code: string, closed: boolean): string {
  const phase = lossPhase;
  const metric = closed ? 'mailfront_log_write_errors_total{kind="closed"}' : 'mailfront_log_write_errors_total{kind="failed"}, mailfront_log_bytes_dropped_total';
  // The wait of a stop or a failed start; none while the process starts or serves.
  const ms = 'ms' in phase ? phase.ms : undefined;
  const then =
    closed ? (ms === undefined ? 'log lines are lost from now on, until a restart' : 'log lines are lost')
    : ms === undefined ? `keeps the lines (up to ${MAX_PENDING_LOG_BYTES} bytes) to write them again once stdout takes them; past that they are dropped`
    : `gives up the lines stdout has not taken within ${ms / 1000} s`;
  return `mailfront: log lines cannot be written to stdout (${closed ? 'EPIPE: its reader has gone' : code}); ${LOSS_DOING[phase.kind]}, and ${then} (${metric})\n`;
}

/** How often at most stderr is told of lines dropped for a stalled reader (the count goes on). */
const DROP_NOTICE_INTERVAL_MS = 60_000;

/**
 * Counts and says on stderr what `stream` fails to write. A write error is said once per error
 * code: EPIPE (the pipe's reader has gone; pino then writes nothing more, for good), or another
 * (a full disk: the lines are kept and written again once it takes them, up to
 * MAX_PENDING_LOG_BYTES, then dropped); bytes dropped for a reader that has stalled or a stdout
 * that keeps failing, at most once a minute; each says what the process does meanwhile
 * (setLogLossPhase()). Serving goes on: the sessions matter more than their
 * log lines. Without this, a log shipper that exited left mailfront serving with no log line and
 * nothing on stderr.
 */
export function watchLogLoss(stream: LossSource, stderr: (text: string) => void = writeStderr, now: () => number = Date.now): void {
  const said = new Set<string>();
  // pino's own listener re-emits an error that is not EPIPE: one error, seen twice.
  let last: Error | undefined;
  let noticeAt = -Infinity;
  stream.on('error', (error) => {
    if (error === last) return;
    last = error;
    const code = (error as NodeJS.ErrnoException).code ?? error.message;
    const closed = code === 'EPIPE';
    logLoss.writeErrors[closed ? 'closed' : 'failed']++;
    if (said.has(code)) return;
    said.add(code);
    stderr(lossText(code, closed));
  });
  stream.on('drop', (data) => {
    logLoss.bytesDropped += typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
    if (now() - noticeAt < DROP_NOTICE_INTERVAL_MS) return;
    noticeAt = now();
    stderr(`mailfront: stdout has not taken ${MAX_PENDING_LOG_BYTES} bytes of log lines (its reader stalled, or its writes fail): ${logLoss.bytesDropped} bytes dropped so far (mailfront_log_bytes_dropped_total)\n`);
  });
}

/**
 * Writes `text` to stderr now, or not at all: stderr may be gone, or the stalled stdout's pipe
 * (non-blocking once node opened it), and neither serving nor an exit may wait for it.
 */
export function writeStderr(text: string): void {
  try {
    writeSync(2, text);
  } catch {
    // EAGAIN, EPIPE: nobody reads it either.
  }
}

/** What dropPendingLog(), flushLog() and flushWhenPending() read, call and change of pino's stdout destination (a SonicBoom). */
interface StdoutDestination {
  /** Bytes written to it and not yet to stdout (SonicBoom 4's own field). */
  readonly _len: number;
  readonly destroyed: boolean;
  flush(done?: (error?: Error | null) => void): void;
  flushSync(): void;
}

const stdoutDestinations: StdoutDestination[] = [];

/**
 * Gives up the log lines not yet written to stdout, for an exit that cannot wait for them (its
 * reader has stalled); the number of bytes given up. At exit pino flushes a destination
 * synchronously, and SonicBoom retries a write that stdout refuses (EAGAIN: a pipe nobody reads)
 * every 100 ms for ever: the process never ended, until SIGKILL.
 */
export function dropPendingLog(): number {
  let dropped = 0;
  for (const destination of stdoutDestinations) {
    dropped += destination._len;
    destination.flushSync = () => undefined;
  }
  return dropped;
}

/**
 * dropPendingLog(), said on stderr with `why` when there was something to drop: for an exit that
 * will not wait for the rest of the log (a second signal, a stdout that takes nothing).
 */
export function giveUpLog(why: string): void {
  const dropped = dropPendingLog();
  if (dropped > 0) writeStderr(`mailfront: ${why}: ${dropped} bytes of log dropped at exit\n`);
}

/** How long flushLog() waits for stdout to take the lines: a reader that stalls must not hold up what waits on it. */
const LOG_FLUSH_WAIT_MS = 1_000;

/**
 * Writes the lines pending for stdout now, and resolves once stdout has taken them (or after
 * LOG_FLUSH_WAIT_MS): for the rare line that must outlive a kill right after the answer it
 * precedes (a failover written), which the batching would otherwise hold for up to
 * LOG_FLUSH_INTERVAL_MS. Not for a hot path: each call is a write of its own. SonicBoom's
 * flushSync() is not used: on a pipe nobody reads it retries for ever, the event loop blocked.
 */
export async function flushLog(): Promise<void> {
  const deadline = performance.now() + LOG_FLUSH_WAIT_MS;
  for (const destination of stdoutDestinations) {
    // A flush asked while a write is under way ends with that write: asked again for what was
    // left, while each flush writes some (one that fails, stdout closed, writes none).
    for (let pending = Infinity; destination._len > 0 && destination._len < pending && performance.now() < deadline; ) {
      pending = destination._len;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadline - performance.now());
        destination.flush(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

/** What logWritten() waits on: a logger, or pino's stdout destination itself. */
export interface FlushableLog {
  flush(done: (error?: Error | null) => void): void;
}

/**
 * Resolves once every line logged so far is written, or after `ms` (a log reader that has
 * stalled), or once stdout refuses them (a write error: ENOSPC, EIO, EPIPE). For the end of a
 * stop (`when` says which on stderr): exiting with a batch still being written by libuv's thread
 * pool loses it, or lets the lines the exit handler writes at once land before it
 * (`server.stopped` was not always the log's last line). What is not written by then is given up,
 * so that the exit's own flush does not retry it for ever (it did, every 100 ms, on a full disk:
 * the stop never ended; and on a pipe whose reader had gone, after a start that failed).
 */
export function logWritten(log: FlushableLog, ms: number, when = 'while stopping'): Promise<void> {
  return new Promise((resolve) => {
    let settled = false;
    // Once, by the flush or the timer; `givenUp`: why the lines not written are given up (the
    // exit must not wait for them either, see dropPendingLog()), said where it may be read.
    const settle = (givenUp?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (givenUp !== undefined) giveUpLog(`${givenUp} ${when}`);
      resolve();
    };
    const timer = setTimeout(() => settle(`stdout took no log line for ${ms / 1000} s`), ms);
    log.flush((error?: Error | null) => {
      // SonicBoom ends a flush with an fsync of stdout, once its lines are written, and a pipe, a
      // socket or a terminal refuses that (EINVAL): no write failed. Taken for one, it gave up
      // the lines logged meanwhile, and said stdout had refused them.
      const code = (error as NodeJS.ErrnoException | undefined)?.code;
      settle(error !== undefined && error !== null && code !== 'EINVAL' ? `stdout refused the log lines (${code ?? error.message})` : undefined);
    });
  });
}

/**
 * logWritten() for the stdout log of whatever logger createLogger() made (serve makes one, which
 * a start that fails does not hand back); at once when there is none (the config could not be
 * read).
 */
export async function stdoutLogWritten(ms: number, when: string): Promise<void> {
  await Promise.all(stdoutDestinations.map((destination) => logWritten(destination, ms, when)));
}
