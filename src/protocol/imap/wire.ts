/**
 * Small IMAP wire helpers shared by the pre-auth machine and the backend login dialogue:
 * quoting, safe human text, capability lists, and reading response lines.
 * Must not: hold state, decide what a response means for a session, or do any I/O.
 */

const CONTROL = /[\x00-\x1f\x7f]/;
const CONTROLS = /[\x00-\x1f\x7f]/g;

/** Replaces control characters with spaces and bounds the length, so text is safe on one wire line or log line. */
export function safeText(text: string, maxLength = 200): string {
  // Most text has no control character: one scan, no copy (a backend's capability list is long).
  const cleaned = (CONTROL.test(text) ? text.replace(CONTROLS, ' ') : text).trim();
  return cleaned.length > maxLength ? `${cleaned.slice(0, maxLength)}...` : cleaned;
}

/** An IMAP quoted string for 7-bit text (RFC 3501 §4.3), or null when the value needs a literal. */
export function quoteString(value: string): string | null {
  if (/[^\x01-\x09\x0b\x0c\x0e-\x7f]/.test(value)) return null;
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** A capability list with its atoms separated by single spaces, as the server spelled them. */
export function normalCapabilityList(list: string): string {
  // The usual list needs no change; splitting one of 40 atoms costs more than this scan.
  return /^ | {2}| $/.test(list) ? capabilityAtoms(list).join(' ') : list;
}

/** Splits a capability list into its atoms, keeping the spelling the server used. */
export function capabilityAtoms(list: string): string[] {
  return list.split(' ').filter((atom) => atom.length > 0);
}

/** One IMAP response line taken apart: continuation, untagged or tagged, with its response code. */
export interface ResponseLine {
  readonly kind: 'continuation' | 'untagged' | 'tagged';
  /** The tag of a tagged response, '' otherwise. */
  readonly tag: string;
  /** The first word after the tag, upper-cased (OK, NO, BAD, BYE, PREAUTH, CAPABILITY, ...). */
  readonly word: string;
  /** The response code's name, upper-cased (e.g. CAPABILITY), or null. */
  readonly codeName: string | null;
  /** Everything inside the response code's brackets after its name, or null. */
  readonly codeArgs: string | null;
  /** Everything after the word (including the response code). */
  readonly rest: string;
}

/** Parses a response line without its line end (RFC 3501 §7). */
export function parseResponseLine(line: string): ResponseLine {
  if (line === '+' || line.startsWith('+ ')) {
    return { kind: 'continuation', tag: '', word: '+', codeName: null, codeArgs: null, rest: line.slice(2) };
  }
  const firstSpace = line.indexOf(' ');
  const head = firstSpace < 0 ? line : line.slice(0, firstSpace);
  const afterHead = firstSpace < 0 ? '' : line.slice(firstSpace + 1);
  const secondSpace = afterHead.indexOf(' ');
  const word = (secondSpace < 0 ? afterHead : afterHead.slice(0, secondSpace)).toUpperCase();
  const rest = secondSpace < 0 ? '' : afterHead.slice(secondSpace + 1);
  let codeName: string | null = null;
  let codeArgs: string | null = null;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close > 0) {
      const code = rest.slice(1, close);
      const space = code.indexOf(' ');
      codeName = (space < 0 ? code : code.slice(0, space)).toUpperCase();
      codeArgs = space < 0 ? '' : code.slice(space + 1);
    }
  }
  return { kind: head === '*' ? 'untagged' : 'tagged', tag: head === '*' ? '' : head, word, codeName, codeArgs, rest };
}
