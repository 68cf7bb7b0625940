// Entry points of the flat (function-only) parts of the addon; each adds its
// functions to `exports`.
#pragma once

#include <napi.h>

namespace vhost_rt {

void InitSockets(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitFileIo(Napi::Env env, Napi::Object exports);
void InitRt(Napi::Env env, Napi::Object exports);
void InitUring(Napi::Env env, Napi::Object exports);
void InitNet(Napi::Env env, Napi::Object exports);
void InitNetBurst(Napi::Env env, Napi::Object exports);
void InitSigbus(Napi::Env env, Napi::Object exports);

/** exports[name] = a function wrapping `fn`. */
inline void Export(Napi::Env env, Napi::Object exports, const char* name,
                   Napi::Function::Callback fn) {
  exports.Set(name, Napi::Function::New(env, fn, name));
}

}  // namespace vhost_rt
