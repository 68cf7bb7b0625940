/** The daemon's log: one line per event on stderr, with a timestamp and level. */
import type { Logger } from '../log.js';

/**
 * A Logger writing `ISO-time prefix level: message` lines to stderr; `quiet`
 * drops info lines except the ready line, which scripts wait for.
 */
export function stderrLogger(prefix: string, quiet = false): Logger {
  return (level, message) => {
    // --quiet keeps the ready line: scripts wait for it.
    if (quiet && level === 'info' && !message.startsWith('ready')) return;
    process.stderr.write(`${new Date().toISOString()} ${prefix} ${level}: ${message}\n`);
  };
}
