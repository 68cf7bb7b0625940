// Guest memory that shrinks under the daemon: the registry of guest mappings
// that the SIGBUS handler of sigbus.cc consults. memory.cc registers every
// mapping MmapShared makes, marks it retired when RetireMapping replaced it,
// and unregisters it just before munmap.
#pragma once

#include <cstddef>

namespace vhost_rt {

/**
 * Registers [start, start + length), a MAP_SHARED mapping of a file the
 * front end owns, so that a SIGBUS inside it (the file was truncated under
 * us) is answered with zero pages instead of killing the process. Installs
 * the handler on first use. Call it after mmap and before any view of the
 * mapping exists. Returns false when the range is left unprotected (as every
 * mapping was before this registry): the handler could not be installed, or
 * the table holds 4096 mappings none of which is retired — far
 * more than a daemon maps at once (32 regions per connection; a front end's
 * mappings are retired when it goes).
 */
bool RegisterGuestRange(void* start, size_t length);

/**
 * The range registered at `start` was replaced in place by anonymous memory
 * (retireMapping): it cannot fault any more, so its slot may be reused once
 * the table is full, oldest retirement first. Call it after the replacement.
 */
void RetireGuestRange(void* start);

/**
 * Forgets the range registered at `start`. Call it only when nothing can
 * touch the range any more (the last view is gone), and before munmap hands
 * the addresses back to the kernel.
 */
void UnregisterGuestRange(void* start);

}  // namespace vhost_rt
