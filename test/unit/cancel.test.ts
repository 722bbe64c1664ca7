/**
 * The Canceller the session makes for each login: what the directory and backend code rely on
 * from an AbortSignal, at a fraction of its cost.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Canceller, type Cancellation } from '../../src/cancel.js';

test('abort() tells every listener once, in the order they were added, and sets aborted', () => {
  const c = new Canceller();
  const heard: string[] = [];
  c.addEventListener('abort', () => heard.push('a'));
  c.addEventListener('abort', () => heard.push('b'), { once: true });
  assert.equal(c.aborted, false);
  c.abort();
  c.abort();
  assert.equal(c.aborted, true);
  assert.deepEqual(heard, ['a', 'b']);
});

test('a removed listener is not told; a listener added after the abort is never called', () => {
  const c = new Canceller();
  const heard: string[] = [];
  const gone = (): void => void heard.push('gone');
  c.addEventListener('abort', gone);
  c.addEventListener('abort', () => heard.push('kept'));
  c.removeEventListener('abort', gone);
  c.removeEventListener('abort', gone);
  c.abort();
  c.addEventListener('abort', () => heard.push('late'));
  assert.deepEqual(heard, ['kept']);
});

test('a listener that removes itself or another while being told does not skip anyone', () => {
  const c = new Canceller();
  const heard: string[] = [];
  const second = (): void => void heard.push('second');
  c.addEventListener('abort', () => {
    heard.push('first');
    c.removeEventListener('abort', second);
  });
  c.addEventListener('abort', second);
  c.abort();
  assert.deepEqual(heard, ['first', 'second']);
});

test('an AbortSignal is a Cancellation: the same code takes either', () => {
  const listen = (signal: Cancellation): (() => boolean) => {
    let told = false;
    signal.addEventListener('abort', () => (told = true), { once: true });
    return () => told && signal.aborted;
  };
  const controller = new AbortController();
  const fromSignal = listen(controller.signal);
  const canceller = new Canceller();
  const fromCanceller = listen(canceller);
  controller.abort();
  canceller.abort();
  assert.equal(fromSignal(), true);
  assert.equal(fromCanceller(), true);
});
