// Shared memory and eventfds: memfd_create, mmap exposed as a SharedArrayBuffer
// over the mapping itself (and its explicit retirement), eventfd counters, and
// what a descriptor handed over by a front end is (fdInfo).
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <unordered_map>

#include "args.h"
#include "errors.h"
#include "modules.h"
#include "sigbus.h"
#include "v8_bridge.h"

namespace vhost_rt {

static Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgString(info, 0, "name");
  int64_t size = ArgSize(info, 1, "size");
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "memfd_create", errno);
  if (ftruncate(fd, size) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "ftruncate", err);
  }
  return Napi::Number::New(env, fd);
}

/** One live mapping made by MmapShared. */
struct Mapping {
  size_t length;
  /** RetireMapping replaced it with anonymous memory. */
  bool retired;
};

/**
 * Every mapping MmapShared made whose backing store V8 has not released yet,
 * by base address, shared by all threads (a buffer is posted to workers).
 * Entries are added by MmapShared and erased by UnmapBackingStore, both under
 * the lock, so RetireMapping only ever replaces a range that is still ours.
 * Never destroyed: a backing store may be released during process teardown.
 */
static std::mutex& MappingsLock() {
  static auto* lock = new std::mutex();
  return *lock;
}

static std::unordered_map<void*, Mapping>& Mappings() {
  static auto* mappings = new std::unordered_map<void*, Mapping>();
  return *mappings;
}

/**
 * Runs when the last SharedArrayBuffer over the mapping is gone, in whichever
 * thread (or GC thread) V8 releases the backing store: munmap is thread-safe.
 * The range is unmapped under the registry lock, so no RetireMapping can map
 * over an address range after it was handed back to the kernel.
 */
static void UnmapBackingStore(void* data, size_t length, void* /*deleter_data*/) {
  std::lock_guard<std::mutex> hold(MappingsLock());
  Mappings().erase(data);
  UnregisterGuestRange(data);
  munmap(data, length);
}

static Napi::Value MmapShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int64_t size = ArgInteger(info, 1, "size", 1, static_cast<int64_t>(kMaxSafeInteger));
  int64_t offset = ArgSize(info, 2, "offset");
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
  if (data == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  // A SIGBUS in the range (the file shrank) is answered with zero pages (sigbus.cc):
  // registered before any view of it exists, unregistered just before its munmap.
  RegisterGuestRange(data, static_cast<size_t>(size));
  {
    std::lock_guard<std::mutex> hold(MappingsLock());
    Mappings()[data] = Mapping{static_cast<size_t>(size), false};
  }
  // Invariant: [data, data+size) stays mapped until UnmapBackingStore runs,
  // which V8 calls exactly once, after every SharedArrayBuffer in every thread
  // that shares this backing store has been collected. Nothing else unmaps it;
  // RetireMapping may replace what is mapped there, never leave a hole.
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  std::shared_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(
      data, static_cast<size_t>(size), UnmapBackingStore, nullptr);
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, std::move(store));
  return Napi::Value(env, ToNapi(sab));
}

/**
 * Releases the file pages behind a buffer from MmapShared now, without
 * waiting for the garbage collector: the whole range is replaced in place by
 * private anonymous memory. Returns true, or false when it was already retired.
 *
 * Invariant: the range stays mapped (the address space is only freed by
 * UnmapBackingStore, when V8 lets go of the last buffer), so a view that is
 * still reachable in any thread — a worker's table, a request in flight —
 * reads zeros and writes into private pages nobody reads, instead of faulting.
 * MAP_FIXED swaps the mapping under the mm's write lock: a concurrent access
 * sees either the old pages or the new ones. MAP_NORESERVE: the replacement
 * costs nothing until touched. Only ranges in the registry are accepted, and
 * only whole: a SharedArrayBuffer V8 allocated itself is not page-aligned.
 */
static Napi::Value RetireMapping(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  v8::Local<v8::Value> v = ToV8(info[0]);
  if (!v->IsSharedArrayBuffer()) ThrowTypeError(env, "buffer must be a SharedArrayBuffer");
  std::shared_ptr<v8::BackingStore> store = v.As<v8::SharedArrayBuffer>()->GetBackingStore();
  void* data = store->Data();
  std::lock_guard<std::mutex> hold(MappingsLock());
  auto it = Mappings().find(data);
  if (it == Mappings().end() || it->second.length != store->ByteLength()) {
    ThrowTypeError(env, "buffer is not a mapping made by mmapShared");
  }
  if (it->second.retired) return Napi::Boolean::New(env, false);
  void* replaced = mmap(data, it->second.length, PROT_READ | PROT_WRITE,
                        MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (replaced == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  RetireGuestRange(data);
  it->second.retired = true;
  return Napi::Boolean::New(env, true);
}

/**
 * The facts about a descriptor that src/vhost-user/fds.ts classifies: fstat
 * (type bits, size, device and inode), fstatfs (file system magic), the access
 * mode (fcntl F_GETFL) and the /proc/self/fd link ("anon_inode:[eventfd]",
 * "pipe:[123]", "/memfd:guest (deleted)"; empty when /proc is not mounted).
 * It only looks: the fd is neither kept nor changed.
 */
static Napi::Value FdInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  struct stat st;
  if (fstat(fd, &st) < 0) ThrowErrno(env, "fstat", errno);
  struct statfs fs;
  if (fstatfs(fd, &fs) < 0) ThrowErrno(env, "fstatfs", errno);
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) ThrowErrno(env, "fcntl", errno);
  char path[40];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  char link[PATH_MAX];
  ssize_t n = readlink(path, link, sizeof link - 1);
  link[n < 0 ? 0 : n] = '\0';
  int access = flags & O_ACCMODE;
  bool pathOnly = (flags & O_PATH) != 0;
  Napi::Object out = Napi::Object::New(env);
  out.Set("mode", Napi::Number::New(env, st.st_mode));
  out.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  out.Set("dev", Napi::Number::New(env, static_cast<double>(st.st_dev)));
  out.Set("ino", Napi::Number::New(env, static_cast<double>(st.st_ino)));
  out.Set("fsType", Napi::Number::New(env, static_cast<double>(static_cast<uint32_t>(fs.f_type))));
  out.Set("readable", Napi::Boolean::New(env, !pathOnly && access != O_WRONLY));
  out.Set("writable", Napi::Boolean::New(env, !pathOnly && access != O_RDONLY));
  out.Set("pathOnly", Napi::Boolean::New(env, pathOnly));
  out.Set("nonBlocking", Napi::Boolean::New(env, (flags & O_NONBLOCK) != 0));
  out.Set("link", Napi::String::New(env, link));
  return out;
}

static Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto initval = static_cast<unsigned>(ArgInteger(info, 0, "initval", 0, UINT32_MAX));
  // Optional second argument false: a blocking eventfd (tests play a careless front end with it).
  bool nonBlocking = info.Length() < 2 || info[1].ToBoolean().Value();
  int fd = eventfd(initval, (nonBlocking ? EFD_NONBLOCK : 0) | EFD_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "eventfd", errno);
  return Napi::Number::New(env, fd);
}

static Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  uint64_t value = 0;
  ssize_t n;
  do {
    n = read(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return Napi::Number::New(env, 0);
  if (n < 0) ThrowErrno(env, "read", errno);
  return Napi::Number::New(env, static_cast<double>(value));
}

static Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  auto value = static_cast<uint64_t>(ArgSize(info, 1, "value"));
  ssize_t n;
  do {
    n = write(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, "write", errno);
  return env.Undefined();
}

void InitMemory(Napi::Env env, Napi::Object exports) {
  Export(env, exports, "memfdCreate", MemfdCreate);
  Export(env, exports, "mmapShared", MmapShared);
  Export(env, exports, "retireMapping", RetireMapping);
  Export(env, exports, "fdInfo", FdInfo);
  Export(env, exports, "eventfd", Eventfd);
  Export(env, exports, "eventfdRead", EventfdRead);
  Export(env, exports, "eventfdWrite", EventfdWrite);
}

}  // namespace vhost_rt
