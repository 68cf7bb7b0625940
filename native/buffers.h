// BufferTable: small integers naming SharedArrayBuffers, so iovec tables in JS
// can say (buffer, offset, length) and the native side builds real pointers.
#pragma once

#include <napi.h>
#include <sys/uio.h>
#include <v8.h>

#include <memory>
#include <vector>

namespace vhost_rt {

class BufferTable : public Napi::ObjectWrap<BufferTable> {
 public:
  static Napi::Function Define(Napi::Env env);
  /** Unwraps `value` if it is a BufferTable, else TypeError naming `name`. */
  static BufferTable& From(Napi::Env env, Napi::Value value, const char* name);
  explicit BufferTable(const Napi::CallbackInfo& info);

  /**
   * Fills out[0..count) from iovs entries [first, first+count) (IOV_STRIDE
   * doubles each), checking every one against its buffer. `iovsLength` is the
   * number of doubles in `iovs`. A failure throws RangeError naming the entry
   * (prefixed by "ops[owner]: " when owner >= 0) before anything is used.
   */
  void BuildIovecs(Napi::Env env, const double* iovs, size_t iovsLength, double first,
                   double count, struct iovec* out, long owner) const;

 private:
  struct Entry {
    /** Keeps the memory alive (and mapped) while this table names it. */
    std::shared_ptr<v8::BackingStore> store;
    uint8_t* base;
    size_t length;
  };

  Napi::Value Set(const Napi::CallbackInfo& info);
  Napi::Value GetLength(const Napi::CallbackInfo& info);
  Napi::Value BaseAlignment(const Napi::CallbackInfo& info);
  void BuildOne(Napi::Env env, const double* entry, size_t index, struct iovec* out,
                long owner) const;

  std::vector<Entry> entries_;
};

/** Values of src/native.ts's IOV_STRIDE and AIO_OP_STRIDE. */
constexpr size_t kIovStride = 3;
constexpr size_t kAioOpStride = 6;

}  // namespace vhost_rt
