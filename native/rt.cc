// Real-time knobs of one thread: scheduling policy and priority, CPU affinity,
// nice value, memory locking. A tid of 0 means the calling thread, as the
// kernel's own calls take it.
#include <linux/ioprio.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "args.h"
#include "errors.h"
#include "modules.h"
#include "v8_bridge.h"

namespace vhost_rt {

#ifndef SCHED_DEADLINE
#define SCHED_DEADLINE 6
#endif

// struct sched_attr of sched_setattr(2) (SCHED_ATTR_SIZE_VER0 layout, the
// kernel's ABI): <linux/sched/types.h> clashes with glibc's <sched.h>.
struct sched_attr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime;
  uint64_t sched_deadline;
  uint64_t sched_period;
};

static Napi::Value Gettid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(gettid()));
}

static Napi::Value SchedSetScheduler(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = static_cast<pid_t>(ArgInteger(info, 0, "tid", 0, INT32_MAX));
  int policy = ArgInt32(info, 1, "policy");
  sched_param param{};
  param.sched_priority = ArgInt32(info, 2, "priority");
  // The raw syscall acts on exactly one thread (glibc's wrapper does the same
  // on Linux, but says "process").
  if (syscall(SYS_sched_setscheduler, tid, policy, &param) < 0) {
    ThrowErrno(env, "sched_setscheduler", errno);
  }
  return env.Undefined();
}

static Napi::Value SchedGetScheduler(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = static_cast<pid_t>(ArgInteger(info, 0, "tid", 0, INT32_MAX));
  int policy = static_cast<int>(syscall(SYS_sched_getscheduler, tid));
  if (policy < 0) ThrowErrno(env, "sched_getscheduler", errno);
  sched_param param{};
  if (syscall(SYS_sched_getparam, tid, &param) < 0) ThrowErrno(env, "sched_getparam", errno);
  Napi::Object result = Napi::Object::New(env);
  // SCHED_RESET_ON_FORK is a flag, not a policy.
  result.Set("policy", Napi::Number::New(env, policy & ~SCHED_RESET_ON_FORK));
  result.Set("priority", Napi::Number::New(env, param.sched_priority));
  return result;
}

static Napi::Value SchedGetPriorityMax(const Napi::CallbackInfo& info) {
  int max = sched_get_priority_max(ArgInt32(info, 0, "policy"));
  if (max < 0) ThrowErrno(info.Env(), "sched_get_priority_max", errno);
  return Napi::Number::New(info.Env(), max);
}

static Napi::Value SchedSetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = static_cast<pid_t>(ArgInteger(info, 0, "tid", 0, INT32_MAX));
  Napi::Array cpus = ArgArray(info, 1, "cpus");
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < cpus.Length(); i++) {
    CPU_SET(ElementInteger(env, cpus, i, "cpus", 0, CPU_SETSIZE - 1), &set);
  }
  if (sched_setaffinity(tid, sizeof set, &set) < 0) ThrowErrno(env, "sched_setaffinity", errno);
  return env.Undefined();
}

static Napi::Value SchedGetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = static_cast<pid_t>(ArgInteger(info, 0, "tid", 0, INT32_MAX));
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(tid, sizeof set, &set) < 0) ThrowErrno(env, "sched_getaffinity", errno);
  Napi::Array cpus = Napi::Array::New(env);
  uint32_t n = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (CPU_ISSET(cpu, &set)) cpus.Set(n++, Napi::Number::New(env, cpu));
  }
  return cpus;
}

static Napi::Value SetNice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto tid = static_cast<id_t>(ArgInteger(info, 0, "tid", 0, INT32_MAX));
  int nice = static_cast<int>(ArgInteger(info, 1, "nice", -20, 19));
  // On Linux PRIO_PROCESS with a tid sets that one thread's nice value.
  if (setpriority(PRIO_PROCESS, tid, nice) < 0) ThrowErrno(env, "setpriority", errno);
  return env.Undefined();
}

static Napi::Value Mlockall(const Napi::CallbackInfo& info) {
  if (mlockall(ArgInt32(info, 0, "flags")) < 0) ThrowErrno(info.Env(), "mlockall", errno);
  return info.Env().Undefined();
}

// V8 aborts when it releases the memory of a thread it is shutting down while
// that memory is locked (madvise(MADV_DONTNEED) fails with EINVAL), so every
// thread that locked memory unlocks it before it ends.
static Napi::Value Munlockall(const Napi::CallbackInfo& info) {
  if (munlockall() < 0) ThrowErrno(info.Env(), "munlockall", errno);
  return info.Env().Undefined();
}

// Locks the pages of one SharedArrayBuffer (guest RAM) into memory. The JS
// heap itself is never locked: V8 returns freed heap pages with
// madvise(MADV_DONTNEED), which fails on locked pages, and V8 aborts on that.
// Invariant: the buffer's backing store is alive for the whole call (the JS
// value holds it); the lock ends by itself when the mapping is unmapped.
static Napi::Value MlockBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  v8::Local<v8::Value> v = ToV8(info[0]);
  if (!v->IsSharedArrayBuffer()) ThrowTypeError(env, "buffer must be a SharedArrayBuffer");
  std::shared_ptr<v8::BackingStore> store = v.As<v8::SharedArrayBuffer>()->GetBackingStore();
  if (store->ByteLength() > 0 && mlock(store->Data(), store->ByteLength()) < 0) {
    ThrowErrno(env, "mlock", errno);
  }
  return env.Undefined();
}

// SCHED_DEADLINE through sched_setattr(2): runtime, deadline and period in
// nanoseconds. The kernel checks them (runtime <= deadline <= period, at least
// 1024 ns, admission control against sched_rt_runtime_us) and refuses with
// EINVAL / EBUSY / EPERM; policy and validation live in src/rt/deadline.ts.
static Napi::Value SchedSetAttrDeadline(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = static_cast<pid_t>(ArgInteger(info, 0, "tid", 0, INT32_MAX));
  struct sched_attr attr{};
  attr.size = sizeof attr;
  attr.sched_policy = SCHED_DEADLINE;
  // SCHED_FLAG_RESET_ON_FORK: a deadline task may not fork otherwise (EAGAIN),
  // and threads it starts (a thread pool) should not inherit its reservation.
  attr.sched_flags = 0x01;
  attr.sched_runtime = static_cast<uint64_t>(ArgInteger(info, 1, "runtimeNs", 0, kMaxSafeInteger));
  attr.sched_deadline =
      static_cast<uint64_t>(ArgInteger(info, 2, "deadlineNs", 0, kMaxSafeInteger));
  attr.sched_period = static_cast<uint64_t>(ArgInteger(info, 3, "periodNs", 0, kMaxSafeInteger));
  if (syscall(SYS_sched_setattr, tid, &attr, 0U) < 0) ThrowErrno(env, "sched_setattr", errno);
  return env.Undefined();
}

static Napi::Value SchedGetAttr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = static_cast<pid_t>(ArgInteger(info, 0, "tid", 0, INT32_MAX));
  struct sched_attr attr{};
  if (syscall(SYS_sched_getattr, tid, &attr, sizeof attr, 0U) < 0) {
    ThrowErrno(env, "sched_getattr", errno);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("policy", Napi::Number::New(env, attr.sched_policy));
  result.Set("runtimeNs", Napi::Number::New(env, static_cast<double>(attr.sched_runtime)));
  result.Set("deadlineNs", Napi::Number::New(env, static_cast<double>(attr.sched_deadline)));
  result.Set("periodNs", Napi::Number::New(env, static_cast<double>(attr.sched_period)));
  return result;
}

// ioprio_set(IOPRIO_WHO_PROCESS, tid, value): on Linux "process" is one task,
// so with a tid (0: the caller) this sets one thread's I/O priority.
static Napi::Value IoprioSet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto tid = static_cast<int>(ArgInteger(info, 0, "tid", 0, INT32_MAX));
  auto value = static_cast<int>(ArgInteger(info, 1, "ioprio", 0, 0xffff));
  if (syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, value) < 0) {
    ThrowErrno(env, "ioprio_set", errno);
  }
  return env.Undefined();
}

static Napi::Value IoprioGet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto tid = static_cast<int>(ArgInteger(info, 0, "tid", 0, INT32_MAX));
  long value = syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid);
  if (value < 0) ThrowErrno(env, "ioprio_get", errno);
  return Napi::Number::New(env, static_cast<double>(value));
}

void InitRt(Napi::Env env, Napi::Object exports) {
  Export(env, exports, "schedSetAttrDeadline", SchedSetAttrDeadline);
  Export(env, exports, "schedGetAttr", SchedGetAttr);
  Export(env, exports, "ioprioSet", IoprioSet);
  Export(env, exports, "ioprioGet", IoprioGet);
  Export(env, exports, "gettid", Gettid);
  Export(env, exports, "schedSetScheduler", SchedSetScheduler);
  Export(env, exports, "schedGetScheduler", SchedGetScheduler);
  Export(env, exports, "schedGetPriorityMax", SchedGetPriorityMax);
  Export(env, exports, "schedSetAffinity", SchedSetAffinity);
  Export(env, exports, "schedGetAffinity", SchedGetAffinity);
  Export(env, exports, "setNice", SetNice);
  Export(env, exports, "mlockall", Mlockall);
  Export(env, exports, "mlockBuffer", MlockBuffer);
  Export(env, exports, "munlockall", Munlockall);
}

}  // namespace vhost_rt
