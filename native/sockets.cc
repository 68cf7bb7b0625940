// Unix stream sockets for the vhost-user control channel: listen / connect /
// accept, and recvmsg / sendmsg carrying up to kMaxFds descriptors as
// SCM_RIGHTS. Every fd created here is O_NONBLOCK | O_CLOEXEC. Also the
// datagram side of systemd's protocols (sd_notify sendto, a bound datagram
// socket for tests) and what an inherited (socket-activated) fd is.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

#include "args.h"
#include "errors.h"
#include "modules.h"

namespace vhost_rt {

/** Most descriptors one message may carry (vhost-user sends at most 8). */
constexpr size_t kMaxFds = 16;
/** How long sendMsg waits for room in the socket buffer before giving up. */
constexpr int kSendWaitMs = 1000;

/** Control-message space for kMaxFds descriptors, aligned as cmsghdr requires. */
union FdControl {
  struct cmsghdr align;
  char buf[CMSG_SPACE(sizeof(int) * kMaxFds)];
};

static sockaddr_un UnixAddress(Napi::Env env, const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    ThrowRangeError(env, "path must be 1 to " + std::to_string(sizeof addr.sun_path - 1) + " bytes");
  }
  memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

/** Closes `fd` after a failed `syscall` and throws that failure's errno. */
[[noreturn]] static void CloseAndThrow(Napi::Env env, int fd, const char* syscall) {
  int err = errno;
  close(fd);
  ThrowErrno(env, syscall, err);
}

static int UnixSocket(Napi::Env env) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket", errno);
  return fd;
}

static Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sockaddr_un addr = UnixAddress(env, ArgString(info, 0, "path"));
  int backlog = static_cast<int>(ArgInteger(info, 1, "backlog", 0, INT32_MAX));
  int fd = UnixSocket(env);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) CloseAndThrow(env, fd, "bind");
  if (listen(fd, backlog) < 0) CloseAndThrow(env, fd, "listen");
  return Napi::Number::New(env, fd);
}

static Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sockaddr_un addr = UnixAddress(env, ArgString(info, 0, "path"));
  int fd = UnixSocket(env);
  // A non-blocking AF_UNIX connect completes at once or fails (EAGAIN when the
  // listener's backlog is full); it never leaves a connection in progress.
  int rc;
  do {
    rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) CloseAndThrow(env, fd, "connect");
  return Napi::Number::New(env, fd);
}

static Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int listenFd = ArgInt32(info, 0, "listenFd");
  int fd;
  do {
    fd = accept4(listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Napi::Number::New(env, -1);
  if (fd < 0) ThrowErrno(env, "accept4", errno);
  return Napi::Number::New(env, fd);
}

/** Appends the SCM_RIGHTS fds of `msg` to `fds`; returns how many there were. */
static uint32_t CollectFds(Napi::Env env, msghdr& msg, Napi::Array fds) {
  uint32_t n = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    // Invariant: the kernel wrote cmsg_len bytes inside msg_control, so
    // `count` ints follow CMSG_DATA; memcpy because they may be unaligned.
    for (size_t k = 0; k < count; k++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
      fds.Set(n++, Napi::Number::New(env, fd));
    }
  }
  return n;
}

/** Closes every fd in `fds` (used when the message cannot be delivered whole). */
static void CloseAll(Napi::Array fds) {
  for (uint32_t k = 0; k < fds.Length(); k++) close(fds.Get(k).As<Napi::Number>().Int32Value());
}

static Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  Napi::Uint8Array buf = ArgUint8Array(info, 1, "buf");
  if (buf.ByteLength() == 0) ThrowRangeError(env, "buf must not be empty");
  // Invariant: buf's bytes stay alive for this synchronous call (it is on the
  // JS stack), and the kernel writes at most ByteLength() of them.
  iovec iov{buf.Data(), buf.ByteLength()};
  FdControl control;
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return env.Null();
  if (n < 0) ThrowErrno(env, "recvmsg", errno);
  Napi::Array fds = Napi::Array::New(env);
  CollectFds(env, msg, fds);
  if (msg.msg_flags & MSG_CTRUNC) {
    // The kernel dropped descriptors that did not fit: the message is unusable.
    CloseAll(fds);
    throw ErrnoError(env, "recvmsg", EMSGSIZE, "more than 16 file descriptors in one message");
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  result.Set("fds", fds);
  return result;
}

/** Reads fds[] into `out` (at most kMaxFds); returns the count. */
static size_t ReadFds(const Napi::CallbackInfo& info, size_t i, int* out) {
  Napi::Array fds = ArgArray(info, i, "fds");
  if (fds.Length() > kMaxFds) ThrowRangeError(info.Env(), "fds may hold at most 16 descriptors");
  for (uint32_t k = 0; k < fds.Length(); k++) {
    out[k] = static_cast<int>(ElementInteger(info.Env(), fds, k, "fds", 0, INT32_MAX));
  }
  return fds.Length();
}

/** Waits until `fd` is writable; false on timeout. */
static bool WaitWritable(Napi::Env env, int fd) {
  pollfd p{fd, POLLOUT, 0};
  int rc;
  do {
    rc = poll(&p, 1, kSendWaitMs);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) ThrowErrno(env, "poll", errno);
  return rc > 0;
}

/**
 * sendmsg of [data, data+len) with `nfds` fds on the first byte. Partial writes
 * are continued without the fds (the kernel attached them to the first chunk).
 * EAGAIN waits up to kSendWaitMs for room: when nothing was sent yet it throws
 * EAGAIN (safe to retry); once part is sent it throws ETIMEDOUT (stream broken).
 */
static void SendAll(Napi::Env env, int fd, uint8_t* data, size_t len, int* fdv, size_t nfds) {
  FdControl control;
  size_t sent = 0;
  while (sent < len) {
    iovec iov{data + sent, len - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (sent == 0 && nfds > 0) {
      memset(control.buf, 0, sizeof control.buf);
      msg.msg_control = control.buf;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
      // Invariant: controllen covers CMSG_SPACE(nfds ints), within control.buf.
      memcpy(CMSG_DATA(c), fdv, sizeof(int) * nfds);
    }
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) ThrowErrno(env, "sendmsg", errno);
    if (!WaitWritable(env, fd)) ThrowErrno(env, "sendmsg", sent == 0 ? EAGAIN : ETIMEDOUT);
  }
}

static Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  Napi::Uint8Array buf = ArgUint8Array(info, 1, "buf");
  int fdv[kMaxFds];
  size_t nfds = ReadFds(info, 2, fdv);
  if (buf.ByteLength() == 0) ThrowRangeError(env, "buf must not be empty");
  SendAll(env, fd, buf.Data(), buf.ByteLength(), fdv, nfds);
  return env.Undefined();
}

/**
 * A datagram socket address: a filesystem path, or with a leading '@' a name in
 * the abstract namespace (systemd's NOTIFY_SOCKET may be either). `len` gets
 * the address length to pass: abstract names are not NUL-terminated.
 */
static sockaddr_un DatagramAddress(Napi::Env env, const std::string& path, socklen_t& len) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path == "@") {
    ThrowRangeError(env, "path must name a socket ('/path' or '@abstract')");
  }
  if (path.size() >= sizeof addr.sun_path) {
    ThrowRangeError(env, "path must be 1 to " + std::to_string(sizeof addr.sun_path - 1) + " bytes");
  }
  memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() +
                               (path[0] == '@' ? 0 : 1));
  return addr;
}

static int DatagramSocket(Napi::Env env) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket", errno);
  return fd;
}

/** One datagram to `path` from a fresh unbound socket (sd_notify's shape): socket, sendto, close. */
static Napi::Value UnixDatagramSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  socklen_t len;
  sockaddr_un addr = DatagramAddress(env, ArgString(info, 0, "path"), len);
  Napi::Uint8Array buf = ArgUint8Array(info, 1, "buf");
  int fd = DatagramSocket(env);
  ssize_t n;
  do {
    // Invariant: buf's bytes stay alive for this synchronous call.
    n = sendto(fd, buf.Data(), buf.ByteLength(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
               len);
  } while (n < 0 && errno == EINTR);
  if (n < 0) CloseAndThrow(env, fd, "sendto");
  close(fd);
  return env.Undefined();
}

/** A datagram socket bound to `path` ('@name': abstract); read it with recvMsg. */
static Napi::Value UnixDatagramBind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  socklen_t len;
  sockaddr_un addr = DatagramAddress(env, ArgString(info, 0, "path"), len);
  int fd = DatagramSocket(env);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) < 0) CloseAndThrow(env, fd, "bind");
  return Napi::Number::New(env, fd);
}

static int SocketOption(Napi::Env env, int fd, int option) {
  int value = 0;
  socklen_t len = sizeof value;
  if (getsockopt(fd, SOL_SOCKET, option, &value, &len) < 0) ThrowErrno(env, "getsockopt", errno);
  return value;
}

/**
 * What an inherited socket is: address family, type, whether it listens, and
 * the path it is bound to ('@name' for an abstract one, '' when unnamed).
 * ENOTSOCK / EBADF when `fd` is not an open socket.
 */
static Napi::Value SocketInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  Napi::Object out = Napi::Object::New(env);
  out.Set("domain", SocketOption(env, fd, SO_DOMAIN));
  out.Set("type", SocketOption(env, fd, SO_TYPE));
  out.Set("listening", SocketOption(env, fd, SO_ACCEPTCONN) != 0);
  sockaddr_un addr{};
  socklen_t len = sizeof addr;
  std::string path;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 && addr.sun_family == AF_UNIX &&
      len > offsetof(sockaddr_un, sun_path)) {
    size_t n = len - offsetof(sockaddr_un, sun_path);
    // Invariant: the kernel wrote len <= sizeof addr bytes.
    if (addr.sun_path[0] == '\0') {
      path = "@" + std::string(addr.sun_path + 1, n - 1);
    } else {
      path = std::string(addr.sun_path, strnlen(addr.sun_path, n));
    }
  }
  out.Set("path", path);
  return out;
}

/** Sets (or clears) O_NONBLOCK and FD_CLOEXEC on an inherited fd. */
static Napi::Value SetFdFlags(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt32(info, 0, "fd");
  bool nonBlocking = info[1].ToBoolean();
  bool closeOnExec = info[2].ToBoolean();
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) ThrowErrno(env, "fcntl", errno);
  fl = nonBlocking ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  if (fcntl(fd, F_SETFL, fl) < 0) ThrowErrno(env, "fcntl", errno);
  int fdfl = fcntl(fd, F_GETFD);
  if (fdfl < 0) ThrowErrno(env, "fcntl", errno);
  fdfl = closeOnExec ? (fdfl | FD_CLOEXEC) : (fdfl & ~FD_CLOEXEC);
  if (fcntl(fd, F_SETFD, fdfl) < 0) ThrowErrno(env, "fcntl", errno);
  return env.Undefined();
}

static Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgInt32(info, 0, "fd");
  // Linux releases the fd even when close reports EINTR, so never retry it.
  if (close(fd) < 0 && errno != EINTR) ThrowErrno(info.Env(), "close", errno);
  return info.Env().Undefined();
}

void InitSockets(Napi::Env env, Napi::Object exports) {
  Export(env, exports, "unixListen", UnixListen);
  Export(env, exports, "unixConnect", UnixConnect);
  Export(env, exports, "accept", Accept);
  Export(env, exports, "recvMsg", RecvMsg);
  Export(env, exports, "sendMsg", SendMsg);
  Export(env, exports, "close", Close);
  Export(env, exports, "unixDatagramSend", UnixDatagramSend);
  Export(env, exports, "unixDatagramBind", UnixDatagramBind);
  Export(env, exports, "socketInfo", SocketInfo);
  Export(env, exports, "setFdFlags", SetFdFlags);
}

}  // namespace vhost_rt
