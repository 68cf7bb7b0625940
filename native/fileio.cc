// File I/O outside AIO: synchronous preadv / pwritev over BufferTable iovecs
// (baseline engines), fdatasync / fallocate on the libuv threadpool, and the
// logical block size of an open fd; its extent count (FIEMAP); open-file-description
// byte locks (image locking).
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "addon.h"
#include "args.h"
#include "buffers.h"
#include "errors.h"
#include "loop-callback.h"
#include "modules.h"

namespace vhost_rt {

/** Reads the (fd, table, iovs, firstIov, iovCount, offset) arguments into scratch iovecs. */
static struct iovec* VectorArgs(const Napi::CallbackInfo& info, int& fd, int& count,
                                off_t& offset) {
  Napi::Env env = info.Env();
  fd = ArgInt32(info, 0, "fd");
  const BufferTable& table = BufferTable::From(env, info[1], "table");
  Napi::Float64Array iovs = ArgFloat64Array(info, 2, "iovs");
  double first = static_cast<double>(ArgSize(info, 3, "firstIov"));
  count = static_cast<int>(ArgInteger(info, 4, "iovCount", 0, IOV_MAX));
  offset = static_cast<off_t>(ArgSize(info, 5, "offset"));
  struct iovec* out = Addon::Of(env).scratchIovs;
  table.BuildIovecs(env, iovs.Data(), iovs.ElementLength(), first, count, out, -1);
  return out;
}

static Napi::Value Preadv(const Napi::CallbackInfo& info) {
  int fd, count;
  off_t offset;
  struct iovec* iov = VectorArgs(info, fd, count, offset);
  ssize_t n;
  do {
    n = preadv(fd, iov, count, offset);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(info.Env(), "preadv", errno);
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

static Napi::Value Pwritev(const Napi::CallbackInfo& info) {
  int fd, count;
  off_t offset;
  struct iovec* iov = VectorArgs(info, fd, count, offset);
  ssize_t n;
  do {
    n = pwritev(fd, iov, count, offset);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(info.Env(), "pwritev", errno);
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

/**
 * One blocking file system call (fdatasync, fallocate, FIEMAP's extent count) on the libuv
 * threadpool of the calling thread's loop (N-API async work is uv_queue_work on the env's
 * loop); callback(err, value) runs back on that thread.
 *
 * Raw napi_async_work, not Napi::AsyncWorker: node-addon-api opens the completion's handle
 * scope with a constructor that throws, outside any try. A completion arriving while a
 * worker thread was torn down threw a Napi::Error past every frame, and std::terminate killed
 * a CI test process (twice). The completion calls back through CallFromLoop, which drops what
 * the env cannot take any more, as FdWatcher::Dispatch does.
 */
class PoolCall {
 public:
  enum class Op { kFdatasync, kFallocate, kExtentCount };

  /** Queues `op`; throws (to the JS caller) only if N-API refuses the work. */
  static void Queue(Napi::Env env, Napi::Function callback, Op op, int fd, int mode = 0,
                    off_t offset = 0, off_t length = 0) {
    auto call = std::make_unique<PoolCall>(op, fd, mode, offset, length);
    call->callback_ = Napi::Persistent(callback);
    napi_value name;
    NAPI_THROW_IF_FAILED_VOID(
        env, napi_create_string_utf8(env, call->Syscall(), NAPI_AUTO_LENGTH, &name));
    NAPI_THROW_IF_FAILED_VOID(env, napi_create_async_work(env, nullptr, name, Execute, Complete,
                                                          call.get(), &call->work_));
    napi_status status = napi_queue_async_work(env, call->work_);
    if (status != napi_ok) {
      napi_delete_async_work(env, call->work_);
      NAPI_THROW_IF_FAILED_VOID(env, status);
    }
    call.release();  // Complete deletes it.
  }

  PoolCall(Op op, int fd, int mode, off_t offset, off_t length)
      : op_(op), fd_(fd), mode_(mode), offset_(offset), length_(length) {}

 private:
  const char* Syscall() const {
    return op_ == Op::kFdatasync ? "fdatasync" : op_ == Op::kFallocate ? "fallocate" : "ioctl";
  }

  /** Runs on a threadpool thread: touches no JS. */
  static void Execute(napi_env /*env*/, void* data) {
    auto* c = static_cast<PoolCall*>(data);
    int rc;
    struct fiemap fm{};
    do {
      switch (c->op_) {
        case Op::kFdatasync:
          rc = fdatasync(c->fd_);
          break;
        case Op::kFallocate:
          rc = fallocate(c->fd_, c->mode_, c->offset_, c->length_);
          break;
        default:
          // No extent array: the kernel only counts.
          fm = {};
          fm.fm_start = 0;
          fm.fm_length = FIEMAP_MAX_OFFSET;
          fm.fm_extent_count = 0;
          rc = ioctl(c->fd_, FS_IOC_FIEMAP, &fm);
      }
    } while (rc < 0 && errno == EINTR);
    c->err_ = rc < 0 ? errno : 0;
    c->value_ =
        c->op_ == Op::kExtentCount && rc >= 0 ? static_cast<double>(fm.fm_mapped_extents) : 0;
  }

  static void Complete(napi_env env, napi_status status, void* data) {
    std::unique_ptr<PoolCall> c(static_cast<PoolCall*>(data));
    napi_delete_async_work(env, c->work_);
    if (status != napi_ok) return;  // Cancelled: the env is going away.
    // The C API only (loop-callback.h): a terminating worker's env refuses calls, and
    // node-addon-api's error path is fatal there.
    CallFromLoop(env, nullptr, static_cast<napi_ref>(c->callback_), nullptr,
                 [&c](napi_env e, napi_value* argv) {
                   if (c->err_ != 0) {
                     argv[0] = TryErrnoError(e, c->Syscall(), c->err_);
                   } else if (napi_get_null(e, &argv[0]) != napi_ok) {
                     argv[0] = nullptr;
                   }
                   if (argv[0] == nullptr) return -1;
                   return napi_create_double(e, c->value_, &argv[1]) == napi_ok ? 2 : -1;
                 });
  }

  Op op_;
  int fd_;
  int mode_;
  off_t offset_;
  off_t length_;
  int err_ = 0;
  double value_ = 0;
  napi_async_work work_ = nullptr;
  Napi::FunctionReference callback_;
};

/** fdatasync(fd) on the threadpool; callback(err, 0). */
static Napi::Value FdatasyncAsync(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  Napi::Function callback = ArgFunction(info, 1, "callback");
  PoolCall::Queue(info.Env(), callback, PoolCall::Op::kFdatasync, fd);
  return info.Env().Undefined();
}

/** fallocate(fd, mode, offset, length) on the threadpool; callback(err, 0). */
static Napi::Value FallocateAsync(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  int mode = ArgInt32(info, 1, "mode");
  auto offset = static_cast<off_t>(ArgSize(info, 2, "offset"));
  auto length = static_cast<off_t>(ArgSize(info, 3, "length"));
  Napi::Function callback = ArgFunction(info, 4, "callback");
  PoolCall::Queue(info.Env(), callback, PoolCall::Op::kFallocate, fd, mode, offset, length);
  return info.Env().Undefined();
}

/** Largest block size reported; virtio-blk guests handle up to a page. */
constexpr int kMaxBlockSize = 4096;
/** Block size for regular files when the kernel does not report a DIO alignment. */
constexpr int kDefaultFileBlockSize = 512;

/** O_DIRECT offset alignment of a regular file (statx STATX_DIOALIGN), or 0 if unknown. */
static int DirectIoAlignment(int fd) {
  struct statx stx{};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) < 0) return 0;
  if ((stx.stx_mask & STATX_DIOALIGN) == 0) return 0;
  return static_cast<int>(stx.stx_dio_offset_align);
}

static Napi::Value BlockSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  struct stat st{};
  if (fstat(fd, &st) < 0) ThrowErrno(env, "fstat", errno);
  int size = kDefaultFileBlockSize;
  if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKSSZGET, &size) < 0) ThrowErrno(env, "ioctl", errno);
  } else if (int align = DirectIoAlignment(fd); align > 0) {
    size = align;
  } else if (st.st_blksize > 0 && st.st_blksize < size) {
    size = static_cast<int>(st.st_blksize);
  }
  return Napi::Number::New(env, std::clamp(size, 1, kMaxBlockSize));
}

/**
 * The number of extents the file under `fd` maps (FS_IOC_FIEMAP with no extent array: the
 * kernel only counts), on the libuv threadpool: the count walks the file's whole extent tree
 * (25–38 ms for 100 000 extents on ext4 here, over two days), too long for the main thread, which answers every
 * device's vhost-user messages. What a reflink clone's time grows with. callback(err, count);
 * EOPNOTSUPP where the file system has no FIEMAP.
 */
static Napi::Value ExtentCountAsync(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  Napi::Function callback = ArgFunction(info, 1, "callback");
  PoolCall::Queue(info.Env(), callback, PoolCall::Op::kExtentCount, fd);
  return info.Env().Undefined();
}

/** Lock types as JS passes them: 0 unlock, 1 read (shared), 2 write (exclusive). */
static short LockType(Napi::Env env, const Napi::CallbackInfo& info, size_t i) {
  switch (ArgInteger(info, i, "type", 0, 2)) {
    case 1:
      return F_RDLCK;
    case 2:
      return F_WRLCK;
    default:
      return F_UNLCK;
  }
}

static struct flock LockRange(const Napi::CallbackInfo& info) {
  struct flock fl{};
  fl.l_type = LockType(info.Env(), info, 1);
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(ArgSize(info, 2, "start"));
  fl.l_len = static_cast<off_t>(ArgSize(info, 3, "length"));
  fl.l_pid = 0;  // open file description locks require 0
  return fl;
}

/**
 * fcntl(F_OFD_SETLK): takes, converts or releases an open-file-description
 * lock on [start, start + length) without waiting; a conflict throws EAGAIN.
 */
static Napi::Value OfdSetLock(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  struct flock fl = LockRange(info);
  int rc;
  do {
    rc = fcntl(fd, F_OFD_SETLK, &fl);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) ThrowErrno(info.Env(), "fcntl", errno);
  return info.Env().Undefined();
}

/**
 * fcntl(F_OFD_GETLK): the type (1 read, 2 write) of a lock held through another
 * open file description that would conflict with taking `type` on the range,
 * or 0 when none would.
 */
static Napi::Value OfdTestLock(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  struct flock fl = LockRange(info);
  if (fcntl(fd, F_OFD_GETLK, &fl) < 0) ThrowErrno(info.Env(), "fcntl", errno);
  int held = fl.l_type == F_RDLCK ? 1 : fl.l_type == F_WRLCK ? 2 : 0;
  return Napi::Number::New(info.Env(), held);
}

void InitFileIo(Napi::Env env, Napi::Object exports) {
  Export(env, exports, "preadv", Preadv);
  Export(env, exports, "pwritev", Pwritev);
  Export(env, exports, "fdatasyncAsync", FdatasyncAsync);
  Export(env, exports, "fallocateAsync", FallocateAsync);
  Export(env, exports, "blockSize", BlockSize);
  Export(env, exports, "extentCountAsync", ExtentCountAsync);
  Export(env, exports, "ofdSetLock", OfdSetLock);
  Export(env, exports, "ofdTestLock", OfdTestLock);
}

}  // namespace vhost_rt
