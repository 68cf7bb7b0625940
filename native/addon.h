// Per-thread state of the vhost_rt addon. Node loads the addon once per
// environment (the main thread and every worker_thread); each load gets its own
// Addon instance, so nothing here is shared between threads and no JS handle is
// ever static.
#pragma once

#include <napi.h>
#include <sys/uio.h>

#include <climits>

namespace vhost_rt {

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports);

  /** The instance that belongs to `env`'s thread. */
  static Addon& Of(Napi::Env env) { return *env.GetInstanceData<Addon>(); }

  /** Class errno failures are built from (`new cls(message)`); empty until setErrorClass. */
  Napi::FunctionReference errorClass;
  /** Constructor of BufferTable, for checking arguments with instanceof. */
  Napi::FunctionReference bufferTableCtor;
  /**
   * iovec scratch space for the synchronous preadv/pwritev. One environment runs
   * on one thread and those calls do not re-enter JS, so one array per instance
   * is never used by two calls at once, and the calls allocate nothing.
   */
  struct iovec scratchIovs[IOV_MAX];

 private:
  Napi::Value SetErrorClass(const Napi::CallbackInfo& info);
};

}  // namespace vhost_rt
