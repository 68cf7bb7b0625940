/**
 * `--print-capabilities`: the backend discovery answer of QEMU's
 * docs/interop/vhost-user.json ("Backend program conventions"): a JSON
 * object naming the backend type and, for block, the conventional options
 * the program accepts. It is printed before anything is opened or the
 * native addon is used, so a management tool (libvirt) can probe any build.
 */

/** VHostUserBackendType values vhost-rt serves (the schema's names). */
export type BackendType = 'block' | 'net' | 'console';

/**
 * VHostUserBackendBlockFeature values `vhost-rt blk` supports: `read-only`
 * (the `--read-only` option) and `blk-file` (the `--blk-file FILE` option),
 * accepted as aliases of `--readonly` and `--image`.
 */
export const BLOCK_FEATURES = ['read-only', 'blk-file'] as const;

/** The flag that asks for the capabilities. */
export const PRINT_CAPABILITIES = '--print-capabilities';

/** Help text for {@link PRINT_CAPABILITIES}. */
export const CAPABILITIES_HELP = `  --print-capabilities print the vhost-user backend capabilities (QEMU
                       docs/interop/vhost-user.json) as JSON and exit
`;

/**
 * Whether `argv` asks for the capabilities. Any other argument is then
 * ignored, as the convention allows: a probe passes this flag alone.
 */
export function wantsCapabilities(argv: readonly string[]): boolean {
  return argv.includes(PRINT_CAPABILITIES);
}

/** The capabilities object of a backend of type `type`. */
export function capabilities(type: BackendType): { type: BackendType; features?: string[] } {
  return type === 'block' ? { type, features: [...BLOCK_FEATURES] } : { type };
}

/** Writes {@link capabilities} to stdout as JSON; returns the exit status (0). */
export function printCapabilities(type: BackendType): number {
  process.stdout.write(`${JSON.stringify(capabilities(type), null, 2)}\n`);
  return 0;
}
