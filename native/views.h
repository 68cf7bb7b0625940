// Raw views of JS typed arrays that native code keeps between calls (the
// frame copier's and the net burst's tables): the memory, its length, and a
// reference that keeps the backing store (and an mmapShared mapping) alive.
#pragma once

#include <napi.h>
#include <v8.h>

#include <cstdint>
#include <memory>
#include <string>

#include "errors.h"
#include "v8_bridge.h"

namespace vhost_rt {

/** A typed array's bytes, held alive by its backing store. */
struct HeldView {
  /** Keeps the memory alive (and mapped) while this view names it. */
  std::shared_ptr<v8::BackingStore> store;
  uint8_t* base = nullptr;
  size_t length = 0;
};

/**
 * `value` (a typed array of `type`, named `typeName`; else a TypeError
 * naming `what`) as a
 * HeldView over its bytes. Invariant: `store` keeps the whole buffer
 * allocated while the HeldView exists, and the view's range lies inside it.
 */
inline HeldView HoldView(Napi::Env env, Napi::Value value, napi_typedarray_type type,
                         const char* typeName, const std::string& what) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != type)
    ThrowTypeError(env, what + " must be a " + typeName);
  Napi::TypedArray view = value.As<Napi::TypedArray>();
  v8::Local<v8::Value> buffer = ToV8(view.ArrayBuffer());
  std::shared_ptr<v8::BackingStore> store =
      buffer->IsSharedArrayBuffer() ? buffer.As<v8::SharedArrayBuffer>()->GetBackingStore()
                                    : buffer.As<v8::ArrayBuffer>()->GetBackingStore();
  auto* base = static_cast<uint8_t*>(store->Data()) + view.ByteOffset();
  return HeldView{std::move(store), base, view.ByteLength()};
}

}  // namespace vhost_rt
