/**
 * Whether this host has an address: bound on port 0 and let go of, as check-config, start and a
 * reload ask of backend.source_addresses and check-config of the listeners' and the HTTP
 * listener's hosts.
 */
import { createSocket } from 'node:dgram';
import { addressFamily } from '../config/schema.js';

/** Why the host will not let a socket bind `address` (an errno code), or null when it will. */
export function bindProblem(address: string): Promise<string | null> {
  return new Promise((resolve) => {
    // A UDP socket: bound and closed, it sends and holds nothing; the kernel asks of a TCP one's
    // source address what it asks of this one's (an address of the host, or IP_FREEBIND).
    const socket = createSocket(addressFamily(address) === 6 ? 'udp6' : 'udp4');
    const done = (problem: string | null): void => {
      try {
        socket.close();
      } catch {
        // Closed already.
      }
      resolve(problem);
    };
    socket.once('error', (error: NodeJS.ErrnoException) => done(error.code ?? error.message));
    socket.bind({ address, port: 0, exclusive: true }, () => done(null));
  });
}
