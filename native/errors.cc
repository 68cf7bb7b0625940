#include "errors.h"

#include <cstring>

#include "addon.h"

namespace vhost_rt {

const char* ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : "UNKNOWN";
}

static std::string Describe(int err) {
  char buf[128];
  // GNU strerror_r returns a pointer to the text (in buf or a static table).
  return std::string(strerror_r(err, buf, sizeof buf));
}

Napi::Error ErrnoError(Napi::Env env, const char* syscall, int err, const char* detail) {
  std::string message = std::string(syscall) + ": " + (detail ? detail : Describe(err));
  Addon& addon = Addon::Of(env);
  Napi::Object error = addon.errorClass.IsEmpty()
                           ? Napi::Error::New(env, message).Value()
                           : addon.errorClass.New({Napi::String::New(env, message)});
  error.Set("code", Napi::String::New(env, ErrnoName(err)));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
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
