#include "errors.h"

#include <cstring>

#include "addon.h"
#include "loop-callback.h"

namespace vhost_rt {

const char* ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : "UNKNOWN";
}

Napi::Error ErrnoError(Napi::Env env, const char* syscall, int err, const char* detail) {
  napi_value error = TryErrnoError(env, syscall, err, detail);
  // Only an env that refuses calls gives no value; its own pending error says why.
  if (error == nullptr) return Napi::Error::New(env);
  return Napi::Error(env, error);
}

void ThrowErrno(Napi::Env env, const char* syscall, int err) {
  throw ErrnoError(env, syscall, err);
}

void ThrowTypeError(Napi::Env env, const std::string& message) {
  throw Napi::TypeError::New(env, message);
}

void ThrowRangeError(Napi::Env env, const std::string& message) {
  throw Napi::RangeError::New(env, message);
}

}  // namespace vhost_rt
