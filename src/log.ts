/**
 * The pino root logger and its redaction rules. Sessions log through child loggers carrying
 * their session id. Secrets (passwords, SASL blobs, bind passwords) are never passed to a
 * logger; the redaction list is a second line of defence, not the first.
 */
import { pino } from 'pino';
import type { Logger } from 'pino';
import type { DestinationStream } from 'pino';

export type { Logger };

/** Keys whose values are censored wherever they appear at the first three levels of a log object. */
const SECRET_KEYS = ['password', 'bindPassword', 'proxyPassword', 'bind_password', 'proxy_password', 'sasl', 'credentials', 'authorization'];
const REDACT_PATHS = SECRET_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`]);

/** Creates the root logger writing JSON lines to `destination` (stdout by default). */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { name: 'mailfront' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options);
}
