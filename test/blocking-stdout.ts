/**
 * Preloaded (`node --import`) into the test runner and into every test file's process by
 * scripts/test.sh. With `--test-force-exit`, a test file's process exits as soon as its tests are
 * done, and on Linux its report, written to the runner through a non-blocking pipe, can still be
 * in node's buffers then: the last verdicts are lost and the run counts fewer tests than ran,
 * with `# fail 0` (nodejs/node#64833; seen here as one missing `ok` of 559). A blocking stdout
 * is written out before each write returns, so nothing is left to lose.
 */
const handle = (process.stdout as unknown as { _handle?: { setBlocking?: (blocking: boolean) => unknown } })._handle;
if (typeof handle?.setBlocking === 'function') handle.setBlocking(true);
