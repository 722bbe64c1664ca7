/**
 * The options of the sockets mailfront makes (net.connect), marked so that node's `Socket`
 * constructor does not make new hidden classes for every socket of the process, on Node 20.
 *
 * node's `Socket()` copies its options (`{ ...options }`) and then adds `allowHalfOpen`,
 * `emitClose`, `autoDestroy` and `decodeStrings` to the copy. V8 11.3 (Node 20) copies with an
 * inline cache that, for the few option shapes it has seen (node's own for an accepted connection,
 * mailfront's for a backend's), gives the copy a hidden class (map) that belongs to no transition
 * tree. Each property added to such an object then makes a new map, never shared: three or four
 * maps and their descriptor arrays per socket, made in the old generation. Every socket's options
 * then reach the stream constructors with a map of their own (about 30 inline-cache misses per
 * socket), and the process is in the slow state of
 * docs/performance.md ("What a full collection left behind"): young collections move 0.3 to
 * 1.4 MB each to the old generation instead of 0.02, and a full collection follows every 5 to
 * 15 of them. An options object with a property the cache cannot copy (one not enumerable) turns
 * that copy megamorphic for the whole process: V8 then copies every socket's options the general
 * way, property by property along the shared transitions from `Object`'s map, and no new map is
 * made. A process that had made one more shape of options (a TLS socket, an IMAPS port check)
 * got there by chance; this makes it so from the first backend connection.
 *
 * Node 22's V8 (12.4) has no such fault: 60 connections made there as the test makes them give no
 * such map (V8's map log), 102 on Node 20. The marker is set on Node 20 only. (`serve` used to turn off V8's lazy feedback allocation on Node 20, which had
 * turned the copy megamorphic by an earlier route; with the marker that option cost 6 % more CPU
 * per login, and it is gone.)
 */

/** The property the copy cannot take (not enumerable, so node never sees it among the options). */
const NOT_COPIED_FAST = Symbol('mailfront.notCopiedFast');

const MARK = Number(process.versions.node.split('.')[0]) === 20;

/** `options`, marked on Node 20 (see above); returned for use in place. */
export function markedSocketOptions<T extends object>(options: T): T {
  if (MARK) Object.defineProperty(options, NOT_COPIED_FAST, { value: true, enumerable: false });
  return options;
}
