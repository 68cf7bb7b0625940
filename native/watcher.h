// FdWatcher: readiness of one fd as a libuv uv_poll_t on the loop of the thread
// that created it, calling back on that thread.
#pragma once

#include <napi.h>
#include <uv.h>

#include <memory>

namespace vhost_rt {

class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit FdWatcher(const Napi::CallbackInfo& info);
  ~FdWatcher() override;

 private:
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnClosed(uv_handle_t* handle);
  void Dispatch(int status, int events);
  void SetStarted(bool started);
  void CloseHandle();

  /**
   * Heap-allocated apart from this object: after uv_close libuv still owns it
   * until OnClosed, which may run after this object is gone. Null once closed.
   */
  uv_poll_t* handle_ = nullptr;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> async_;
  /** While started the JS object is held strongly, so an unreferenced watcher keeps firing. */
  bool started_ = false;
};

}  // namespace vhost_rt
