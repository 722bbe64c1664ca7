// Self-test of the harness's Cyrus stop: after a connection that hung up at once, Cyrus 3.6's master often spins
// once its children have exited instead of exiting itself (servers/cyrus.ts, withPromptStop); a
// stop must not wait out the 10 s before its SIGKILL for that, nor leave a process behind.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { describe, it } from 'node:test';
import { isAlive, startCyrus } from './servers/index.js';

/** Connects to 127.0.0.1:`port` and hangs up at once (as a check that a port accepts does). */
function connectOnce(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve();
    });
    socket.once('error', reject);
  });
}

describe('a Cyrus stop after clients connected', () => {
  it('ends within seconds, every time, with the master gone', async () => {
    // Before the fix, four stops in a row took 10 s at least once in every run tried.
    for (let round = 1; round <= 4; round++) {
      const cyrus = await startCyrus({ users: [], proxyAdmin: { name: 'proxyadmin', password: 'proxy-pw-unused' } });
      const pid = cyrus.pid;
      await connectOnce(cyrus.imapPort);
      await connectOnce(cyrus.pop3Port);
      const started = Date.now();
      await cyrus.stop();
      const ms = Date.now() - started;
      assert.ok(ms < 3_000, `round ${round}: the stop took ${ms} ms (its SIGKILL deadline is 10 s)`);
      assert.equal(isAlive(pid), false, `round ${round}: the master (pid ${pid}) is gone`);
    }
  });
});
