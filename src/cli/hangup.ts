/**
 * SIGHUP from the first moment the CLI's code runs: main.ts imports this module before anything
 * else, so the handler is in place before the other modules are evaluated and before the
 * (possibly slow) start of serve. SIGHUP's default action ends the process, and serve's own
 * handler came only after its imports and the parsing of its arguments: a `systemctl reload`
 * right after `systemctl start` killed mailfront, which systemd counts as a clean exit. (The
 * moments before node runs any JS are the unit's to cover: RestartForceExitStatus=SIGHUP.)
 *
 * Until a command takes SIGHUP over (serve, once serving) or gives it back (every other command,
 * which it ends as before), a SIGHUP is only counted. No imports: nothing may load before it.
 *
 * SIGTERM and SIGINT likewise: when node is PID 1 of its PID namespace (a container without an
 * init, `docker run` without --init, a Kubernetes pod), the kernel drops a signal the process has
 * no handler for, and serve's handlers came only once the server was up: a SIGTERM during the
 * start was lost, and the process ran on until killed. They are remembered until serve takes
 * them over (it stops once started); another command gives them back, and one that came
 * meanwhile then ends it as it would have.
 */
let received = 0;
const count = (): void => {
  received += 1;
};
process.on('SIGHUP', count);

/** How many SIGHUPs have come since the process started (serve: those during its start). */
export function hangupsReceived(): number {
  return received;
}

/** Stops counting: SIGHUP's default action again, unless the caller has a handler of its own. */
export function releaseHangups(): void {
  process.removeListener('SIGHUP', count);
}

const STOP_SIGNALS = ['SIGTERM', 'SIGINT'] as const;
/** The stop signals so far, in order, until a handler takes them over. */
const stopsReceived: NodeJS.Signals[] = [];
let stopHandler: ((signal: NodeJS.Signals) => void) | undefined;
const stopRequested = (signal: NodeJS.Signals): void => {
  if (stopHandler !== undefined) stopHandler(signal);
  else stopsReceived.push(signal);
};
for (const signal of STOP_SIGNALS) process.on(signal, stopRequested);

/** Hands SIGTERM and SIGINT to `handler`: those received so far at once, in order, then each as it comes. */
export function takeStops(handler: (signal: NodeJS.Signals) => void): void {
  stopHandler = handler;
  for (const signal of stopsReceived.splice(0)) handler(signal);
}

/**
 * Gives SIGTERM and SIGINT their default action back (a command other than serve): one received
 * so far, or still on its way to the handler (a signal is handed to JS by the event loop, after
 * the code running now), is sent again once the handlers are gone, and ends the process as it
 * would have when it came.
 */
export function releaseStops(): void {
  takeStops((signal) => {
    for (const s of STOP_SIGNALS) process.removeListener(s, stopRequested);
    process.kill(process.pid, signal);
  });
}
