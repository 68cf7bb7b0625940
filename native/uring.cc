// io_uring through liburing: the io_uring engine's native half. Policy (which
// fd, alignment fallbacks, error hand-back) lives in src/io/io-uring.ts.
#include "uring.h"

#include <sched.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "args.h"
#include "buffers.h"
#include "errors.h"
#include "modules.h"

namespace vhost_rt {

/** IORING_MAX_ENTRIES: the largest SQ ring the kernel accepts. */
constexpr int64_t kMaxDepth = 32768;
/** Largest CQ ring the kernel accepts (IORING_MAX_CQ_ENTRIES). */
constexpr uint32_t kMaxCqEntries = 65536;
constexpr int64_t kMaxIovs = 1 << 20;
/** Submission attempts on EAGAIN / EBUSY before giving up. */
constexpr int kSubmitRetries = 1000;

// Field offsets inside one ops entry (URING_OP in src/native.ts; AIO_OP's layout).
enum OpField { kOpcode = 0, kFd = 1, kOffset = 2, kFirstIov = 3, kIovCount = 4, kUserData = 5 };
// FALLOCATE reuses the iovec fields: mode and length (URING_OP.mode / .length).
constexpr int kMode = kFirstIov;
constexpr int kLength = kIovCount;
// Opcodes (URING_CMD): the vectored and sync ones share IOCB_CMD_* values.
constexpr double kFdsync = 3;
constexpr double kReadv = 7;
constexpr double kWritev = 8;
constexpr double kFallocate = 100;

Napi::Function UringContext::Define(Napi::Env env) {
  return DefineClass(env, "UringContext",
                     {
                         InstanceMethod<&UringContext::Submit>("submit"),
                         InstanceMethod<&UringContext::GetEvents>("getEvents"),
                         InstanceMethod<&UringContext::Destroy>("destroy"),
                         InstanceAccessor<&UringContext::GetSqpoll>("sqpoll"),
                     });
}

UringContext::UringContext(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<UringContext>(info) {
  Napi::Env env = info.Env();
  depth_ = static_cast<uint32_t>(ArgInteger(info, 0, "depth", 1, kMaxDepth));
  int eventFd = static_cast<int>(ArgInteger(info, 1, "eventfd", -1, INT32_MAX));
  maxIovs_ = static_cast<uint32_t>(ArgInteger(info, 2, "maxIovs", 0, kMaxIovs));
  auto sqpollIdleMs = ArgInteger(info, 3, "sqpollIdleMs", -1, 60000);
  iovecs_.resize(maxIovs_);
  iovBase_.resize(depth_);
  cqes_.resize(depth_);
  struct io_uring_params p{};
  // A CQ ring at least as deep as the most operations in flight: never overflows.
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
  p.cq_entries = std::min(std::max(depth_ * 2, 2u), kMaxCqEntries);
  if (sqpollIdleMs >= 0) {
    p.flags |= IORING_SETUP_SQPOLL;
    p.sq_thread_idle = static_cast<uint32_t>(sqpollIdleMs);
  }
  unsigned entries = std::min<uint32_t>(depth_, 4096);
  struct io_uring_params asked = p;
  int rc = io_uring_queue_init_params(entries, &ring_, &p);
  if (rc == -EINVAL) {
    // Kernels before 5.18 do not know SUBMIT_ALL; without it a refused SQE
    // still completes with -errno, the submit just stops early and is retried.
    p = asked;
    p.flags &= ~IORING_SETUP_SUBMIT_ALL;
    rc = io_uring_queue_init_params(entries, &ring_, &p);
  }
  if (rc < 0) ThrowErrno(env, "io_uring_setup", -rc);
  live_ = true;
  sqpoll_ = sqpollIdleMs >= 0;
  if (eventFd >= 0 && (rc = io_uring_register_eventfd(&ring_, eventFd)) < 0) {
    Teardown();
    ThrowErrno(env, "io_uring_register_eventfd", -rc);
  }
}

UringContext::~UringContext() { Teardown(); }

void UringContext::Teardown() {
  if (!live_) return;
  live_ = false;
  io_uring_queue_exit(&ring_);
}

static std::string OpName(size_t i) { return "ops[" + std::to_string(i) + "]"; }

[[noreturn]] static void ThrowOpField(Napi::Env env, size_t i, const char* field, double lo,
                                      double hi) {
  ThrowRangeError(env, IntegerRangeMessage(OpName(i) + "." + field, lo, hi));
}

void UringContext::CheckOp(Napi::Env env, const BufferTable& table, const double* op, size_t i,
                           const Napi::Float64Array& iovs, size_t& usedIovs) {
  double code = op[kOpcode];
  if (code != kReadv && code != kWritev && code != kFdsync && code != kFallocate) {
    ThrowRangeError(env, OpName(i) + ".opcode " + Num(code) + " is not a known URING_CMD");
  }
  if (!IsIntegerIn(op[kFd], 0, INT32_MAX)) ThrowOpField(env, i, "fd", 0, INT32_MAX);
  if (!IsIntegerIn(op[kOffset], 0, kMaxSafeInteger)) {
    ThrowOpField(env, i, "offset", 0, kMaxSafeInteger);
  }
  if (!IsIntegerIn(op[kUserData], 0, kMaxSafeInteger)) {
    ThrowOpField(env, i, "userData", 0, kMaxSafeInteger);
  }
  iovBase_[i] = usedIovs;
  if (code == kFdsync) return;
  if (code == kFallocate) {
    if (!IsIntegerIn(op[kMode], 0, INT32_MAX)) ThrowOpField(env, i, "mode", 0, INT32_MAX);
    if (!IsIntegerIn(op[kLength], 0, kMaxSafeInteger)) {
      ThrowOpField(env, i, "length", 0, kMaxSafeInteger);
    }
    return;
  }
  double count = op[kIovCount];
  if (!IsIntegerIn(count, 0, static_cast<double>(maxIovs_ - usedIovs))) {
    ThrowRangeError(env, OpName(i) + ": iovCount " + Num(count) +
                             " exceeds the iovecs left of maxIovs (" + std::to_string(maxIovs_) +
                             ") in this submit");
  }
  table.BuildIovecs(env, iovs.Data(), iovs.ElementLength(), op[kFirstIov], count,
                    iovecs_.data() + usedIovs, static_cast<long>(i));
  usedIovs += static_cast<size_t>(count);
}

void UringContext::PrepareSqe(struct io_uring_sqe* sqe, const double* op, size_t iovBase) {
  int fd = static_cast<int>(op[kFd]);
  auto offset = static_cast<uint64_t>(op[kOffset]);
  double code = op[kOpcode];
  // Invariant: iovecs_[iovBase..) were built and bounds-checked by CheckOp in
  // this submit and are not rewritten until the kernel has consumed this SQE
  // (IORING_FEAT_SUBMIT_STABLE without SQPOLL; WaitConsumed with it).
  if (code == kReadv || code == kWritev) {
    auto n = static_cast<unsigned>(op[kIovCount]);
    if (code == kReadv) io_uring_prep_readv(sqe, fd, iovecs_.data() + iovBase, n, offset);
    else io_uring_prep_writev(sqe, fd, iovecs_.data() + iovBase, n, offset);
  } else if (code == kFdsync) {
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
  } else {
    io_uring_prep_fallocate(sqe, fd, static_cast<int>(op[kMode]), static_cast<off_t>(offset),
                            static_cast<off_t>(op[kLength]));
  }
  io_uring_sqe_set_data64(sqe, static_cast<uint64_t>(op[kUserData]));
}

void UringContext::WaitConsumed() {
  // io_uring_sq_ready reads the kernel's SQ head with acquire ordering: once it
  // says 0, the SQPOLL thread has read every SQE (and with it the iovecs).
  while (io_uring_sq_ready(&ring_) > 0) {
    if (IO_URING_READ_ONCE(*ring_.sq.kflags) & IORING_SQ_NEED_WAKEUP) io_uring_submit(&ring_);
    else sched_yield();
  }
}

void UringContext::SubmitAll(Napi::Env env) {
  for (int attempt = 0; io_uring_sq_ready(&ring_) > 0;) {
    int rc = io_uring_submit(&ring_);
    if (rc >= 0 && sqpoll_) WaitConsumed();
    if (rc > 0 || rc == -EINTR || (rc == 0 && sqpoll_)) continue;
    // EAGAIN / EBUSY (or nothing taken): the kernel is short of resources for a moment.
    if ((rc == 0 || rc == -EAGAIN || rc == -EBUSY) && ++attempt < kSubmitRetries) {
      sched_yield();
      continue;
    }
    ThrowErrno(env, "io_uring_enter", rc == 0 ? EAGAIN : -rc);
  }
}

struct io_uring_sqe* UringContext::NextSqe(Napi::Env env) {
  struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe != nullptr) return sqe;
  SubmitAll(env);
  return io_uring_get_sqe(&ring_);
}

const uint16_t* UringContext::IoprioArg(const Napi::CallbackInfo& info, size_t count) {
  if (info.Length() <= 4 || info[4].IsUndefined()) return nullptr;
  if (!info[4].IsTypedArray() ||
      info[4].As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array) {
    ThrowTypeError(info.Env(), "ioprios must be a Uint16Array");
  }
  Napi::Uint16Array p = info[4].As<Napi::Uint16Array>();
  if (p.ElementLength() < count) {
    ThrowRangeError(info.Env(),
                    "ioprios holds fewer than count (" + std::to_string(count) + ") entries");
  }
  return p.Data();
}

Napi::Value UringContext::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const BufferTable& table = BufferTable::From(env, info[0], "table");
  Napi::Float64Array ops = ArgFloat64Array(info, 1, "ops");
  auto count = static_cast<size_t>(ArgInteger(info, 2, "count", 0, depth_));
  Napi::Float64Array iovs = ArgFloat64Array(info, 3, "iovs");
  if (ops.ElementLength() < count * kAioOpStride) {
    ThrowRangeError(env, "ops holds fewer than count (" + std::to_string(count) + ") entries");
  }
  const uint16_t* prios = IoprioArg(info, count);
  if (!live_) ThrowErrno(env, "io_uring_enter", EBADF);
  // Every entry is checked before anything is queued, so a bad entry means no
  // I/O. Entries are copied first: `ops` may live in a SharedArrayBuffer.
  size_t usedIovs = 0;
  for (size_t i = 0; i < count; i++) {
    double op[kAioOpStride];
    memcpy(op, ops.Data() + i * kAioOpStride, sizeof op);
    CheckOp(env, table, op, i, iovs, usedIovs);
  }
  for (size_t i = 0; i < count; i++) {
    double op[kAioOpStride];
    memcpy(op, ops.Data() + i * kAioOpStride, sizeof op);
    struct io_uring_sqe* sqe = NextSqe(env);
    PrepareSqe(sqe, op, iovBase_[i]);
    // 0: the submitting thread's I/O priority. Otherwise the kernel checks it
    // (EINVAL / EPERM as a -errno completion) and gives it to the request.
    if (prios != nullptr) sqe->ioprio = prios[i];
  }
  // One io_uring_enter for the batch (more only when it outgrew the SQ ring).
  SubmitAll(env);
  return Napi::Number::New(env, static_cast<double>(count));
}

Napi::Value UringContext::GetEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Float64Array out = ArgFloat64Array(info, 0, "out");
  auto max = static_cast<size_t>(ArgInteger(info, 1, "max", 0, INT32_MAX));
  if (!live_) ThrowErrno(env, "io_uring_peek", EBADF);
  size_t n = std::min({max, static_cast<size_t>(depth_), out.ElementLength() / 2});
  if (n == 0) return Napi::Number::New(env, 0);
  // Reads the CQ tail with acquire ordering: each CQE is complete once seen.
  unsigned got = io_uring_peek_batch_cqe(&ring_, cqes_.data(), static_cast<unsigned>(n));
  double* pairs = out.Data();
  for (unsigned k = 0; k < got; k++) {
    pairs[2 * k] = static_cast<double>(io_uring_cqe_get_data64(cqes_[k]));
    pairs[2 * k + 1] = static_cast<double>(cqes_[k]->res);
  }
  // Releases the slots to the kernel (store-release of the CQ head).
  io_uring_cq_advance(&ring_, got);
  return Napi::Number::New(env, static_cast<double>(got));
}

Napi::Value UringContext::GetSqpoll(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), sqpoll_);
}

Napi::Value UringContext::Destroy(const Napi::CallbackInfo& info) {
  Teardown();
  return info.Env().Undefined();
}

void InitUring(Napi::Env env, Napi::Object exports) {
  exports.Set("UringContext", UringContext::Define(env));
}

}  // namespace vhost_rt
