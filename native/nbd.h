// NbdClient: one libnbd handle driven through its asynchronous API, with the
// same batch shape as AioContext (ops and iovecs as Float64Array tables, one
// submit per batch, completions reaped in one call). The socket is watched by
// an FdWatcher on the calling thread's loop (src/io/nbd.ts); this file only
// issues commands, pumps the state machine and collects completions. Policy —
// reconnect, back-off, timeouts, features — lives in TypeScript.
#pragma once

#include <libnbd.h>
#include <napi.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vhost_rt {

class BufferTable;

class NbdClient : public Napi::ObjectWrap<NbdClient> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit NbdClient(const Napi::CallbackInfo& info);
  ~NbdClient() override;

 private:
  /** One guest request (an ops entry) until all its NBD commands are done. */
  struct Op {
    double userData = 0;
    /** Bytes a read or write moves (0 for the others): the success result. */
    double bytes = 0;
    /** NBD commands of this op not yet completed. */
    uint32_t pending = 0;
    /** First errno any of its commands failed with (0: none). */
    int error = 0;
  };
  /**
   * One NBD command: a whole op, or one guest segment (or a server-sized
   * piece of one) of a read or write. Kept until it completes so that it can
   * be issued again on a new connection.
   */
  struct Sub {
    NbdClient* owner;
    uint32_t op;
    uint32_t cmd;
    uint32_t flags;
    uint64_t offset;
    uint64_t length;
    void* buf;
  };

  Napi::Value Connect(const Napi::CallbackInfo& info);
  Napi::Value BeginConnect(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value GetFd(const Napi::CallbackInfo& info);
  Napi::Value GetHeld(const Napi::CallbackInfo& info);
  Napi::Value GetLastError(const Napi::CallbackInfo& info);
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Pump(const Napi::CallbackInfo& info);
  Napi::Value GetEvents(const Napi::CallbackInfo& info);
  Napi::Value ResubmitHeld(const Napi::CallbackInfo& info);
  Napi::Value FailHeld(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  /** Closes any handle and starts connecting a new one; false (lastError_ set) on failure. */
  bool Start(const std::string& uri);
  /** Checks ops entry `i` and builds its iovecs at iovecs_[usedIovs..). */
  void CheckOp(Napi::Env env, const BufferTable& table, const double* op, size_t i,
               const Napi::Float64Array& iovs, size_t& usedIovs);
  /** Splits a checked op into NBD commands and issues (or holds) each. */
  void StartOp(const double* op, const struct iovec* segs);
  void AddSub(uint32_t op, uint32_t cmd, uint32_t flags, uint64_t offset, uint64_t length,
              void* buf);
  /** Hands `s` to libnbd, or holds it while there is no ready connection. */
  void Issue(Sub* s);
  void SubDone(Sub* s, int err);
  void PushCompletion(double userData, double result);
  Sub* TakeSub();
  /** Status bits (NBD_STATUS in src/native.ts) of the handle as it is now. */
  uint32_t Status();
  void NoteError();
  void CloseHandle();

  static int OnComplete(void* userData, int* error);

  struct nbd_handle* h_ = nullptr;
  /** The handle reached READY and has not been seen dead since. */
  bool connected_ = false;
  uint32_t depth_;
  uint32_t maxIovs_;
  /** Largest read / write one NBD command carries (the server's maximum block size). */
  uint64_t maxChunk_;
  std::string lastError_;
  int lastErrno_ = 0;
  // Allocated once (subs_ grows in blocks to its high-water mark, never moves).
  std::vector<Op> ops_;
  std::vector<uint32_t> freeOps_;
  std::vector<std::unique_ptr<Sub[]>> subBlocks_;
  std::vector<Sub*> freeSubs_;
  /** Commands waiting for a connection, in the order they were issued. */
  std::vector<Sub*> held_;
  std::vector<Sub*> resubmit_;
  std::vector<struct iovec> iovecs_;
  std::vector<size_t> iovBase_;
  /** Finished ops as [userData, result] pairs, a ring of depth_ entries. */
  std::vector<double> done_;
  size_t doneHead_ = 0;
  size_t doneCount_ = 0;
};

}  // namespace vhost_rt
