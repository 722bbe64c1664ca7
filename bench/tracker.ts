/**
 * The IMAP response tracker in a loop: what the splice spends per 64 KiB of line-dense backend
 * output (flag synchronisations, SEARCH, LIST) to know where responses end. Bounded: 40 chunks,
 * 20 untimed and 200 timed passes.
 *
 * Usage: node dist/bench/tracker.js [LINE_BYTES]   (default 70, a `FETCH (UID FLAGS RFC822.SIZE)` line)
 */
import { ImapResponseBoundary } from '../src/protocol/imap/boundary.js';

const CHUNK = 64 * 1024;
const lineBytes = Math.max(8, Number(process.argv[2] ?? 70));
const line = `* 1 FETCH (${'x'.repeat(lineBytes - 15)})\r\n`;
const data = Buffer.from(line.repeat(Math.ceil((CHUNK * 40) / line.length)));
const chunks: Buffer[] = [];
for (let at = 0; at + CHUNK <= data.length; at += CHUNK) chunks.push(data.subarray(at, at + CHUNK));
const tracker = new ImapResponseBoundary();
for (let pass = 0; pass < 20; pass++) for (const chunk of chunks) tracker.observe(chunk);
const passes = 200;
const started = process.hrtime.bigint();
for (let pass = 0; pass < passes; pass++) for (const chunk of chunks) tracker.observe(chunk);
const ns = Number(process.hrtime.bigint() - started);
const observed = passes * chunks.length;
process.stdout.write(`${line.length}-byte lines: ${(ns / observed / 1000).toFixed(1)} µs per 64 KiB chunk, ${((observed * CHUNK) / ns * 1000).toFixed(0)} MB/s\n`);
