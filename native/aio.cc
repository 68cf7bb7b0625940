#include "aio.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <string>

#include "args.h"
#include "buffers.h"
#include "errors.h"

namespace vhost_rt {

/** Largest depth accepted (the kernel's aio-max-nr default is 65536). */
constexpr int64_t kMaxDepth = 65536;
/** Largest iovec capacity accepted per submit call. */
constexpr int64_t kMaxIovs = 1 << 20;

// Field offsets inside one ops entry (AIO_OP in src/native.ts).
enum OpField { kOpcode = 0, kFd = 1, kOffset = 2, kFirstIov = 3, kIovCount = 4, kUserData = 5 };

static bool IsKnownOpcode(double op) {
  return op == IOCB_CMD_PREAD || op == IOCB_CMD_PWRITE || op == IOCB_CMD_FSYNC ||
         op == IOCB_CMD_FDSYNC || op == IOCB_CMD_PREADV || op == IOCB_CMD_PWRITEV;
}

Napi::Function AioContext::Define(Napi::Env env) {
  return DefineClass(env, "AioContext",
                     {
                         InstanceMethod<&AioContext::Submit>("submit"),
                         InstanceMethod<&AioContext::GetEvents>("getEvents"),
                         InstanceMethod<&AioContext::Destroy>("destroy"),
                     });
}

AioContext::AioContext(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AioContext>(info) {
  Napi::Env env = info.Env();
  depth_ = static_cast<uint32_t>(ArgInteger(info, 0, "depth", 1, kMaxDepth));
  resfd_ = static_cast<int>(ArgInteger(info, 1, "eventfd", -1, INT32_MAX));
  maxIovs_ = static_cast<uint32_t>(ArgInteger(info, 2, "maxIovs", 0, kMaxIovs));
  iocbs_.resize(depth_);
  iocbPtrs_.resize(depth_);
  iovecs_.resize(maxIovs_);
  events_.resize(depth_);
  for (uint32_t i = 0; i < depth_; i++) iocbPtrs_[i] = &iocbs_[i];
  if (syscall(SYS_io_setup, depth_, &ctx_) < 0) ThrowErrno(env, "io_setup", errno);
}

AioContext::~AioContext() { DestroyContext(); }

int AioContext::DestroyContext() {
  if (ctx_ == 0) return 0;
  // io_destroy waits for in-flight iocbs, so their buffers are no longer used after.
  long rc = syscall(SYS_io_destroy, ctx_);
  ctx_ = 0;
  return rc < 0 ? errno : 0;
}

static std::string OpName(size_t i) { return "ops[" + std::to_string(i) + "]"; }

[[noreturn]] static void ThrowOpField(Napi::Env env, size_t i, const char* field, double lo,
                                      double hi) {
  ThrowRangeError(env, IntegerRangeMessage(OpName(i) + "." + field, lo, hi));
}

void AioContext::PrepareIovecs(Napi::Env env, const BufferTable& table, const double* op,
                               size_t i, const Napi::Float64Array& iovs, size_t& usedIovs) {
  double count = op[kIovCount];
  bool vectored = op[kOpcode] == IOCB_CMD_PREADV || op[kOpcode] == IOCB_CMD_PWRITEV;
  // PREAD / PWRITE take one plain buffer, named by exactly one iovec.
  if (!vectored && count != 1) ThrowOpField(env, i, "iovCount", 1, 1);
  if (!IsIntegerIn(count, 0, static_cast<double>(maxIovs_ - usedIovs))) {
    ThrowRangeError(env, OpName(i) + ": iovCount " + Num(count) +
                             " exceeds the iovecs left of maxIovs (" + std::to_string(maxIovs_) +
                             ") in this submit");
  }
  struct iovec* out = iovecs_.data() + usedIovs;
  table.BuildIovecs(env, iovs.Data(), iovs.ElementLength(), op[kFirstIov], count, out,
                    static_cast<long>(i));
  struct iocb& cb = iocbs_[i];
  // Invariant: `out` lives in iovecs_, which lives as long as this object; the
  // kernel copies the iovec array during io_submit (import_iovec), so reusing
  // iovecs_ in the next submit does not disturb I/O in flight.
  cb.aio_buf = vectored ? reinterpret_cast<uintptr_t>(out) : reinterpret_cast<uintptr_t>(out->iov_base);
  cb.aio_nbytes = vectored ? static_cast<size_t>(count) : out->iov_len;
  usedIovs += static_cast<size_t>(count);
}

void AioContext::PrepareIocb(Napi::Env env, const BufferTable& table, const double* op, size_t i,
                             const Napi::Float64Array& iovs, size_t& usedIovs) {
  if (!IsKnownOpcode(op[kOpcode])) {
    ThrowRangeError(env, OpName(i) + ".opcode " + Num(op[kOpcode]) + " is not a known IOCB_CMD_*");
  }
  if (!IsIntegerIn(op[kFd], 0, INT32_MAX)) ThrowOpField(env, i, "fd", 0, INT32_MAX);
  if (!IsIntegerIn(op[kOffset], 0, kMaxSafeInteger)) {
    ThrowOpField(env, i, "offset", 0, kMaxSafeInteger);
  }
  if (!IsIntegerIn(op[kUserData], 0, kMaxSafeInteger)) {
    ThrowOpField(env, i, "userData", 0, kMaxSafeInteger);
  }
  struct iocb& cb = iocbs_[i];
  memset(&cb, 0, sizeof cb);
  cb.aio_data = static_cast<uint64_t>(op[kUserData]);
  cb.aio_lio_opcode = static_cast<uint16_t>(op[kOpcode]);
  cb.aio_fildes = static_cast<uint32_t>(op[kFd]);
  cb.aio_offset = static_cast<int64_t>(op[kOffset]);
  if (resfd_ >= 0) {
    cb.aio_flags = IOCB_FLAG_RESFD;
    cb.aio_resfd = static_cast<uint32_t>(resfd_);
  }
  // FSYNC / FDSYNC carry no buffers: their iovec fields are ignored.
  if (op[kOpcode] == IOCB_CMD_FSYNC || op[kOpcode] == IOCB_CMD_FDSYNC) return;
  PrepareIovecs(env, table, op, i, iovs, usedIovs);
}

void AioContext::SetIoprio(struct iocb& cb, uint16_t ioprio) {
  // 0 (IOPRIO_CLASS_NONE): the submitting thread's own I/O priority applies.
  // Otherwise the kernel checks the value (ioprio_check_cap: EINVAL for a bad
  // class or level, EPERM for RT without CAP_SYS_ADMIN / CAP_SYS_NICE) and
  // gives it to the request (kiocb.ki_ioprio, then bio->bi_ioprio).
  if (ioprio == 0) return;
  cb.aio_flags |= IOCB_FLAG_IOPRIO;
  cb.aio_reqprio = static_cast<int16_t>(ioprio);
}

Napi::Value AioContext::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const BufferTable& table = BufferTable::From(env, info[0], "table");
  Napi::Float64Array ops = ArgFloat64Array(info, 1, "ops");
  auto count = static_cast<size_t>(ArgInteger(info, 2, "count", 0, depth_));
  Napi::Float64Array iovs = ArgFloat64Array(info, 3, "iovs");
  if (ops.ElementLength() < count * kAioOpStride) {
    ThrowRangeError(env, "ops holds fewer than count (" + std::to_string(count) + ") entries");
  }
  // Optional: one I/O priority (ioprio_set(2) encoding) per op, 0 = none.
  const uint16_t* prios = nullptr;
  if (info.Length() > 4 && !info[4].IsUndefined()) {
    if (!info[4].IsTypedArray() ||
        info[4].As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array) {
      ThrowTypeError(env, "ioprios must be a Uint16Array");
    }
    Napi::Uint16Array p = info[4].As<Napi::Uint16Array>();
    if (p.ElementLength() < count) {
      ThrowRangeError(env, "ioprios holds fewer than count (" + std::to_string(count) + ") entries");
    }
    prios = p.Data();
  }
  if (ctx_ == 0) ThrowErrno(env, "io_submit", EINVAL);
  // Every entry is checked before the one io_submit, so a bad entry means no I/O.
  // Each entry is copied first: `ops` may live in a SharedArrayBuffer that
  // another thread writes, and what was checked must be what is submitted.
  size_t usedIovs = 0;
  double op[kAioOpStride];
  for (size_t i = 0; i < count; i++) {
    memcpy(op, ops.Data() + i * kAioOpStride, sizeof op);
    PrepareIocb(env, table, op, i, iovs, usedIovs);
    if (prios != nullptr) SetIoprio(iocbs_[i], prios[i]);
  }
  if (count == 0) return Napi::Number::New(env, 0);
  // Invariant: iocbPtrs_[0..count) point at the iocbs just filled; the kernel
  // copies each iocb during io_submit, so they may be rewritten afterwards.
  long n;
  do {
    n = syscall(SYS_io_submit, ctx_, static_cast<long>(count), iocbPtrs_.data());
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, "io_submit", errno);
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value AioContext::GetEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Float64Array out = ArgFloat64Array(info, 0, "out");
  auto max = static_cast<size_t>(ArgInteger(info, 1, "max", 0, INT32_MAX));
  if (ctx_ == 0) ThrowErrno(env, "io_getevents", EINVAL);
  size_t n = std::min({max, static_cast<size_t>(depth_), out.ElementLength() / 2});
  if (n == 0) return Napi::Number::New(env, 0);
  struct timespec zero = {0, 0};
  long got;
  do {
    got = syscall(SYS_io_getevents, ctx_, 0L, static_cast<long>(n), events_.data(), &zero);
  } while (got < 0 && errno == EINTR);
  if (got < 0) ThrowErrno(env, "io_getevents", errno);
  double* pairs = out.Data();
  for (long k = 0; k < got; k++) {
    pairs[2 * k] = static_cast<double>(events_[k].data);
    pairs[2 * k + 1] = static_cast<double>(events_[k].res);
  }
  return Napi::Number::New(env, static_cast<double>(got));
}

Napi::Value AioContext::Destroy(const Napi::CallbackInfo& info) {
  int err = DestroyContext();
  if (err != 0) ThrowErrno(info.Env(), "io_destroy", err);
  return info.Env().Undefined();
}

}  // namespace vhost_rt
