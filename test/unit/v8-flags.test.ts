import assert from 'node:assert/strict';
import { test } from 'node:test';
import { serveV8Flags } from '../../src/cli/v8-flags.js';

test('serve turns off lazy feedback allocation on Node 20 only, and not twice', () => {
  assert.deepEqual(serveV8Flags('20.20.2', []), ['--no-lazy-feedback-allocation']);
  assert.deepEqual(serveV8Flags('20.0.0', ['--enable-source-maps']), ['--no-lazy-feedback-allocation']);
  // Given on node's command line already (the faster way on Node 20): nothing left to set.
  assert.deepEqual(serveV8Flags('20.20.2', ['--no-lazy-feedback-allocation']), []);
  // Measured to cost CPU on Node 22; unmeasured elsewhere.
  assert.deepEqual(serveV8Flags('22.23.5', []), []);
  assert.deepEqual(serveV8Flags('24.1.0', []), []);
});
