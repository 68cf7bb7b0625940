#include "buffers.h"

#include <string>

#include "addon.h"
#include "args.h"
#include "errors.h"
#include "v8_bridge.h"

namespace vhost_rt {

Napi::Function BufferTable::Define(Napi::Env env) {
  return DefineClass(env, "BufferTable",
                     {
                         InstanceMethod<&BufferTable::Set>("set"),
                         InstanceAccessor<&BufferTable::GetLength>("length"),
                         InstanceMethod<&BufferTable::BaseAlignment>("baseAlignment"),
                     });
}

BufferTable& BufferTable::From(Napi::Env env, Napi::Value value, const char* name) {
  Napi::FunctionReference& ctor = Addon::Of(env).bufferTableCtor;
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(ctor.Value())) {
    ThrowTypeError(env, std::string(name) + " must be a BufferTable");
  }
  return *Unwrap(value.As<Napi::Object>());
}

BufferTable::BufferTable(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BufferTable>(info) {}

Napi::Value BufferTable::Set(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array buffers = ArgArray(info, 0, "buffers");
  std::vector<Entry> entries;
  entries.reserve(buffers.Length());
  for (uint32_t i = 0; i < buffers.Length(); i++) {
    v8::Local<v8::Value> v = ToV8(buffers.Get(i));
    if (!v->IsSharedArrayBuffer()) {
      ThrowTypeError(env, "buffers[" + std::to_string(i) + "] must be a SharedArrayBuffer");
    }
    v8::Local<v8::SharedArrayBuffer> sab = v.As<v8::SharedArrayBuffer>();
    std::shared_ptr<v8::BackingStore> store = sab->GetBackingStore();
    // Invariant: `store` keeps [Data(), Data()+ByteLength()) allocated (for an
    // mmapShared buffer: mapped) for as long as this entry exists, whatever
    // happens to the JS object in any thread.
    auto* base = static_cast<uint8_t*>(store->Data());
    entries.push_back(Entry{std::move(store), base, sab->ByteLength()});
  }
  // Replace only once every element was accepted: a bad call keeps the old table.
  entries_.swap(entries);
  return env.Undefined();
}

Napi::Value BufferTable::GetLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(entries_.size()));
}

// O_DIRECT cares about the address of every buffer, not its offset inside a
// SharedArrayBuffer: report how aligned the base address of entry i is.
Napi::Value BufferTable::BaseAlignment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t index = ArgSize(info, 0, "index");
  if (static_cast<size_t>(index) >= entries_.size()) ThrowRangeError(env, "index is outside the table");
  auto addr = reinterpret_cast<uintptr_t>(entries_[static_cast<size_t>(index)].base);
  uintptr_t align = 4096;
  while (align > 1 && addr % align != 0) align >>= 1;
  return Napi::Number::New(env, static_cast<double>(align));
}

static std::string OwnerPrefix(long owner) {
  return owner >= 0 ? "ops[" + std::to_string(owner) + "]: " : std::string();
}

[[noreturn]] static void ThrowIovError(Napi::Env env, long owner, size_t index,
                                       const std::string& what) {
  ThrowRangeError(env, OwnerPrefix(owner) + "iovs[" + std::to_string(index) + "] " + what);
}

void BufferTable::BuildOne(Napi::Env env, const double* entry, size_t index, struct iovec* out,
                           long owner) const {
  double buffer = entry[0];
  double offset = entry[1];
  double length = entry[2];
  if (!IsIntegerIn(buffer, 0, static_cast<double>(entries_.size()) - 1)) {
    ThrowIovError(env, owner, index,
                  "names buffer " + Num(buffer) + " but the table holds " +
                      std::to_string(entries_.size()));
  }
  const Entry& e = entries_[static_cast<size_t>(buffer)];
  auto size = static_cast<double>(e.length);
  if (!IsIntegerIn(offset, 0, size) || !IsIntegerIn(length, 0, size - offset)) {
    ThrowIovError(env, owner, index,
                  "range [" + Num(offset) + ", +" + Num(length) +
                      ") is outside buffer " + std::to_string(static_cast<size_t>(buffer)) +
                      " of " + std::to_string(e.length) + " bytes");
  }
  // Invariant: offset + length <= e.length was just checked, and e.store keeps
  // the buffer alive, so the iovec points inside live memory.
  out->iov_base = e.base + static_cast<size_t>(offset);
  out->iov_len = static_cast<size_t>(length);
}

void BufferTable::BuildIovecs(Napi::Env env, const double* iovs, size_t iovsLength, double first,
                              double count, struct iovec* out, long owner) const {
  double entries = static_cast<double>(iovsLength / kIovStride);
  if (!IsIntegerIn(first, 0, entries) || !IsIntegerIn(count, 0, entries - first)) {
    ThrowRangeError(env, OwnerPrefix(owner) + "iovecs [" + Num(first) + ", +" +
                             Num(count) + ") are outside iovs (" +
                             std::to_string(iovsLength / kIovStride) + " entries)");
  }
  auto start = static_cast<size_t>(first);
  for (size_t k = 0; k < static_cast<size_t>(count); k++) {
    BuildOne(env, iovs + (start + k) * kIovStride, start + k, out + k, owner);
  }
}

}  // namespace vhost_rt
