// Module entry: builds one Addon per environment (main thread or worker) and
// fills its exports. See src/native.ts for the contract.
#include "addon.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>

#include "aio.h"
#include "args.h"
#include "buffers.h"
#include "modules.h"
#include "nbd.h"
#include "watcher.h"

namespace vhost_rt {

static Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  auto set = [&](const char* name, int value) { c.Set(name, Napi::Number::New(env, value)); };
  set("O_DIRECT", O_DIRECT);
  set("SCHED_OTHER", SCHED_OTHER);
  set("SCHED_FIFO", SCHED_FIFO);
  set("SCHED_RR", SCHED_RR);
  set("SCHED_BATCH", SCHED_BATCH);
  set("SCHED_IDLE", SCHED_IDLE);
  set("MCL_CURRENT", MCL_CURRENT);
  set("MCL_FUTURE", MCL_FUTURE);
  set("FALLOC_FL_KEEP_SIZE", FALLOC_FL_KEEP_SIZE);
  set("FALLOC_FL_PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE);
  set("FALLOC_FL_ZERO_RANGE", FALLOC_FL_ZERO_RANGE);
  c.Freeze();
  return c;
}

/**
 * Keeps this shared object mapped for the life of the process. Node dlclose()s an addon when
 * the last environment that loaded it is torn down, yet a worker's teardown still runs libuv
 * close callbacks (FdWatcher::OnClosed) after that: in a process whose main thread never
 * loaded the addon they jumped into unmapped code (SIGSEGV; test/unit/native-worker.test.ts).
 */
static void PinAddon() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&PinAddon), &info) != 0 && info.dli_fname != nullptr) {
    // NOLOAD: only marks the already loaded object NODELETE; the extra count is never dropped.
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  }
}

Addon::Addon(Napi::Env env, Napi::Object exports) {
  PinAddon();
  DefineAddon(exports, {InstanceMethod<&Addon::SetErrorClass>("setErrorClass")});
  InitSockets(env, exports);
  InitMemory(env, exports);
  InitFileIo(env, exports);
  InitRt(env, exports);
  InitUring(env, exports);
  InitNet(env, exports);
  InitNetBurst(env, exports);
  InitSigbus(env, exports);
  bufferTableCtor = Napi::Persistent(BufferTable::Define(env));
  exports.Set("BufferTable", bufferTableCtor.Value());
  exports.Set("FdWatcher", FdWatcher::Define(env));
  exports.Set("AioContext", AioContext::Define(env));
  exports.Set("NbdClient", NbdClient::Define(env));
  exports.Set("constants", Constants(env));
}

Napi::Value Addon::SetErrorClass(const Napi::CallbackInfo& info) {
  errorClass = Napi::Persistent(ArgFunction(info, 0, "cls"));
  return info.Env().Undefined();
}

}  // namespace vhost_rt

using vhost_rt::Addon;
NODE_API_ADDON(Addon)
