// Shared memory and eventfds: memfd_create, mmap exposed as a SharedArrayBuffer
// over the mapping itself, and eventfd counters.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#include "args.h"
#include "errors.h"
#include "modules.h"
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

/**
 * Runs when the last SharedArrayBuffer over the mapping is gone, in whichever
 * thread (or GC thread) V8 releases the backing store: munmap is thread-safe.
 */
static void UnmapBackingStore(void* data, size_t length, void* /*deleter_data*/) {
  munmap(data, length);
}

static Napi::Value MmapShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  int64_t size = ArgInteger(info, 1, "size", 1, static_cast<int64_t>(kMaxSafeInteger));
  int64_t offset = ArgSize(info, 2, "offset");
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
  if (data == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  // Invariant: [data, data+size) stays mapped until UnmapBackingStore runs,
  // which V8 calls exactly once, after every SharedArrayBuffer in every thread
  // that shares this backing store has been collected. Nothing else unmaps it.
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  std::shared_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(
      data, static_cast<size_t>(size), UnmapBackingStore, nullptr);
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, std::move(store));
  return Napi::Value(env, ToNapi(sab));
}

static Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto initval = static_cast<unsigned>(ArgInteger(info, 0, "initval", 0, UINT32_MAX));
  int fd = eventfd(initval, EFD_NONBLOCK | EFD_CLOEXEC);
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
  Export(env, exports, "eventfd", Eventfd);
  Export(env, exports, "eventfdRead", EventfdRead);
  Export(env, exports, "eventfdWrite", EventfdWrite);
}

}  // namespace vhost_rt
