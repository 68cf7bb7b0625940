// TAP devices for the network switch's uplink port: open /dev/net/tun as a
// TAP with a virtio-net header in front of every frame (IFF_VNET_HDR), set
// the header size and the offloads the kernel may hand us, bring the link up,
// and move frames with readv / writev. Every fd is O_NONBLOCK | O_CLOEXEC;
// EAGAIN is a return value (-1), not an exception, because a port worker
// polls the fd on its own loop and must never block.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "modules.h"
#include "v8_bridge.h"
#include "views.h"

namespace vhost_rt {

/** Closes `fd` after a failed `syscall` and throws that failure's errno. */
[[noreturn]] static void CloseAndThrowNet(Napi::Env env, int fd, const char* syscall) {
  int err = errno;
  close(fd);
  ThrowErrno(env, syscall, err);
}

/** SIOCGIFFLAGS / SIOCSIFFLAGS need any socket of the interface's namespace. */
static void BringUp(Napi::Env env, const char* name) {
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) ThrowErrno(env, "socket", errno);
  ifreq ifr{};
  // ifr is zeroed, so copying at most IFNAMSIZ - 1 bytes leaves a terminating NUL.
  std::memcpy(ifr.ifr_name, name, strnlen(name, IFNAMSIZ - 1));
  if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) CloseAndThrowNet(env, sock, "ioctl(SIOCGIFFLAGS)");
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) CloseAndThrowNet(env, sock, "ioctl(SIOCSIFFLAGS)");
  close(sock);
}

// tapOpen(name, vnetHdrSize, offload) -> { fd, name }
static Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgString(info, 0, "name");
  int hdrSize = static_cast<int>(ArgInteger(info, 1, "vnetHdrSize", 10, 12));
  unsigned offload = static_cast<unsigned>(ArgInteger(info, 2, "offload", 0, 0xff));
  if (name.size() >= IFNAMSIZ) ThrowRangeError(env, "name must be at most 15 bytes");
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open(/dev/net/tun)", errno);
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) CloseAndThrowNet(env, fd, "ioctl(TUNSETIFF)");
  if (ioctl(fd, TUNSETVNETHDRSZ, &hdrSize) < 0) CloseAndThrowNet(env, fd, "ioctl(TUNSETVNETHDRSZ)");
  if (ioctl(fd, TUNSETOFFLOAD, offload) < 0) CloseAndThrowNet(env, fd, "ioctl(TUNSETOFFLOAD)");
  try {
    BringUp(env, ifr.ifr_name);
  } catch (...) {
    close(fd);
    throw;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("fd", Napi::Number::New(env, fd));
  out.Set("name", Napi::String::New(env, ifr.ifr_name));
  return out;
}

// tapRead(fd, hdr, data, offset, maxLength) -> frame bytes after the header, -1 on EAGAIN
static Napi::Value TapRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  Napi::Uint8Array hdr = ArgUint8Array(info, 1, "hdr");
  Napi::Uint8Array data = ArgUint8Array(info, 2, "data");
  int64_t off = ArgSize(info, 3, "offset");
  int64_t len = ArgSize(info, 4, "maxLength");
  if (off + len > static_cast<int64_t>(data.ByteLength()))
    ThrowRangeError(env, "offset + maxLength exceeds data");
  iovec iov[2] = {{hdr.Data(), hdr.ByteLength()}, {data.Data() + off, static_cast<size_t>(len)}};
  ssize_t n;
  do {
    n = readv(fd, iov, 2);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Napi::Number::New(env, -1);
  if (n < 0) ThrowErrno(env, "readv", errno);
  int64_t body = n - static_cast<int64_t>(hdr.ByteLength());
  return Napi::Number::New(env, body < 0 ? 0 : static_cast<double>(body));
}

// tapWrite(fd, hdr, data, off1, len1, off2, len2) -> bytes written, -1 on EAGAIN
static Napi::Value TapWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  Napi::Uint8Array hdr = ArgUint8Array(info, 1, "hdr");
  Napi::Uint8Array data = ArgUint8Array(info, 2, "data");
  int64_t off1 = ArgSize(info, 3, "off1");
  int64_t len1 = ArgSize(info, 4, "len1");
  int64_t off2 = ArgSize(info, 5, "off2");
  int64_t len2 = ArgSize(info, 6, "len2");
  int64_t size = static_cast<int64_t>(data.ByteLength());
  if (off1 + len1 > size || off2 + len2 > size) ThrowRangeError(env, "a part exceeds data");
  // A frame stored across the end of a ring is two parts: one writev, one frame.
  iovec iov[3] = {{hdr.Data(), hdr.ByteLength()},
                  {data.Data() + off1, static_cast<size_t>(len1)},
                  {data.Data() + off2, static_cast<size_t>(len2)}};
  ssize_t n;
  do {
    n = writev(fd, iov, len2 > 0 ? 3 : 2);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Napi::Number::New(env, -1);
  if (n < 0) ThrowErrno(env, "writev", errno);
  return Napi::Number::New(env, static_cast<double>(n));
}

// FrameCopier: the switch's frame copies between guest RAM and the packet
// rings. Both are SharedArrayBuffers, where V8's TypedArray.prototype.set
// takes a relaxed-atomic byte-by-byte memmove (42 % of the CPU at 1518-byte
// frames, issue 13); here one call per batch does every copy of the batch
// with memcpy. Thin by design: the JS side walks chains, routes, checks and
// publishes; this only moves bytes it was told to move, each range checked.
class FrameCopier : public Napi::ObjectWrap<FrameCopier> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FrameCopier",
                       {InstanceMethod<&FrameCopier::SetViews>("setViews"),
                        InstanceMethod<&FrameCopier::Copy>("copy"),
                        InstanceMethod<&FrameCopier::Prefetch>("prefetch")});
  }
  explicit FrameCopier(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FrameCopier>(info) {}

 private:
  struct View {
    HeldView held;
    uint8_t* base;
    double length;
  };

  // setViews(views: Uint8Array[]): view i is what ops call buffer i.
  Napi::Value SetViews(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array views = ArgArray(info, 0, "views");
    std::vector<View> out;
    out.reserve(views.Length());
    for (uint32_t i = 0; i < views.Length(); i++) {
      HeldView held =
          HoldView(env, views.Get(i), napi_uint8_array, "Uint8Array",
                   "views[" + std::to_string(i) + "]");
      uint8_t* base = held.base;
      double length = static_cast<double>(held.length);
      out.push_back(View{std::move(held), base, length});
    }
    views_.swap(out);
    return env.Undefined();
  }

  // copy(ops: Float64Array, count): op k is ops[5k .. 5k+5) = (srcView, srcOffset,
  // dstView, dstOffset, length); ranges of one op must not overlap.
  Napi::Value Copy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t count = 0;
    const double* op = Records(info, "ops", 5, &count);
    const double views = static_cast<double>(views_.size()) - 1;
    for (int64_t k = 0; k < count; k++, op += 5) {
      if (!InRange(op[0], views) || !InRange(op[2], views))
        ThrowRangeError(env, "ops[" + std::to_string(k) + "] names a view outside the table");
      const View& src = views_[static_cast<size_t>(op[0])];
      const View& dst = views_[static_cast<size_t>(op[2])];
      double len = op[4];
      if (!InRange(len, src.length) || !InRange(op[1], src.length - len) ||
          !InRange(op[3], dst.length - len))
        ThrowRangeError(env, "ops[" + std::to_string(k) + "] range is outside its views");
      // Invariant: both ranges were just checked against their views, which
      // their backing stores keep alive. Guest RAM that a front end truncates
      // faults here as in JS: the SIGBUS handler (sigbus.cc) maps zero pages.
      std::memcpy(dst.base + static_cast<size_t>(op[3]), src.base + static_cast<size_t>(op[1]),
                  static_cast<size_t>(len));
    }
    return env.Undefined();
  }

  // prefetch(at: Float64Array, count): pair k is at[2k .. 2k+2) = (view, offset).
  // Why: the switch's first read of a transmitted frame (its header, to route
  // it) misses the cache, the driver's CPU having just written it; read one
  // by one in JS those misses queue up (about 18 % of a port worker at
  // 1518-byte frames). Issued together here the CPU overlaps them. Pairs out
  // of range are skipped: a hint, never an error.
  Napi::Value Prefetch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t count = 0;
    const double* p = Records(info, "at", 2, &count);
    const double views = static_cast<double>(views_.size()) - 1;
    for (int64_t k = 0; k < count; k++, p += 2) {
      if (!InRange(p[0], views)) continue;
      const View& v = views_[static_cast<size_t>(p[0])];
      if (!InRange(p[1], v.length - 1)) continue;
      const uint8_t* line = v.base + static_cast<size_t>(p[1]);
      __builtin_prefetch(line, 0, 3);
      // The header and addresses span 26 bytes; the next line only when they cross.
      if ((reinterpret_cast<uintptr_t>(line) & 63) > 32 && p[1] + 32 <= v.length)
        __builtin_prefetch(line + 32, 0, 3);
    }
    return env.Undefined();
  }

  // Arguments (array: Float64Array, count) of records of `stride` doubles: the
  // array's data, with `count` checked to fit in it.
  static const double* Records(const Napi::CallbackInfo& info, const char* name, size_t stride,
                               int64_t* count) {
    Napi::Float64Array array = ArgFloat64Array(info, 0, name);
    *count = ArgSize(info, 1, "count");
    if (static_cast<size_t>(*count) > array.ElementLength() / stride)
      ThrowRangeError(info.Env(), std::string("count exceeds ") + name);
    return array.Data();
  }

  /** `v` is an integer in [0, max] (false for NaN); no libm call, unlike IsIntegerIn. */
  static bool InRange(double v, double max) {
    return v >= 0 && v <= max && static_cast<double>(static_cast<int64_t>(v)) == v;
  }

  std::vector<View> views_;
};

void InitNet(Napi::Env env, Napi::Object exports) {
  Export(env, exports, "tapOpen", TapOpen);
  Export(env, exports, "tapRead", TapRead);
  Export(env, exports, "tapWrite", TapWrite);
  exports.Set("FrameCopier", FrameCopier::Define(env));
}

}  // namespace vhost_rt
