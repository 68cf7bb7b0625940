#include "watcher.h"

#include "args.h"
#include "errors.h"
#include "loop-callback.h"

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
  // The C API, not Ref()/Unref(): those throw through Napi::Error::New, which is fatal on a
  // terminating worker (see loop-callback.h); a refused count change there is moot.
  napi_ref self = static_cast<napi_ref>(*this);
  if (started) {
    napi_reference_ref(Env(), self, nullptr);
  } else {
    napi_reference_unref(Env(), self, nullptr);
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
  // A libuv callback has no C++ frame to throw to, and on a worker thread being torn down the
  // env refuses calls: CallFromLoop uses only the C API and then delivers nothing. The
  // receiver is this object's own reference: held while started, so it outlives the callback
  // even if the callback closes the watcher.
  int value = status < 0 ? status : (events & kPollMask);
  CallFromLoop(Env(), static_cast<napi_ref>(*this), static_cast<napi_ref>(callback_),
               static_cast<napi_async_context>(*async_), [value](napi_env env, napi_value* argv) {
                 return napi_create_int32(env, value, &argv[0]) == napi_ok ? 1 : -1;
               });
  // On error libuv has already stopped the handle.
  if (status < 0) SetStarted(false);
}

}  // namespace vhost_rt
