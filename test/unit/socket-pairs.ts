// Connected pairs of loopback sockets, plain and TLS, for the splice's and writeNow's tests.
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { connect as tlsConnect, TLSSocket } from 'node:tls';
import { testCertsPem } from '../integration/servers/certs.js';

export interface Pair {
  /** The socket mailfront holds towards the client, and the client's own end. */
  readonly front: Socket;
  readonly user: Socket;
}

/**
 * A connected pair of loopback TCP sockets (the accepted end and the connecting end);
 * `allowHalfOpen` for both ends, as mailfront accepts clients (off by default, node's default).
 */
export async function tcpPair(allowHalfOpen = false): Promise<Pair> {
  const server: Server = createServer({ allowHalfOpen });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const user = connect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1', allowHalfOpen });
  const [[front]] = await Promise.all([accepted, once(user, 'connect')]);
  server.close();
  return { front, user };
}

/** The same, with TLS between the two ends (half-open as the TCP sockets under them). */
export async function tlsPair(allowHalfOpen = false): Promise<Pair> {
  const { ca, cert, key } = await testCertsPem();
  const { front: plain, user: plainUser } = await tcpPair(allowHalfOpen);
  const front = new TLSSocket(plain, { isServer: true, cert, key });
  const user = tlsConnect({ socket: plainUser, ca, servername: 'localhost' });
  await Promise.all([once(front, 'secure'), once(user, 'secureConnect')]);
  return { front, user };
}
