/**
 * NBD URIs as `--image` takes them (the NBD URI standard, NBD's
 * doc/uri.md): `nbd://HOST[:PORT]/EXPORT`, `nbds://...` (TLS),
 * `nbd+unix:///EXPORT?socket=PATH` and `nbds+unix://...`. libnbd parses
 * them (nbd_connect_uri); this module only recognises them, so that the
 * engine is chosen and a malformed one is refused on the main thread with a
 * message that names it, before any worker starts.
 */
import { ConfigError } from '../errors.js';

/** URI schemes the nbd engine accepts (libnbd also knows +vsock; not offered). */
export const NBD_URI_SCHEMES = ['nbd', 'nbds', 'nbd+unix', 'nbds+unix'] as const;

/** Port of `nbd://HOST/EXPORT` without one (IANA's NBD port). */
export const NBD_DEFAULT_PORT = 10809;

const SCHEME = /^([a-z][a-z0-9+.-]*):\/\//i;

/** True when `image` is written as an NBD URI (any `nbd...://` scheme), valid or not. */
export function looksLikeNbdUri(image: string): boolean {
  const m = SCHEME.exec(image);
  return m?.[1].toLowerCase().startsWith('nbd') === true;
}

/**
 * Checks an NBD URI's shape: a known scheme, a host (TCP) or a `socket=`
 * parameter (unix), a port in 1..65535. Throws ConfigError naming the URI.
 * Returns the URI unchanged: libnbd does the real parsing.
 */
export function checkNbdUri(uri: string): string {
  const bad = (why: string) => new ConfigError(`--image ${uri}: not a usable NBD URI (${why})`);
  const m = SCHEME.exec(uri);
  const scheme = m?.[1].toLowerCase() ?? '';
  if (!(NBD_URI_SCHEMES as readonly string[]).includes(scheme))
    throw bad(`scheme must be one of ${NBD_URI_SCHEMES.map((s) => `${s}://`).join(', ')}`);
  let url: URL;
  try {
    // WHATWG URL parses unknown schemes opaquely but keeps host, port, path and query.
    url = new URL(uri);
  } catch {
    throw bad('does not parse as a URI');
  }
  if (scheme.endsWith('+unix')) {
    if (url.host !== '') throw bad('a unix-socket URI has no host: nbd+unix:///EXPORT?socket=PATH');
    if (!url.searchParams.get('socket')) throw bad('missing ?socket=PATH');
    return uri;
  }
  if (url.hostname === '') throw bad('missing host: nbd://HOST[:PORT]/EXPORT');
  if (url.port !== '') {
    const port = Number(url.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad('port must be 1..65535');
  }
  return uri;
}
