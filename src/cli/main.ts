#!/usr/bin/env node
/**
 * The `mailfront` command line: `serve`, `check-config`. Parses arguments, prints, and sets
 * the exit code; everything else is done by main.ts and config/.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig, loadStoreMap } from '../config/load.js';
import { Mailfront } from '../main.js';

const VERSION = (JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../../package.json'), 'utf8')) as { version: string }).version;

const HELP: Record<string, string> = {
  '': `Usage: mailfront <command> [options]

Commands:
  serve          run the frontend (listeners, LDAP, store map)
  check-config   validate a config file and its store map without starting

Options:
  -c, --config FILE   config file (default /etc/mailfront/mailfront.yaml)
  -h, --help          this help; 'mailfront <command> --help' for a command
  -V, --version       print the version
`,
  serve: `Usage: mailfront serve [-c FILE]

Runs mailfront in the foreground with the config FILE. Logs are JSON lines on stdout.
Signals: SIGHUP re-reads the store map; SIGTERM/SIGINT stop accepting, say BYE to sessions
before login and drain spliced sessions (up to 10 s) before exiting.
`,
  'check-config': `Usage: mailfront check-config [FILE | -c FILE]

Validates FILE and the store map it names. Prints every problem with its path and what was
expected, and exits 1 when there is any; prints a summary and exits 0 otherwise.
`,
};

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'V' },
    },
  });
  const [command = '', ...rest] = positionals;
  if (values.version) {
    process.stdout.write(`mailfront ${VERSION}\n`);
    return 0;
  }
  if (values.help || command === '' || command === 'help') {
    process.stdout.write(HELP[command] ?? HELP['']!);
    return command === '' && !values.help ? 2 : 0;
  }
  const configFile = values.config ?? rest[0] ?? '/etc/mailfront/mailfront.yaml';
  switch (command) {
    case 'check-config': {
      const config = loadConfig(configFile);
      const map = loadStoreMap(config.storeMapFile, 1, config.backend);
      const slots = [...map.stores.values()].reduce((n, s) => n + s.slots.size, 0);
      process.stdout.write(`${config.file}: OK (${config.listeners.length} listeners, ${map.stores.size} stores, ${slots} slots)\n`);
      return 0;
    }
    case 'serve': {
      const config = loadConfig(configFile);
      const mailfront = await Mailfront.start(config);
      process.on('SIGHUP', () => mailfront.reloadStoreMap());
      const stop = (): void => {
        void mailfront.stop().then(() => process.exit(0));
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
      return -1;
    }
    default:
      process.stderr.write(`mailfront: unknown command "${command}"\n\n${HELP['']}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (error: unknown) => {
    if (error instanceof ConfigError) process.stderr.write(`mailfront: invalid configuration\n${error.message}\n`);
    else process.stderr.write(`mailfront: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
