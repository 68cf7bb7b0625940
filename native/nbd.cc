// The nbd engine's native half over libnbd's asynchronous API
// (nbd_aio_connect_uri, nbd_aio_pread/pwrite/flush/trim/zero with completion
// callbacks, nbd_aio_get_fd / get_direction / notify_read / notify_write).
// Policy (reconnect, back-off, timeouts, which features the guest sees) lives
// in src/io/nbd.ts.
//
// Where bytes are copied: nowhere in this process. libnbd sends a write's
// payload with send() straight from the caller's buffer (guest RAM) and
// receives a read's data (simple replies and structured OFFSET_DATA chunks)
// with recv() straight into it; the kernel's socket buffers are the only
// copy (over nbds:// GnuTLS encrypts from and decrypts into them: one pass
// over the bytes, still no buffer of ours in between). So guest buffers must stay valid until the command completes, which
// they do: the device keeps its memory table referenced while anything is in
// flight, and a held command keeps its pointers until it is issued again.
//
// Segments: libnbd takes one buffer per command (no iovecs). A request over
// several guest segments becomes one NBD command per segment, at consecutive
// offsets, all in flight at once, the request finishing when the last one
// does (first error wins). A bounce buffer would keep one command per request
// but copy every byte through it (and need a buffer per in-flight request);
// a command costs a 28-byte header and a reply on a socket libnbd already
// batches, while the copy costs memory bandwidth on every byte. Guests mostly
// send one segment per request anyway (contiguous pages merge).
#include "nbd.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "args.h"
#include "buffers.h"
#include "errors.h"

namespace vhost_rt {

// Field offsets inside one ops entry (NBD_OP in src/native.ts).
enum OpField {
  kCmd = 0,
  kFlags = 1,
  kOffset = 2,
  kLength = 3,
  kFirstIov = 4,
  kIovCount = 5,
  kUserData = 6,
};
constexpr size_t kOpStride = 7;
// Commands (NBD_CMD in src/native.ts).
enum Cmd : uint32_t { kRead = 0, kWrite = 1, kFlush = 2, kTrim = 3, kZero = 4 };
// Status bits (NBD_STATUS in src/native.ts): libnbd's direction bits, then ours.
constexpr uint32_t kCompletions = 4;
constexpr uint32_t kReady = 8;
constexpr uint32_t kDead = 16;
constexpr uint32_t kHeld = 32;
static_assert(LIBNBD_AIO_DIRECTION_READ == 1 && LIBNBD_AIO_DIRECTION_WRITE == 2, "NBD_STATUS");

constexpr int64_t kMaxDepth = 65536;
constexpr int64_t kMaxIovs = 1 << 20;
/** The NBD protocol's recommended upper bound on one read or write. */
constexpr uint64_t kDefaultMaxChunk = 32u << 20;
// Further reads one pump makes while the socket stays readable (see Pump): 64 of ~128 KiB.
constexpr int kPumpReadsMax = 64;
// Pump flag (NBD_PUMP.IF_READABLE in src/native.ts): notify a read only if the socket is
// readable now (see Pump).
constexpr int kIfReadable = 8;
constexpr size_t kSubBlock = 256;

/** errnos that mean the connection (not the request) failed: hold and resubmit. */
static bool IsConnectionLoss(int err) {
  return err == ENOTCONN || err == ESHUTDOWN || err == ECONNRESET || err == EPIPE ||
         err == ECONNABORTED;
}

Napi::Function NbdClient::Define(Napi::Env env) {
  return DefineClass(env, "NbdClient",
                     {
                         InstanceMethod<&NbdClient::Connect>("connect"),
                         InstanceMethod<&NbdClient::BeginConnect>("beginConnect"),
                         InstanceMethod<&NbdClient::Info>("info"),
                         InstanceAccessor<&NbdClient::GetFd>("fd"),
                         InstanceAccessor<&NbdClient::GetHeld>("held"),
                         InstanceAccessor<&NbdClient::GetLastError>("lastError"),
                         InstanceMethod<&NbdClient::Submit>("submit"),
                         InstanceMethod<&NbdClient::Pump>("pump"),
                         InstanceMethod<&NbdClient::GetEvents>("getEvents"),
                         InstanceMethod<&NbdClient::ResubmitHeld>("resubmitHeld"),
                         InstanceMethod<&NbdClient::FailHeld>("failHeld"),
                         InstanceMethod<&NbdClient::Close>("close"),
                     });
}

NbdClient::NbdClient(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NbdClient>(info) {
  depth_ = static_cast<uint32_t>(ArgInteger(info, 0, "depth", 1, kMaxDepth));
  maxIovs_ = static_cast<uint32_t>(ArgInteger(info, 1, "maxIovs", 1, kMaxIovs));
  maxChunk_ = kDefaultMaxChunk;
  ops_.resize(depth_);
  freeOps_.reserve(depth_);
  for (uint32_t i = depth_; i > 0; i--) freeOps_.push_back(i - 1);
  iovecs_.resize(maxIovs_);
  iovBase_.resize(depth_);
  done_.resize(2 * static_cast<size_t>(depth_));
  held_.reserve(depth_);
  resubmit_.reserve(depth_);
}

NbdClient::~NbdClient() { CloseHandle(); }

void NbdClient::NoteError() {
  const char* e = nbd_get_error();
  lastError_ = e != nullptr ? e : "unknown libnbd error";
  lastErrno_ = nbd_get_errno();
  if (lastErrno_ == 0) lastErrno_ = EIO;
}

void NbdClient::CloseHandle() {
  if (h_ == nullptr) return;
  // Only a dead handle or one with nothing in flight is closed (src/io/nbd.ts):
  // a dead one has already called every completion (with ENOTCONN), so
  // nbd_close frees no command whose buffer anyone still waits for.
  if (connected_ && nbd_aio_is_ready(h_)) nbd_aio_disconnect(h_, 0);
  nbd_close(h_);
  h_ = nullptr;
  connected_ = false;
}

bool NbdClient::Start(const std::string& uri) {
  CloseHandle();
  h_ = nbd_create();
  if (h_ == nullptr) {
    NoteError();
    return false;
  }
  nbd_set_handle_name(h_, "vhost-rt");
  // Structured replies are requested by default (nbd_set_request_structured_replies).
  if (nbd_aio_connect_uri(h_, uri.c_str()) == -1) {
    NoteError();
    CloseHandle();
    return false;
  }
  return true;
}

uint32_t NbdClient::Status() {
  uint32_t s = (doneCount_ > 0 ? kCompletions : 0) | (held_.empty() ? 0 : kHeld);
  if (h_ == nullptr) return s | kDead;
  if (nbd_aio_is_dead(h_) || nbd_aio_is_closed(h_)) {
    connected_ = false;
    return s | kDead;
  }
  if (nbd_aio_is_ready(h_) || nbd_aio_is_processing(h_)) {
    if (!connected_) {
      connected_ = true;
      // A failed attempt's message must not be blamed for this connection's end.
      lastError_.clear();
      int64_t max = nbd_get_block_size(h_, LIBNBD_SIZE_MAXIMUM);
      maxChunk_ = max > 0 ? std::min(static_cast<uint64_t>(max), kDefaultMaxChunk)
                          : kDefaultMaxChunk;
    }
    s |= kReady;
  }
  return s | (nbd_aio_get_direction(h_) & LIBNBD_AIO_DIRECTION_BOTH);
}

Napi::Value NbdClient::Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string uri = ArgString(info, 0, "uri");
  int64_t timeoutMs = ArgInteger(info, 1, "timeoutMs", 1, INT32_MAX);
  // Blocking, but bounded by timeoutMs: called once while the device opens,
  // before it serves anything. Reconnects use beginConnect + the loop's watcher.
  if (!Start(uri)) {
    throw ErrnoError(env, "nbd_connect_uri", lastErrno_, lastError_.c_str());
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  for (;;) {
    uint32_t s = Status();
    if (s & kReady) return env.Undefined();
    if (s & kDead) break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) {
      CloseHandle();
      std::string detail = "no NBD handshake within " + std::to_string(timeoutMs) + " ms";
      throw ErrnoError(env, "nbd_connect_uri", ETIMEDOUT, detail.c_str());
    }
    struct pollfd p = {nbd_aio_get_fd(h_), 0, 0};
    if (s & LIBNBD_AIO_DIRECTION_READ) p.events |= POLLIN;
    if (s & LIBNBD_AIO_DIRECTION_WRITE) p.events |= POLLOUT;
    int rc = poll(&p, 1, static_cast<int>(left));
    if (rc < 0 && errno != EINTR) ThrowErrno(env, "poll", errno);
    int r = 0;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) r = nbd_aio_notify_read(h_);
    if (r != -1 && (p.revents & POLLOUT)) r = nbd_aio_notify_write(h_);
    if (r == -1) NoteError();
  }
  CloseHandle();
  throw ErrnoError(env, "nbd_connect_uri", lastErrno_, lastError_.c_str());
}

Napi::Value NbdClient::BeginConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!Start(ArgString(info, 0, "uri"))) return Napi::Number::New(env, Status());
  return Napi::Number::New(env, Status());
}

Napi::Value NbdClient::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (h_ == nullptr || !connected_) ThrowErrno(env, "nbd_get_size", ENOTCONN);
  Napi::Object o = Napi::Object::New(env);
  auto flag = [&](const char* name, int v) { o.Set(name, Napi::Boolean::New(env, v > 0)); };
  o.Set("size", Napi::Number::New(env, static_cast<double>(nbd_get_size(h_))));
  flag("readOnly", nbd_is_read_only(h_));
  flag("canFlush", nbd_can_flush(h_));
  flag("canFua", nbd_can_fua(h_));
  flag("canTrim", nbd_can_trim(h_));
  flag("canZero", nbd_can_zero(h_));
  flag("canMultiConn", nbd_can_multi_conn(h_));
  flag("structuredReplies", nbd_get_structured_replies_negotiated(h_));
  auto size = [&](const char* name, int which) {
    o.Set(name, Napi::Number::New(env, static_cast<double>(nbd_get_block_size(h_, which))));
  };
  size("minBlock", LIBNBD_SIZE_MINIMUM);
  size("preferredBlock", LIBNBD_SIZE_PREFERRED);
  size("maxBlock", LIBNBD_SIZE_MAXIMUM);
  const char* proto = nbd_get_protocol(h_);
  o.Set("protocol", Napi::String::New(env, proto != nullptr ? proto : ""));
  return o;
}

Napi::Value NbdClient::GetFd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), h_ == nullptr ? -1 : nbd_aio_get_fd(h_));
}

Napi::Value NbdClient::GetHeld(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(held_.size()));
}

Napi::Value NbdClient::GetLastError(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), lastError_);
}

static std::string OpName(size_t i) { return "ops[" + std::to_string(i) + "]"; }

void NbdClient::CheckOp(Napi::Env env, const BufferTable& table, const double* op, size_t i,
                        const Napi::Float64Array& iovs, size_t& usedIovs) {
  if (!IsIntegerIn(op[kCmd], kRead, kZero)) {
    ThrowRangeError(env, OpName(i) + ".cmd " + Num(op[kCmd]) + " is not a known NBD_CMD");
  }
  double known = LIBNBD_CMD_FLAG_FUA | LIBNBD_CMD_FLAG_NO_HOLE;
  if (!IsIntegerIn(op[kFlags], 0, known) ||
      (static_cast<uint32_t>(op[kFlags]) & ~static_cast<uint32_t>(known)) != 0) {
    ThrowRangeError(env, OpName(i) + ".flags " + Num(op[kFlags]) + " has unknown bits");
  }
  if (!IsIntegerIn(op[kOffset], 0, kMaxSafeInteger)) {
    ThrowRangeError(env, IntegerRangeMessage(OpName(i) + ".offset", 0, kMaxSafeInteger));
  }
  if (!IsIntegerIn(op[kUserData], 0, kMaxSafeInteger)) {
    ThrowRangeError(env, IntegerRangeMessage(OpName(i) + ".userData", 0, kMaxSafeInteger));
  }
  iovBase_[i] = usedIovs;
  if (op[kCmd] == kTrim || op[kCmd] == kZero) {
    if (!IsIntegerIn(op[kLength], 1, UINT32_MAX)) {
      ThrowRangeError(env, IntegerRangeMessage(OpName(i) + ".length", 1, UINT32_MAX));
    }
    return;
  }
  if (op[kCmd] == kFlush) return;
  double count = op[kIovCount];
  if (!IsIntegerIn(count, 1, static_cast<double>(maxIovs_ - usedIovs))) {
    ThrowRangeError(env, OpName(i) + ": iovCount " + Num(count) +
                             " is 0 or exceeds the iovecs left of maxIovs (" +
                             std::to_string(maxIovs_) + ") in this submit");
  }
  table.BuildIovecs(env, iovs.Data(), iovs.ElementLength(), op[kFirstIov], count,
                    iovecs_.data() + usedIovs, static_cast<long>(i));
  usedIovs += static_cast<size_t>(count);
}

NbdClient::Sub* NbdClient::TakeSub() {
  if (freeSubs_.empty()) {
    // Grows to the high-water mark of commands in flight, then never again.
    subBlocks_.push_back(std::make_unique<Sub[]>(kSubBlock));
    Sub* block = subBlocks_.back().get();
    for (size_t k = kSubBlock; k > 0; k--) freeSubs_.push_back(block + k - 1);
  }
  Sub* s = freeSubs_.back();
  freeSubs_.pop_back();
  return s;
}

void NbdClient::AddSub(uint32_t op, uint32_t cmd, uint32_t flags, uint64_t offset,
                       uint64_t length, void* buf) {
  Sub* s = TakeSub();
  *s = Sub{this, op, cmd, flags, offset, length, buf};
  ops_[op].pending++;
  Issue(s);
}

void NbdClient::StartOp(const double* op, const struct iovec* segs) {
  uint32_t slot = freeOps_.back();
  freeOps_.pop_back();
  Op& o = ops_[slot];
  auto cmd = static_cast<uint32_t>(op[kCmd]);
  auto flags = static_cast<uint32_t>(op[kFlags]);
  auto offset = static_cast<uint64_t>(op[kOffset]);
  o = Op{op[kUserData], 0, 0, 0};
  // One extra pending count while the op's commands are being issued: a
  // command completing (or failing) synchronously inside Issue must not
  // finish the op before its last command exists.
  o.pending = 1;
  if (cmd == kRead || cmd == kWrite) {
    auto count = static_cast<size_t>(op[kIovCount]);
    for (size_t k = 0; k < count; k++) {
      auto* base = static_cast<uint8_t*>(segs[k].iov_base);
      for (size_t done = 0; done < segs[k].iov_len;) {
        uint64_t n = std::min<uint64_t>(segs[k].iov_len - done, maxChunk_);
        AddSub(slot, cmd, flags, offset, n, base + done);
        offset += n;
        done += n;
        o.bytes += static_cast<double>(n);
      }
    }
  } else {
    AddSub(slot, cmd, flags, offset, static_cast<uint64_t>(op[kLength]), nullptr);
  }
  // Drops the extra count; the op is finished here when every command already was.
  if (--o.pending > 0) return;
  PushCompletion(o.userData, o.error != 0 ? -o.error : o.bytes);
  freeOps_.push_back(slot);
}

void NbdClient::Issue(Sub* s) {
  if (!connected_ || h_ == nullptr) {
    held_.push_back(s);
    return;
  }
  nbd_completion_callback cb = {OnComplete, s, nullptr};
  int64_t cookie;
  switch (s->cmd) {
    case kRead:
      cookie = nbd_aio_pread(h_, s->buf, s->length, s->offset, cb, 0);
      break;
    case kWrite:
      cookie = nbd_aio_pwrite(h_, s->buf, s->length, s->offset, cb, s->flags);
      break;
    case kFlush:
      cookie = nbd_aio_flush(h_, cb, 0);
      break;
    case kTrim:
      cookie = nbd_aio_trim(h_, s->length, s->offset, cb, s->flags & LIBNBD_CMD_FLAG_FUA);
      break;
    default:
      cookie = nbd_aio_zero(h_, s->length, s->offset, cb, s->flags);
      break;
  }
  if (cookie != -1) return;
  // Not queued: libnbd calls no completion for it. A handle that died (or a
  // connection error) holds the command for the next connection; anything
  // else (ERANGE, EINVAL, ENOTSUP from libnbd's own checks) fails it.
  NoteError();
  if (nbd_aio_is_dead(h_) || nbd_aio_is_closed(h_) || IsConnectionLoss(lastErrno_)) {
    connected_ = false;
    held_.push_back(s);
    return;
  }
  SubDone(s, lastErrno_);
}

int NbdClient::OnComplete(void* userData, int* error) {
  auto* s = static_cast<Sub*>(userData);
  // Runs inside libnbd (nbd_aio_notify_*, or an issuing call): records only,
  // calls nothing of libnbd and no JavaScript.
  s->owner->SubDone(s, *error);
  return 1;  // retire the command: libnbd frees its own record now
}

void NbdClient::SubDone(Sub* s, int err) {
  if (err != 0 && IsConnectionLoss(err) && h_ != nullptr) {
    // The connection went away under this command (libnbd aborts every
    // in-flight command with ENOTCONN when its handle dies): keep it, with
    // its guest buffer, for the next connection.
    connected_ = false;
    held_.push_back(s);
    return;
  }
  Op& o = ops_[s->op];
  uint32_t slot = s->op;
  freeSubs_.push_back(s);
  if (err != 0 && o.error == 0) o.error = err;
  if (--o.pending > 0) return;
  PushCompletion(o.userData, o.error != 0 ? -o.error : o.bytes);
  freeOps_.push_back(slot);
}

void NbdClient::PushCompletion(double userData, double result) {
  // At most depth_ ops exist, each finishing once: the ring never overflows.
  size_t at = (doneHead_ + doneCount_) % depth_;
  done_[2 * at] = userData;
  done_[2 * at + 1] = result;
  doneCount_++;
}

Napi::Value NbdClient::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const BufferTable& table = BufferTable::From(env, info[0], "table");
  Napi::Float64Array ops = ArgFloat64Array(info, 1, "ops");
  auto count = static_cast<size_t>(ArgInteger(info, 2, "count", 0, depth_));
  Napi::Float64Array iovs = ArgFloat64Array(info, 3, "iovs");
  if (ops.ElementLength() < count * kOpStride) {
    ThrowRangeError(env, "ops holds fewer than count (" + std::to_string(count) + ") entries");
  }
  if (count > freeOps_.size()) {
    ThrowRangeError(env, "count " + std::to_string(count) + " exceeds the free op slots (" +
                             std::to_string(freeOps_.size()) + ")");
  }
  // Every entry is checked (and its iovecs built) before anything is issued:
  // a bad entry means no I/O. ops is read once per entry into `op`, as the
  // checked values must be the issued ones.
  size_t usedIovs = 0;
  double op[kOpStride];
  for (size_t i = 0; i < count; i++) {
    memcpy(op, ops.Data() + i * kOpStride, sizeof op);
    CheckOp(env, table, op, i, iovs, usedIovs);
  }
  for (size_t i = 0; i < count; i++) {
    memcpy(op, ops.Data() + i * kOpStride, sizeof op);
    StartOp(op, iovecs_.data() + iovBase_[i]);
  }
  return Napi::Number::New(env, Status());
}

// Whether the handle's socket has something to read now (data, EOF or an error).
static bool SocketReadable(nbd_handle* h) {
  pollfd p{nbd_aio_get_fd(h), POLLIN, 0};
  return p.fd >= 0 && poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

Napi::Value NbdClient::Pump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int events = static_cast<int>(ArgInteger(info, 0, "events", -4096, 15));
  if (h_ != nullptr) {
    // A watcher error (negative) or a hang-up is read: libnbd then sees the EOF or error.
    bool read = events < 0 || (events & (LIBNBD_AIO_DIRECTION_READ | 4)) != 0;
    // A read notification must mean "readable": libnbd takes it as a reply arriving. Given
    // while a request is half sent (the server reads slowly), it pauses the send to read a
    // reply; with no reply coming (none outstanding but the half-sent one) it then waits for
    // one for ever, direction READ only, and the server waits for the rest of the request.
    // A watcher's READ comes from epoll and is fresh; a busy poll's is a guess, checked here.
    if (read && events > 0 && (events & kIfReadable) != 0) read = SocketReadable(h_);
    int r = 0;
    if (read) {
      r = nbd_aio_notify_read(h_);
      // libnbd returns after one recv even mid-payload (a 1 MiB reply arrives in ~128 KiB
      // pieces, the server's socket buffer): each piece was an epoll wake-up, a JS callback
      // and a pump (bench/results/nbd.md's profile). While libnbd still wants to read and the
      // socket already has more, read on here; bounded, so one busy reply cannot hold the
      // worker's loop for long.
      // Only while replies are outstanding: at depth 1 the reply just read was the last one,
      // and a poll that finds nothing would be one more system call per request.
      for (int more = 0; r != -1 && more < kPumpReadsMax; more++) {
        if (nbd_aio_in_flight(h_) <= 0) break;
        if (!(nbd_aio_get_direction(h_) & LIBNBD_AIO_DIRECTION_READ)) break;
        if (!SocketReadable(h_)) break;
        r = nbd_aio_notify_read(h_);
      }
    }
    if (r != -1 && events > 0 && (events & LIBNBD_AIO_DIRECTION_WRITE)) {
      r = nbd_aio_notify_write(h_);
    }
    if (r == -1) NoteError();
  }
  return Napi::Number::New(env, Status());
}

Napi::Value NbdClient::GetEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Float64Array out = ArgFloat64Array(info, 0, "out");
  auto max = static_cast<size_t>(ArgInteger(info, 1, "max", 0, INT32_MAX));
  size_t n = std::min({max, doneCount_, out.ElementLength() / 2});
  double* pairs = out.Data();
  for (size_t k = 0; k < n; k++) {
    pairs[2 * k] = done_[2 * doneHead_];
    pairs[2 * k + 1] = done_[2 * doneHead_ + 1];
    doneHead_ = (doneHead_ + 1) % depth_;
  }
  doneCount_ -= n;
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value NbdClient::ResubmitHeld(const Napi::CallbackInfo& info) {
  // Swap first: a command that fails again while being issued lands in held_ anew.
  resubmit_.swap(held_);
  for (Sub* s : resubmit_) Issue(s);
  resubmit_.clear();
  return Napi::Number::New(info.Env(), Status());
}

Napi::Value NbdClient::FailHeld(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int err = static_cast<int>(ArgInteger(info, 0, "errno", 1, 4095));
  resubmit_.swap(held_);
  // SubDone with an errno that is not a connection loss finishes, never re-holds.
  for (Sub* s : resubmit_) SubDone(s, err);
  resubmit_.clear();
  return Napi::Number::New(env, Status());
}

Napi::Value NbdClient::Close(const Napi::CallbackInfo& info) {
  CloseHandle();
  return info.Env().Undefined();
}

}  // namespace vhost_rt
