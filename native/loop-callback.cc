#include "loop-callback.h"

#include <cstring>
#include <string>

#include "addon.h"
#include "errors.h"

namespace vhost_rt {

/** Sets `obj[name] = value`; false when the env refuses. */
static bool SetNamed(napi_env env, napi_value obj, const char* name, napi_value value) {
  return value != nullptr && napi_set_named_property(env, obj, name, value) == napi_ok;
}

static napi_value String(napi_env env, const char* text) {
  napi_value v;
  return napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &v) == napi_ok ? v : nullptr;
}

napi_value TryErrnoError(napi_env env, const char* syscall, int err, const char* detail) {
  char buf[128];
  // GNU strerror_r returns a pointer to the text (in buf or a static table).
  std::string text =
      std::string(syscall) + ": " + (detail != nullptr ? detail : strerror_r(err, buf, sizeof buf));
  napi_value message = String(env, text.c_str());
  if (message == nullptr) return nullptr;
  void* data = nullptr;
  napi_ref cls_ref = nullptr;
  if (napi_get_instance_data(env, &data) == napi_ok && data != nullptr) {
    cls_ref = static_cast<Addon*>(data)->errorClass;
  }
  napi_value cls = nullptr;
  napi_value error = nullptr;
  if (cls_ref != nullptr && napi_get_reference_value(env, cls_ref, &cls) == napi_ok &&
      cls != nullptr) {
    if (napi_new_instance(env, cls, 1, &message, &error) != napi_ok) return nullptr;
  } else if (napi_create_error(env, nullptr, message, &error) != napi_ok) {
    return nullptr;
  }
  napi_value errno_value;
  if (napi_create_int32(env, err, &errno_value) != napi_ok) return nullptr;
  if (!SetNamed(env, error, "code", String(env, ErrnoName(err))) ||
      !SetNamed(env, error, "errno", errno_value) ||
      !SetNamed(env, error, "syscall", String(env, syscall))) {
    return nullptr;
  }
  return error;
}

void CallInScope(napi_env env, napi_ref recv_ref, napi_ref fn_ref, napi_async_context context,
                 size_t argc, const napi_value* argv) {
  napi_value fn = nullptr;
  if (napi_get_reference_value(env, fn_ref, &fn) != napi_ok || fn == nullptr) return;
  napi_value recv = nullptr;
  if (recv_ref != nullptr &&
      (napi_get_reference_value(env, recv_ref, &recv) != napi_ok || recv == nullptr)) {
    return;  // The receiver was collected: nobody is left to call back.
  }
  if (recv == nullptr && napi_get_global(env, &recv) != napi_ok) return;
  napi_status status =
      context != nullptr ? napi_make_callback(env, context, recv, fn, argc, argv, nullptr)
                         : napi_call_function(env, recv, fn, argc, argv, nullptr);
  if (status == napi_ok) return;
  // The callback threw, or the env is going away: then there is no exception to take, or
  // undefined stands for the termination, and nothing is reported.
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) != napi_ok || !pending) return;
  napi_value exception;
  if (napi_get_and_clear_last_exception(env, &exception) != napi_ok) return;
  napi_valuetype type;
  if (napi_typeof(env, exception, &type) != napi_ok) return;
  if (type != napi_undefined) napi_fatal_exception(env, exception);
}

}  // namespace vhost_rt
