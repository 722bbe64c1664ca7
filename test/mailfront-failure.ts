import assert from 'node:assert/strict';
import { MailfrontError } from '../src/errors.js';

/** The MailfrontError `promise` rejects with; fails the test if it resolves or rejects with anything else. */
export async function mailfrontFailure(promise: Promise<unknown>): Promise<MailfrontError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof MailfrontError, String(error));
    return error;
  }
  assert.fail('expected a failure');
}
