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

#include "addon.h"
#include "args.h"
#include "buffers.h"
#include "errors.h"
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
 * One fdatasync or fallocate on the libuv threadpool of the calling thread's
 * loop (N-API async work is uv_queue_work on the env's loop); the callback runs
 * back on that thread as callback(err, 0).
 */
class FileSyncWork : public Napi::AsyncWorker {
 public:
  FileSyncWork(Napi::Function callback, bool fallocate, int fd, int mode, off_t offset,
               off_t length)
      : Napi::AsyncWorker(callback, fallocate ? "vhost_rt:fallocate" : "vhost_rt:fdatasync"),
        syscall_(fallocate ? "fallocate" : "fdatasync"),
        fallocate_(fallocate),
        fd_(fd),
        mode_(mode),
        offset_(offset),
        length_(length) {}

  /** Runs on a threadpool thread: touches no JS. */
  void Execute() override {
    int rc;
    do {
      rc = IsFallocate() ? fallocate(fd_, mode_, offset_, length_) : fdatasync(fd_);
    } while (rc < 0 && errno == EINTR);
    err_ = rc < 0 ? errno : 0;
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Value err = err_ != 0 ? ErrnoError(env, syscall_, err_).Value() : env.Null();
    Callback().Call({err, Napi::Number::New(env, 0)});
  }

 private:
  bool IsFallocate() const { return fallocate_; }

  const char* syscall_;  // a static string
  bool fallocate_;
  int fd_;
  int mode_;
  off_t offset_;
  off_t length_;
  int err_ = 0;
};

static Napi::Value FdatasyncAsync(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  Napi::Function callback = ArgFunction(info, 1, "callback");
  // AsyncWorker deletes itself after OnOK.
  (new FileSyncWork(callback, false, fd, 0, 0, 0))->Queue();
  return info.Env().Undefined();
}

static Napi::Value FallocateAsync(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  int mode = ArgInt32(info, 1, "mode");
  auto offset = static_cast<off_t>(ArgSize(info, 2, "offset"));
  auto length = static_cast<off_t>(ArgSize(info, 3, "length"));
  Napi::Function callback = ArgFunction(info, 4, "callback");
  (new FileSyncWork(callback, true, fd, mode, offset, length))->Queue();
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
 * (36 ms for 100 000 extents on ext4 here), too long for the main thread, which answers every
 * device's vhost-user messages. What a reflink clone's time grows with. callback(err, count);
 * EOPNOTSUPP where the file system has no FIEMAP.
 */
class ExtentCountWork : public Napi::AsyncWorker {
 public:
  ExtentCountWork(Napi::Function callback, int fd)
      : Napi::AsyncWorker(callback, "vhost_rt:fiemap"), fd_(fd) {}

  /** Runs on a threadpool thread: touches no JS. */
  void Execute() override {
    struct fiemap fm{};
    fm.fm_start = 0;
    fm.fm_length = FIEMAP_MAX_OFFSET;
    fm.fm_extent_count = 0;
    int rc;
    do {
      rc = ioctl(fd_, FS_IOC_FIEMAP, &fm);
    } while (rc < 0 && errno == EINTR);
    err_ = rc < 0 ? errno : 0;
    extents_ = fm.fm_mapped_extents;
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Value err = err_ != 0 ? ErrnoError(env, "ioctl", err_).Value() : env.Null();
    Callback().Call({err, Napi::Number::New(env, err_ != 0 ? 0 : static_cast<double>(extents_))});
  }

 private:
  int fd_;
  int err_ = 0;
  uint32_t extents_ = 0;
};

static Napi::Value ExtentCountAsync(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  Napi::Function callback = ArgFunction(info, 1, "callback");
  // AsyncWorker deletes itself after OnOK.
  (new ExtentCountWork(callback, fd))->Queue();
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
