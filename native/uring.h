// UringContext: an io_uring (liburing) instance with the same shape as
// AioContext — ops and iovecs as Float64Array tables, one submit per batch,
// completions reaped without blocking and signalled on a registered eventfd.
#pragma once

#include <liburing.h>
#include <napi.h>
#include <sys/uio.h>

#include <vector>

namespace vhost_rt {

class BufferTable;

class UringContext : public Napi::ObjectWrap<UringContext> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit UringContext(const Napi::CallbackInfo& info);
  ~UringContext() override;

 private:
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value GetEvents(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  Napi::Value GetSqpoll(const Napi::CallbackInfo& info);
  /** Checks ops entry `op` and builds its iovecs into iovecs_[usedIovs..). */
  void CheckOp(Napi::Env env, const BufferTable& table, const double* op, size_t i,
               const Napi::Float64Array& iovs, size_t& usedIovs);
  /** Fills one SQE from a checked op whose iovecs start at iovecs_[iovBase]. */
  void PrepareSqe(struct io_uring_sqe* sqe, const double* op, size_t iovBase);
  /** The optional `ioprios` argument (index 4): a Uint16Array of at least `count`, or null. */
  static const uint16_t* IoprioArg(const Napi::CallbackInfo& info, size_t count);
  /** An SQE, submitting what is queued first when the SQ ring is full. */
  struct io_uring_sqe* NextSqe(Napi::Env env);
  /** io_uring_submit until every queued SQE was consumed by the kernel. */
  void SubmitAll(Napi::Env env);
  /** SQPOLL: waits until the kernel thread consumed every SQE (so iovecs_ may be rewritten). */
  void WaitConsumed();
  void Teardown();

  struct io_uring ring_ {};
  bool live_ = false;
  bool sqpoll_ = false;
  uint32_t depth_;
  uint32_t maxIovs_;
  // All allocated once in the constructor; submit and getEvents reuse them.
  std::vector<struct iovec> iovecs_;
  std::vector<size_t> iovBase_;
  std::vector<struct io_uring_cqe*> cqes_;
};

}  // namespace vhost_rt
