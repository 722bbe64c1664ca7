/**
 * What the kernel says of a loopback TCP connection's timers (/proc/net/tcp and tcp6): whether
 * keepalive runs on a connection a listener accepted, and when its first probe is due.
 */
import assert from 'node:assert/strict';
import { procNetPort, procNetTcpRows } from './servers/ports.js';
import { setTimeout as sleep } from 'node:timers/promises';

/** The timer of the connection accepted on `listenerPort` from `clientPort` (/proc/net/tcp's "tr:tm->when"), if listed. */
export function tcpTimerOf(listenerPort: number, clientPort: number): string | undefined {
  const rows = procNetTcpRows(true).filter((f) => f[1]!.endsWith(`:${procNetPort(listenerPort)}`) && f[2]!.endsWith(`:${procNetPort(clientPort)}`));
  return rows[0]?.[5];
}

/**
 * Asserts that the kernel runs the keepalive timer (tr 2, sk_timer) of the connection accepted on
 * `listenerPort` from `clientPort`, its first probe due within 60 s (the listener's TCP_KEEPIDLE).
 * While a write waits for its (delayed) ACK, the retransmission timer (1) shows instead: waits up to 2 s.
 */
export async function assertKeepaliveTimer(listenerPort: number, clientPort: number): Promise<void> {
  let field = tcpTimerOf(listenerPort, clientPort);
  for (let i = 0; i < 40 && !field?.startsWith('02:'); i++) {
    await sleep(50);
    field = tcpTimerOf(listenerPort, clientPort);
  }
  assert.ok(field !== undefined, `the connection from port ${clientPort} to ${listenerPort} is listed`);
  const [timer, when] = field.split(':');
  assert.equal(timer, '02', `keepalive runs on the connection from port ${clientPort} (${field})`);
  const seconds = Number.parseInt(when!, 16) / 100;
  assert.ok(seconds > 50 && seconds <= 60, `its first probe is due in ${seconds} s`);
}
