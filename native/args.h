// Argument checking for the flat syscall wrappers. Each helper names the
// argument in the TypeError / RangeError it throws, and builds a message only
// on failure, so checked calls allocate nothing on success.
#pragma once

#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace vhost_rt {

/** Largest integer a double holds exactly (Number.MAX_SAFE_INTEGER). */
constexpr double kMaxSafeInteger = 9007199254740991.0;

/** True when `v` is an integer within [lo, hi] (false for NaN). */
inline bool IsIntegerIn(double v, double lo, double hi) {
  return v >= lo && v <= hi && v == std::trunc(v);
}

/** info[i] as an integer within [lo, hi]; TypeError / RangeError naming `name`. */
int64_t ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo,
                   int64_t hi);
/** info[i] as any int32 (fds: negative ones are left for the kernel to reject). */
int32_t ArgInt32(const Napi::CallbackInfo& info, size_t i, const char* name);
/** info[i] as a non-negative safe integer (sizes, offsets). */
int64_t ArgSize(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Function ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Array ArgArray(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Float64Array ArgFloat64Array(const Napi::CallbackInfo& info, size_t i, const char* name);
/** A Uint8Array (Buffer included). */
Napi::Uint8Array ArgUint8Array(const Napi::CallbackInfo& info, size_t i, const char* name);

/** Element `i` of `array` as an integer within [lo, hi]; errors name `name[i]`. */
int64_t ElementInteger(Napi::Env env, Napi::Array array, uint32_t i, const char* name, int64_t lo,
                       int64_t hi);

/** A double as JS would print an integer-valued number ("3", not "3.000000"). */
std::string Num(double v);

/** "<name> must be an integer in [lo, hi]" */
std::string IntegerRangeMessage(const std::string& name, double lo, double hi);

}  // namespace vhost_rt
