/**
 * How the secret scans look for a secret in log text: shared by the suite-wide scan
 * (zz-secrets.test.ts) and the scans each test file runs over its own logs (front.ts).
 */

/** Shorter secrets would match by chance; registering one is a mistake in the test. */
export const MIN_SECRET_CHARS = 6;

/** The forms a secret could take in a log line: as is, JSON-escaped, and base64 at each of the 3 alignments. */
export function formsOf(secret: string): string[] {
  const forms = new Set([secret, JSON.stringify(secret).slice(1, -1)]);
  for (let pad = 0; pad < 3; pad++) {
    // base64 of the secret preceded by `pad` bytes: the characters that depend only on the secret.
    const encoded = Buffer.concat([Buffer.alloc(pad), Buffer.from(secret, 'utf8')]).toString('base64');
    const start = Math.ceil((pad * 4) / 3) + (pad === 0 ? 0 : 1);
    const end = encoded.length - 4;
    if (end - start >= 8) forms.add(encoded.slice(start, end));
  }
  forms.add(Buffer.from(secret, 'utf8').toString('base64'));
  return [...forms].filter((f) => f.length >= MIN_SECRET_CHARS);
}

/** Each line of `lines` holding one of `secrets` in any of its forms, described (empty when none does). */
export function secretsIn(lines: readonly string[], secrets: Iterable<string>): string[] {
  const needles = new Map<string, string>();
  for (const secret of secrets) for (const form of formsOf(secret)) needles.set(form, secret);
  const found: string[] = [];
  lines.forEach((line, i) => {
    for (const [needle, secret] of needles) {
      if (line.includes(needle)) found.push(`line ${i + 1}: ${JSON.stringify(secret)}${needle === secret ? '' : ` (as ${needle})`} in ${line.slice(0, 300)}`);
    }
  });
  return found;
}
