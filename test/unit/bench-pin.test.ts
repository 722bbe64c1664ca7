import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PINNED_STEPS, allCpus, cpuPlan, pinnedStep } from '../../bench/pin.js';

test('BENCH_PIN pins the login-rate steps only: FETCH, NOOP, the cpu step and idle memory run on every CPU', () => {
  assert.deepEqual([...PINNED_STEPS].sort(), ['imap', 'master-user', 'pop3']);
  for (const step of ['imap', 'master-user', 'pop3']) assert.equal(pinnedStep(step, true), true, step);
  for (const step of ['noop', 'fetch', 'cpu', 'idle', 'idle-tls']) assert.equal(pinnedStep(step, true), false, step);
  for (const step of PINNED_STEPS) assert.equal(pinnedStep(step, false), false, `${step} without BENCH_PIN`);
});

test('the CPU lists: Dovecot on the last CPU, the rest on the others, every CPU when unpinned', () => {
  assert.deepEqual(cpuPlan(2), { dovecot: '1', rest: '0' });
  assert.deepEqual(cpuPlan(4), { dovecot: '3', rest: '0-2' });
  assert.equal(cpuPlan(1), null);
  assert.equal(allCpus(2), '0-1');
  assert.equal(allCpus(1), '0');
});
