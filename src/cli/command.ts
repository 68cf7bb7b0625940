/** A `vhost-rt` subcommand: its name, help text and entry point. */
export interface CliCommand {
  name: string;
  /** One line for the top-level help. */
  summary: string;
  /** Full help for `vhost-rt NAME --help`; documents every flag. */
  help: string;
  /** Runs with the arguments after the command name; resolves to the exit code. */
  run(argv: string[]): Promise<number>;
}
