// AioContext: a Linux AIO context (raw io_setup / io_submit / io_getevents /
// io_destroy syscalls) whose completions are signalled on an eventfd.
#pragma once

#include <linux/aio_abi.h>
#include <napi.h>
#include <sys/uio.h>

#include <vector>

namespace vhost_rt {

class BufferTable;

class AioContext : public Napi::ObjectWrap<AioContext> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit AioContext(const Napi::CallbackInfo& info);
  ~AioContext() override;

 private:
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value GetEvents(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  /** Fills iocbs_[i] from ops entry `op`; `usedIovs` counts iovecs_ taken so far. */
  void PrepareIocb(Napi::Env env, const BufferTable& table, const double* op, size_t i,
                   const Napi::Float64Array& iovs, size_t& usedIovs);
  /** Sets IOCB_FLAG_IOPRIO and aio_reqprio on iocbs_[i] when `ioprio` is not 0. */
  static void SetIoprio(struct iocb& cb, uint16_t ioprio);
  void PrepareIovecs(Napi::Env env, const BufferTable& table, const double* op, size_t i,
                     const Napi::Float64Array& iovs, size_t& usedIovs);
  int DestroyContext();

  aio_context_t ctx_ = 0;
  uint32_t depth_;
  uint32_t maxIovs_;
  int resfd_;
  // All allocated once in the constructor; submit and getEvents reuse them.
  std::vector<struct iocb> iocbs_;
  std::vector<struct iocb*> iocbPtrs_;
  std::vector<struct iovec> iovecs_;
  std::vector<struct io_event> events_;
};

}  // namespace vhost_rt
