#include "args.h"

#include "errors.h"

namespace vhost_rt {

std::string IntegerRangeMessage(const std::string& name, double lo, double hi) {
  char buf[64];
  snprintf(buf, sizeof buf, " must be an integer in [%.0f, %.0f]", lo, hi);
  return name + buf;
}

std::string Num(double v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

static int64_t CheckInteger(Napi::Env env, Napi::Value v, const std::string& name, int64_t lo,
                            int64_t hi) {
  if (!v.IsNumber()) ThrowTypeError(env, name + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!IsIntegerIn(d, static_cast<double>(lo), static_cast<double>(hi))) {
    ThrowRangeError(env, IntegerRangeMessage(name, static_cast<double>(lo), static_cast<double>(hi)));
  }
  return static_cast<int64_t>(d);
}

int64_t ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo,
                   int64_t hi) {
  Napi::Value v = info[i];
  // Fast path without building the name string.
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (IsIntegerIn(d, static_cast<double>(lo), static_cast<double>(hi))) {
      return static_cast<int64_t>(d);
    }
  }
  return CheckInteger(info.Env(), v, name, lo, hi);
}

int32_t ArgInt32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<int32_t>(ArgInteger(info, i, name, INT32_MIN, INT32_MAX));
}

int64_t ArgSize(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return ArgInteger(info, i, name, 0, static_cast<int64_t>(kMaxSafeInteger));
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsString()) ThrowTypeError(info.Env(), std::string(name) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

Napi::Function ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsFunction()) ThrowTypeError(info.Env(), std::string(name) + " must be a function");
  return info[i].As<Napi::Function>();
}

Napi::Array ArgArray(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsArray()) ThrowTypeError(info.Env(), std::string(name) + " must be an array");
  return info[i].As<Napi::Array>();
}

static bool IsTypedArrayOf(Napi::Value v, napi_typedarray_type type) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type;
}

Napi::Float64Array ArgFloat64Array(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!IsTypedArrayOf(info[i], napi_float64_array)) {
    ThrowTypeError(info.Env(), std::string(name) + " must be a Float64Array");
  }
  return info[i].As<Napi::Float64Array>();
}

Napi::Uint8Array ArgUint8Array(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!IsTypedArrayOf(info[i], napi_uint8_array)) {
    ThrowTypeError(info.Env(), std::string(name) + " must be a Uint8Array");
  }
  return info[i].As<Napi::Uint8Array>();
}

int64_t ElementInteger(Napi::Env env, Napi::Array array, uint32_t i, const char* name, int64_t lo,
                       int64_t hi) {
  return CheckInteger(env, array.Get(i), std::string(name) + "[" + std::to_string(i) + "]", lo, hi);
}

}  // namespace vhost_rt
