// Guest memory that shrinks under the daemon: the registry of guest mappings
// that the SIGBUS handler of sigbus.cc consults. memory.cc registers every
// mapping MmapShared makes and unregisters it just before munmap.
#pragma once

#include <cstddef>

namespace vhost_rt {

/**
 * Registers [start, start + length), a MAP_SHARED mapping of a file the
 * front end owns, so that a SIGBUS inside it (the file was truncated under
 * us) is answered with zero pages instead of killing the process. Installs
 * the handler on first use. Call it after mmap and before any view of the
 * mapping exists. Returns false when the table is full (the caller unmaps and
 * fails) or the handler could not be installed.
 */
bool RegisterGuestRange(void* start, size_t length);

/**
 * Forgets the range registered at `start`. Call it only when nothing can
 * touch the range any more (the last view is gone), and before munmap hands
 * the addresses back to the kernel.
 */
void UnregisterGuestRange(void* start);

}  // namespace vhost_rt
