/**
 * The piece of BER/DER (X.690 §8.1.3) mailfront's own readers share: an element's definite length.
 * Used for an LDAP message's header (auth/ldap.ts, which bounds what a server may send), a
 * TRUSTED CERTIFICATE's trust settings (ca-file.ts) and a password policy control's answer
 * (auth/password-policy.ts).
 */

/**
 * Where the content of the element whose tag is at `at` of `der` starts, and its length: 'short'
 * when `der` ends before the length does, 'bad' for an indefinite length or one of more than
 * 4 bytes (nothing mailfront reads is that long). Whether the content itself fits is the caller's
 * question (a header read from a stream comes before its content).
 */
export function berLength(der: Uint8Array, at: number): { readonly start: number; readonly length: number } | 'short' | 'bad' {
  if (at + 2 > der.length) return 'short';
  let length = der[at + 1]!;
  let start = at + 2;
  if (length & 0x80) {
    const size = length & 0x7f;
    if (size === 0 || size > 4) return 'bad';
    if (start + size > der.length) return 'short';
    length = 0;
    for (let i = 0; i < size; i++) length = length * 256 + der[start + i]!;
    start += size;
  }
  return { start, length };
}
