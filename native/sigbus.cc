// Guest memory that vanishes under the daemon. Guest RAM is a MAP_SHARED
// mapping of a file the front end owns (a memfd): when the front end shrinks
// it (ftruncate) after SET_MEM_TABLE, every access past the new end raises
// SIGBUS, whose default action kills the whole daemon — every device of every
// guest. This module answers such a SIGBUS instead: when the faulting address
// lies in a registered guest mapping it maps private zero pages over the rest
// of that mapping, counts the fault and returns, so the access is retried and
// reads zeros (writes land in pages nobody reads). The worker runtime sees the
// counter move (one Atomics.load per batch on guestFaultCounter()) and stops
// serving the device whose memory it was. A SIGBUS anywhere else is a real
// bug and still kills the process, as it would without this module.
//
// Why this is safe inside Node:
// - Node and V8 leave SIGBUS alone on Linux (V8's WebAssembly trap handler and
//   Node's own handler use SIGSEGV only, which this module never touches), so
//   nobody else expects to see it; a handler that was installed before ours
//   (an embedding program's) still gets every SIGBUS that is not ours.
// - A SIGBUS raised by an access is synchronous: it runs on the faulting thread
//   (a device worker reading or writing guest memory, in JIT code or in a V8
//   builtin's memcpy). Returning from the handler re-executes that one load or
//   store, which now hits the zero page; V8 never learns anything happened. The
//   handler does not touch the JS heap, takes no lock and allocates nothing.
// - Everything the handler calls is async-signal-safe: lock-free atomic loads
//   and read-modify-writes on static storage, mmap (a plain system call; it is
//   not on POSIX's list, but on Linux glibc's wrapper only issues the syscall
//   and sets errno, which the handler saves and restores), sigaction and raise.
// - The range table is fixed-size static storage. Writers (MmapShared after
//   mmap, the backing-store deleter before munmap, on any JS or GC thread) are
//   serialised by a mutex among themselves; the handler never takes it. Each
//   slot is a seqlock: a writer makes the sequence odd, writes start and end,
//   makes it even again; the handler skips any slot whose sequence is odd or
//   moves while it reads. Skipping is right, not merely convenient: a slot is
//   written only while its mapping is being created (no view of it exists yet)
//   or destroyed (no view of it exists any more), and a faulting access holds
//   a view of its mapping, so the mapping it faulted in is always stable.
// - A range stays registered for exactly as long as its addresses belong to
//   the mapping (from mmap to munmap), so the handler never maps over addresses
//   the kernel may have handed to somebody else.
// - retireMapping (memory.cc) replaces a mapping's pages in place by anonymous
//   memory, which cannot fault, but V8 may keep the range for a long time
//   after (until a garbage collection lets go of the buffer). The slot is
//   then only marked retired: a fault that raced the retirement is answered by
//   a plain retry, and when the table is full the slot retired longest ago is
//   reused, so front ends that come and go never exhaust it. (Reusing one
//   under a handler that is still looking at it would need a fault from
//   before its retirement to be handled after the table filled up with newer
//   retirements: the handler runs right after the faulting access.)
#include "sigbus.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>

#include "errors.h"
#include "modules.h"
#include "v8_bridge.h"

namespace vhost_rt {

namespace {

/**
 * Guest mappings that can be registered at once, retired ones included (they
 * are reused when the table is full): 32 memory slots per connection, many
 * devices, and test or fuzzing front ends that map RAM of their own. 40 bytes
 * each; the handler scans them all, once per fault.
 */
constexpr size_t kMaxGuestRanges = 4096;

/** One registered mapping; free while start is 0. Zero-initialised as static storage. */
struct GuestRange {
  /** Seqlock sequence: odd while a writer changes start/end/retired. */
  std::atomic<uint32_t> seq;
  std::atomic<uintptr_t> start;
  std::atomic<uintptr_t> end;
  /** 0 while the file is mapped; else when retireMapping replaced it (a RetireGuestRange count). */
  std::atomic<uint64_t> retired;
  /** SIGBUS faults answered in this mapping since it was registered. */
  std::atomic<uint32_t> faults;
};

static_assert(std::atomic<uint32_t>::is_always_lock_free &&
                  std::atomic<uintptr_t>::is_always_lock_free &&
                  std::atomic<uint64_t>::is_always_lock_free &&
                  std::atomic<int32_t>::is_always_lock_free,
              "the SIGBUS handler may only use lock-free atomics");

GuestRange g_ranges[kMaxGuestRanges];

/**
 * Faults answered in any mapping, ever. JS reads it with Atomics.load through
 * an Int32Array over this very word (guestFaultCounter), hence a plain int32.
 */
alignas(64) std::atomic<int32_t> g_faultTotal{0};
static_assert(sizeof(g_faultTotal) == sizeof(int32_t), "an Int32Array views the counter");

/** Page size minus one; set before the handler is installed, read-only afterwards. */
uintptr_t g_pageMask = 4095;
/** The SIGBUS disposition before ours: what a SIGBUS outside guest memory gets. */
struct sigaction g_previous;
/** Guarded by Lock(). */
bool g_installed = false;
/** Retirements so far, to tell the oldest; guarded by Lock(). */
uint64_t g_retirements = 0;

/** Serialises writers of g_ranges and the installation; never taken by the handler. Never destroyed. */
std::mutex& Lock() {
  static auto* lock = new std::mutex();
  return *lock;
}

/** Writes a slot under its seqlock (a new range's fault count starts at 0); the caller holds Lock(). */
void WriteRange(GuestRange& r, uintptr_t start, uintptr_t end, uint64_t retired) {
  uint32_t seq = r.seq.load(std::memory_order_relaxed);
  r.seq.store(seq + 1, std::memory_order_relaxed);
  // Orders the odd sequence before the field stores, for a reader that loads
  // the fields and then the sequence again (after its acquire fence).
  std::atomic_thread_fence(std::memory_order_release);
  if (r.start.load(std::memory_order_relaxed) != start) r.faults.store(0, std::memory_order_relaxed);
  r.start.store(start, std::memory_order_relaxed);
  r.end.store(end, std::memory_order_relaxed);
  r.retired.store(retired, std::memory_order_relaxed);
  // Publishes the fields with the even sequence: a reader that sees it sees them.
  r.seq.store(seq + 2, std::memory_order_release);
}

/** A stable view of slot `r`; false when it is free or being written (see the header comment). */
bool ReadRange(const GuestRange& r, uintptr_t* start, uintptr_t* end, bool* retired) {
  uint32_t before = r.seq.load(std::memory_order_acquire);
  if ((before & 1) != 0) return false;
  *start = r.start.load(std::memory_order_relaxed);
  *end = r.end.load(std::memory_order_relaxed);
  *retired = r.retired.load(std::memory_order_relaxed) != 0;
  // Orders the field loads before the second sequence load.
  std::atomic_thread_fence(std::memory_order_acquire);
  return r.seq.load(std::memory_order_relaxed) == before && *start != 0;
}

/** Maps private zero pages over [from, to); false when the kernel refuses. */
bool MapZeros(uintptr_t from, uintptr_t to) {
  // Invariant: [from, to) lies inside a registered mapping, so these addresses
  // are ours until its munmap. MAP_FIXED swaps the pages under the mm lock: a
  // concurrent access in another thread sees the old pages or the new ones.
  void* p = mmap(reinterpret_cast<void*>(from), to - from, PROT_READ | PROT_WRITE,
                 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p != MAP_FAILED;
}

/**
 * Answers a fault at `addr` if it lies in a registered mapping. The mapping
 * is linear in the file and the file ends at one offset, so every page from
 * the faulting one to the end of the mapping is past the end as well: one
 * mmap covers them all (one signal and one VMA per shrink, however much the
 * guest touches). Should the kernel refuse that split (a hugetlbfs mapping
 * cannot be split off huge-page boundaries), the whole mapping is replaced.
 */
bool Recover(uintptr_t addr) {
  for (GuestRange& r : g_ranges) {
    uintptr_t start = 0;
    uintptr_t end = 0;
    bool retired = false;
    if (!ReadRange(r, &start, &end, &retired) || addr < start || addr >= end) continue;
    // Retired: anonymous memory is there now (the fault came just before); the retry finds it.
    if (retired) return true;
    if (!MapZeros(addr & ~g_pageMask, end) && !MapZeros(start, end)) return false;
    // The per-mapping count first: a thread that sees the total move (acquire)
    // and then asks guestFaults() finds the mapping already counted.
    r.faults.fetch_add(1, std::memory_order_relaxed);
    g_faultTotal.fetch_add(1, std::memory_order_release);
    return true;
  }
  return false;
}

/**
 * A SIGBUS that is not ours: the handler that was there before gets it, or the
 * default action is restored and the signal raised again. SIGBUS is blocked
 * while this handler runs (no SA_NODEFER), so the raised signal stays pending
 * until the handler returns and then kills the process with a core that shows
 * the faulting access. An ignored SIGBUS is treated as default: ignoring a
 * fault would only repeat it forever.
 */
void PassOn(int sig, siginfo_t* info, void* context) {
  if ((g_previous.sa_flags & SA_SIGINFO) != 0) {
    if (g_previous.sa_sigaction != nullptr) g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, nullptr);
  raise(SIGBUS);
}

void OnSigbus(int sig, siginfo_t* info, void* context) {
  int saved = errno;
  // si_code > 0: the kernel raised it for an access (BUS_ADRERR past the end
  // of a file, BUS_MCEERR_* for a poisoned page) and si_addr says where. A
  // signal sent by a process (kill, tgkill: si_code <= 0) names no address.
  bool ours = info != nullptr && info->si_code > 0 &&
              Recover(reinterpret_cast<uintptr_t>(info->si_addr));
  if (!ours) PassOn(sig, info, context);
  errno = saved;
}

/**
 * Installs the handler once per process (signal dispositions are process
 * wide; the addon is loaded once per thread). The caller holds Lock().
 * SA_SIGINFO for si_addr and si_code; no SA_ONSTACK (the fault is an access
 * to guest memory, not a stack overflow: the thread's own stack has room); no
 * SA_NODEFER (a SIGBUS inside the handler itself must kill, not recurse).
 */
bool Install() {
  if (g_installed) return true;
  long page = sysconf(_SC_PAGESIZE);
  if (page > 0) g_pageMask = static_cast<uintptr_t>(page) - 1;
  // Read the old disposition first, so the handler never sees it half-written.
  if (sigaction(SIGBUS, nullptr, &g_previous) < 0) return false;
  struct sigaction sa = {};
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, nullptr) < 0) return false;
  g_installed = true;
  return true;
}

/** The slot registered at `start`, or null. The caller holds Lock(). */
GuestRange* Find(uintptr_t start) {
  if (start == 0) return nullptr;
  for (GuestRange& r : g_ranges) {
    if (r.start.load(std::memory_order_relaxed) == start) return &r;
  }
  return nullptr;
}

/** A free slot, else the one retired longest ago, else null. The caller holds Lock(). */
GuestRange* Vacant() {
  GuestRange* oldest = nullptr;
  for (GuestRange& r : g_ranges) {
    if (r.start.load(std::memory_order_relaxed) == 0) return &r;
    uint64_t retired = r.retired.load(std::memory_order_relaxed);
    if (retired != 0 && (oldest == nullptr || retired < oldest->retired.load(std::memory_order_relaxed)))
      oldest = &r;
  }
  return oldest;
}

}  // namespace

bool RegisterGuestRange(void* start, size_t length) {
  auto from = reinterpret_cast<uintptr_t>(start);
  std::lock_guard<std::mutex> hold(Lock());
  if (!Install()) return false;
  GuestRange* r = Vacant();
  if (r == nullptr) return false;
  WriteRange(*r, from, from + length, 0);
  return true;
}

void RetireGuestRange(void* start) {
  std::lock_guard<std::mutex> hold(Lock());
  GuestRange* r = Find(reinterpret_cast<uintptr_t>(start));
  if (r != nullptr && r->retired.load(std::memory_order_relaxed) == 0)
    WriteRange(*r, r->start.load(std::memory_order_relaxed), r->end.load(std::memory_order_relaxed),
               ++g_retirements);
}

void UnregisterGuestRange(void* start) {
  std::lock_guard<std::mutex> hold(Lock());
  GuestRange* r = Find(reinterpret_cast<uintptr_t>(start));
  if (r != nullptr) WriteRange(*r, 0, 0, 0);
}

/** An Int32Array over the process-wide fault counter, for Atomics.load (any thread). */
static Napi::Value GuestFaultCounter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  // Invariant: g_faultTotal is static storage, never freed: the empty deleter.
  std::shared_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(
      static_cast<void*>(&g_faultTotal), sizeof(int32_t), v8::BackingStore::EmptyDeleter,
      nullptr);
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, std::move(store));
  return Napi::Value(env, ToNapi(v8::Int32Array::New(sab, 0, 1)));
}

/** Faults answered in the mapping under `buffer` (an mmapShared buffer); 0 for any other buffer. */
static Napi::Value GuestFaults(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  v8::Local<v8::Value> v = ToV8(info[0]);
  if (!v->IsSharedArrayBuffer()) ThrowTypeError(env, "buffer must be a SharedArrayBuffer");
  void* data = v.As<v8::SharedArrayBuffer>()->GetBackingStore()->Data();
  std::lock_guard<std::mutex> hold(Lock());
  GuestRange* r = Find(reinterpret_cast<uintptr_t>(data));
  uint32_t faults = r == nullptr ? 0 : r->faults.load(std::memory_order_relaxed);
  return Napi::Number::New(env, faults);
}

/** How many mappings are registered, retired ones included (for tests). */
static Napi::Value GuestRangeCount(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> hold(Lock());
  uint32_t n = 0;
  for (const GuestRange& r : g_ranges) {
    if (r.start.load(std::memory_order_relaxed) != 0) n++;
  }
  return Napi::Number::New(info.Env(), n);
}

void InitSigbus(Napi::Env env, Napi::Object exports) {
  Export(env, exports, "guestFaultCounter", GuestFaultCounter);
  Export(env, exports, "guestFaults", GuestFaults);
  Export(env, exports, "guestRangeCount", GuestRangeCount);
}

}  // namespace vhost_rt
