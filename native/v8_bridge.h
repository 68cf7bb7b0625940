// Conversions between N-API values and V8 handles, for the two things N-API
// cannot do on Node 20: create a SharedArrayBuffer over external memory, and
// read the backing store of a SharedArrayBuffer.
#pragma once

#include <node_api.h>
#include <v8.h>

#include <cstring>

namespace vhost_rt {

// Invariant: in Node, napi_value is a v8::Local<v8::Value> reinterpreted (the
// same single pointer into the current HandleScope); Node's own N-API does this
// very copy. The handle is only valid inside the HandleScope it was made in.
static_assert(sizeof(napi_value) == sizeof(v8::Local<v8::Value>), "napi_value is a Local");

inline v8::Local<v8::Value> ToV8(napi_value value) {
  v8::Local<v8::Value> local;
  memcpy(static_cast<void*>(&local), &value, sizeof value);
  return local;
}

inline napi_value ToNapi(v8::Local<v8::Value> local) {
  napi_value value;
  memcpy(&value, &local, sizeof value);
  return value;
}

}  // namespace vhost_rt
