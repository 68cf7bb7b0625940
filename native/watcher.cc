#include "watcher.h"

#include "args.h"
#include "errors.h"

namespace vhost_rt {

// The POLL_* bits of src/native.ts are libuv's own values.
static_assert(UV_READABLE == 1 && UV_WRITABLE == 2 && UV_DISCONNECT == 4, "POLL_* bits");
constexpr int kPollMask = UV_READABLE | UV_WRITABLE | UV_DISCONNECT;

Napi::Function FdWatcher::Define(Napi::Env env) {
  return DefineClass(env, "FdWatcher",
                     {
                         InstanceMethod<&FdWatcher::Start>("start"),
                         InstanceMethod<&FdWatcher::Stop>("stop"),
                         InstanceMethod<&FdWatcher::Close>("close"),
                     });
}

FdWatcher::FdWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatcher>(info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(ArgInteger(info, 0, "fd", 0, INT32_MAX));
  callback_ = Napi::Persistent(ArgFunction(info, 1, "callback"));
  async_ = std::make_unique<Napi::AsyncContext>(env, "vhost_rt:FdWatcher");
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
    throw Napi::Error::New(env, "FdWatcher: no event loop for this thread");
  }
  auto handle = std::make_unique<uv_poll_t>();
  int rc = uv_poll_init(loop, handle.get(), fd);
  // A failed uv_poll_init never registered the handle, so unique_ptr may free it.
  if (rc < 0) ThrowErrno(env, "uv_poll_init", -rc);
  handle_ = handle.release();
  handle_->data = this;
}

FdWatcher::~FdWatcher() {
  // Collected (or the environment is torn down) without close(): only release
  // the libuv handle; JS references are being finalized by N-API itself.
  started_ = false;
  CloseHandle();
}

void FdWatcher::CloseHandle() {
  if (handle_ == nullptr) return;
  // data = null first: a poll event already queued in this loop iteration must
  // not reach this object. uv_close stops the handle; OnClosed frees it.
  handle_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(handle_), OnClosed);
  handle_ = nullptr;
}

void FdWatcher::OnClosed(uv_handle_t* handle) {
  delete reinterpret_cast<uv_poll_t*>(handle);
}

void FdWatcher::SetStarted(bool started) {
  if (started == started_) return;
  started_ = started;
  if (started) {
    Ref();
  } else {
    Unref();
  }
}

Napi::Value FdWatcher::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int events = static_cast<int>(ArgInteger(info, 0, "events", 0, kPollMask));
  if (handle_ == nullptr) ThrowErrno(env, "uv_poll_start", EBADF);
  // DISCONNECT is always watched so a hang-up is reported even to a watcher
  // that asked only for READABLE.
  int rc = uv_poll_start(handle_, events | UV_DISCONNECT, OnPoll);
  if (rc < 0) ThrowErrno(env, "uv_poll_start", -rc);
  SetStarted(true);
  return env.Undefined();
}

Napi::Value FdWatcher::Stop(const Napi::CallbackInfo& info) {
  if (handle_ != nullptr) uv_poll_stop(handle_);
  SetStarted(false);
  return info.Env().Undefined();
}

Napi::Value FdWatcher::Close(const Napi::CallbackInfo& info) {
  CloseHandle();
  SetStarted(false);
  return info.Env().Undefined();
}

void FdWatcher::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<FdWatcher*>(handle->data);
  if (self != nullptr) self->Dispatch(status, events);
}

void FdWatcher::Dispatch(int status, int events) {
  Napi::Env env = Env();
  // A libuv callback has no C++ frame to throw to. On a worker thread being torn down even
  // opening a handle scope fails (a Napi::Error escaping here was std::terminate in a CI test
  // process, and without a scope not even the error's value can be read): then nothing is
  // delivered.
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  try {
    // The local handle keeps the object alive through the callback, even if the
    // callback closes the watcher and drops its last reference.
    Napi::Object self = Value();
    if (!self.IsEmpty()) {
      Napi::Number arg = Napi::Number::New(env, status < 0 ? status : (events & kPollMask));
      callback_.MakeCallback(self, {arg}, *async_);
    }
  } catch (const Napi::Error& e) {
    // No JS frame to return to: report it as uncaught, when there is a value to report.
    napi_value v = e.Value();
    if (v != nullptr) napi_fatal_exception(env, v);
  }
  napi_close_handle_scope(env, scope);
  // On error libuv has already stopped the handle.
  if (status < 0) SetStarted(false);
}

}  // namespace vhost_rt
