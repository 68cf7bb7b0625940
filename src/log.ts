/**
 * The one logging interface of vhost-rt: a function the embedding program (or
 * the CLI) supplies. Device workers never call it themselves (DESIGN rule 2):
 * their lines travel to the main thread as messages and are logged there.
 */

/** Severity of a log line. */
export type LogLevel = 'info' | 'warn' | 'error';

/** Receives one line; the CLI writes it to stderr, an embedder wherever it likes. */
export type Logger = (level: LogLevel, message: string) => void;
