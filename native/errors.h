// Errors thrown by the addon: errno failures become instances of the JS class
// handed to setErrorClass, with code / errno / syscall set like Node's own
// system errors; bad arguments become TypeError / RangeError naming the argument.
#pragma once

#include <napi.h>

#include <cerrno>
#include <string>

namespace vhost_rt {

/** errno's symbolic name ("EINVAL"), or "UNKNOWN". */
const char* ErrnoName(int err);

/**
 * Builds `new cls("<syscall>: <strerror>")` with code, errno and syscall set.
 * `detail` replaces the strerror text when given.
 */
Napi::Error ErrnoError(Napi::Env env, const char* syscall, int err, const char* detail = nullptr);

/** Throws ErrnoError(env, syscall, err) as a C++ exception (node-addon-api rethrows it to JS). */
[[noreturn]] void ThrowErrno(Napi::Env env, const char* syscall, int err);

[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& message);
[[noreturn]] void ThrowRangeError(Napi::Env env, const std::string& message);

}  // namespace vhost_rt
