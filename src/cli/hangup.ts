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
