/**
 * How the session and the backend login hand received bytes to a protocol machine: through one
 * read buffer shared by the whole process (src/net/direct-io.ts), which is read into again as
 * soon as `receive()` returns. The harnesses feed every chunk this way, so a machine that keeps
 * received bytes without copying them fails every test that looks at what it kept.
 */
export function feedShared<T>(receive: (chunk: Uint8Array) => T, piece: Uint8Array): T {
  const shared = Buffer.from(piece);
  const result = receive(shared);
  shared.fill(0x5a);
  return result;
}
