// NetBurst: the switch's per-frame loop over one batch, in native code
// (issue 13). Why: at 64-byte frames the JavaScript path spent ~70 % of a
// port worker in compiled JS per frame — walking and translating
// descriptors, reading the header, routing, reserving ring records and
// recording copies — and missed its targets by a hair run after run. Here
// one call moves a whole batch of bare frames: split-ring chains out of
// guest memory into the packet rings (tx), or from the rings into the
// driver's receive buffers (rx).
//
// What stays in TypeScript (src/net/switch-port.ts, src/devices/net/burst.ts):
// every decision with policy in it and every error. This code handles only
// frames it fully understands and STOPS (returns kDefer) at the first one it
// does not — an indirect or readable/writable-mixed chain, a descriptor
// outside guest memory or across regions, a head out of range, a frame with
// a virtio_net_hdr that asks for work, a wrong length, a full destination
// ring, a frame the receive filter would look up in its tables — without
// having consumed it; the TypeScript path then pops that chain and applies
// its full checks, counters and warnings. A guest therefore gets exactly the
// verdicts it got before; this loop is only ever the faster way to accept.
// Learning stays in TypeScript too: a frame whose source address was not
// learnt yet in this batch stops the loop with kLearn (tx: before it is
// routed; rx: after it was delivered — where the TypeScript path learns),
// TypeScript learns it (MacTable.learnKey) and calls again. Lookups read the MacTable's own typed
// arrays with the same hash and ageing rule.
//
// Safety: every guest address is checked against the region table set by
// setGuest before use, every descriptor field is read once into a local
// (a guest rewriting it cannot make a checked value differ from a used
// one), chains are bounded by the queue size, and ring records by their
// capacity. Publication (used.idx, ring HEAD/TAIL, doorbells, interrupts)
// stays in TypeScript, after this call returned: the stores here are plain,
// ordered before those seq-cst stores.
#include <napi.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "modules.h"
#include "errors.h"
#include "views.h"

namespace vhost_rt {

namespace {

// Split ring layout (virtio 1.x §2.7), as in src/virtio/split-ring.ts.
constexpr uint16_t kDescNext = 1;
constexpr uint16_t kDescWrite = 2;
constexpr uint16_t kDescIndirect = 4;
constexpr size_t kDescSize = 16;
constexpr size_t kAvailRing = 4;
constexpr size_t kUsedRing = 4;
// virtio_net_hdr (VERSION_1): 12 bytes, num_buffers at 10.
constexpr uint32_t kNetHdr = 12;
constexpr uint32_t kNumBuffers = 10;
// Packet ring records (src/net/packet-ring.ts).
constexpr uint32_t kWrap = 0xffffffffu;
constexpr uint32_t kVnetHeaderFlag = 0x80000000u;
constexpr uint32_t kRecordHeader = 4;
// Most segments (descriptors) of one chain this loop takes; longer ones go the TypeScript way.
constexpr int kMaxSegments = 64;
// Most receive chains one frame may take here.
constexpr int kMaxRxChains = 64;
// Rolling prefetch distances, in chains (PrefetchAhead).
constexpr uint16_t kDescAhead = 16;
constexpr uint16_t kBufferAhead = 8;
// MacTable (src/net/mac-table.ts).
constexpr uint32_t kHashMultiplier = 0x9e3779b1u;
constexpr int kUnknownPort = -1;

// Statuses: the JS side names them in src/native.ts (BURST_STATUS).
constexpr int kDone = 0;
constexpr int kDefer = 1;
constexpr int kLearn = 2;
constexpr int kNoBuffers = 3;

inline uint32_t Align4(uint32_t n) { return (n + 3) & ~3u; }

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline void StoreU32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }

/** One guest memory region: guest-physical [start, end), host bytes at base + (gpa - bias). */
struct Region {
  double start;
  double end;
  double bias;
  HeldView view;
};

/** A descriptor's buffer, translated. */
struct Segment {
  uint8_t* at;
  uint32_t length;
};

/** One packet ring as this port sees it. */
struct Ring {
  HeldView view;
  int32_t* header = nullptr;
  uint8_t* data = nullptr;
  uint32_t capacity = 0;
  uint32_t mask = 0;
};

// Offsets in the control array of a tx or rx call (src/devices/net/burst.ts names them).
enum Ctl : int {
  kDescRegion = 0,
  kDescOffset,
  kAvailRegion,
  kAvailOffset,
  kUsedRegion,
  kUsedOffset,
  kQueueSize,
  kLastAvail,
  kAvailIdx,
  kUsedIdx,
  kMax,
  kMaxFrame,
  kMinFrame,
  kNow,
  kAgeingMs,
  kLearntValid,
  kLearntHigh,
  kLearntLow,
  // rx only: the incoming ring, and the receive filter.
  kInRing,
  kFilterAll,
  kPrimaryHigh,
  kPrimaryLow,
  kAllMulti,
  kMaxChains,
  // Results.
  kFrames,
  kBytes,
  kPopped,
  kUsed,
  kLearnHigh,
  kLearnLow,
  // Producer (per out ring: head, tailSeen, frames) or consumer (tail, headSeen) state.
  kRingState = 32,
};

}  // namespace

class NetBurst : public Napi::ObjectWrap<NetBurst> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NetBurst",
                       {InstanceMethod<&NetBurst::SetGuest>("setGuest"),
                        InstanceMethod<&NetBurst::SetSwitch>("setSwitch"),
                        InstanceMethod<&NetBurst::Tx>("tx"), InstanceMethod<&NetBurst::Rx>("rx")});
  }
  explicit NetBurst(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NetBurst>(info) {}

 private:
  // setGuest(views: Uint8Array[], starts, ends, biases: Float64Array): region i
  // spans guest addresses [starts[i], ends[i]); gpa lives at views[i][gpa - biases[i]].
  Napi::Value SetGuest(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array views = ArgArray(info, 0, "views");
    Napi::Float64Array starts = ArgFloat64Array(info, 1, "starts");
    Napi::Float64Array ends = ArgFloat64Array(info, 2, "ends");
    Napi::Float64Array biases = ArgFloat64Array(info, 3, "biases");
    uint32_t n = views.Length();
    if (starts.ElementLength() != n || ends.ElementLength() != n || biases.ElementLength() != n)
      ThrowRangeError(env, "starts, ends and biases must have one entry per view");
    std::vector<Region> regions;
    regions.reserve(n);
    for (uint32_t i = 0; i < n; i++) {
      HeldView view =
          HoldView(env, views.Get(i), napi_uint8_array, "Uint8Array", "views[" + std::to_string(i) + "]");
      double start = starts[i], end = ends[i], bias = biases[i];
      // The whole range must map inside the view: then a checked gpa never leaves it.
      if (!(start >= 0 && end > start && start - bias >= 0 &&
            end - bias <= static_cast<double>(view.length)))
        ThrowRangeError(env, "region " + std::to_string(i) + " does not fit its view");
      regions.push_back(Region{start, end, bias, std::move(view)});
    }
    regions_.swap(regions);
    lastRegion_ = 0;
    return env.Undefined();
  }

  // setSwitch(self, outRings: (Uint8Array|null)[], inRings: Uint8Array[], headSlot,
  //           tailSlot, headerBytes, keyHigh, keyLow, ports, seen, buckets)
  Napi::Value SetSwitch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    self_ = static_cast<int>(ArgInteger(info, 0, "self", 0, 65535));
    Napi::Array outs = ArgArray(info, 1, "outRings");
    Napi::Array ins = ArgArray(info, 2, "inRings");
    headSlot_ = static_cast<int>(ArgInteger(info, 3, "headSlot", 0, 1023));
    tailSlot_ = static_cast<int>(ArgInteger(info, 4, "tailSlot", 0, 1023));
    int64_t headerBytes = ArgInteger(info, 5, "headerBytes", 64, 4096);
    if (headerBytes <= 4 * std::max(headSlot_, tailSlot_))
      ThrowRangeError(env, "headerBytes must cover the HEAD and TAIL slots");
    out_.clear();
    in_.clear();
    for (uint32_t i = 0; i < outs.Length(); i++) {
      Napi::Value v = outs.Get(i);
      out_.push_back(v.IsNull() ? Ring{} : MakeRing(env, v, headerBytes, "outRings", i));
    }
    for (uint32_t i = 0; i < ins.Length(); i++)
      in_.push_back(MakeRing(env, ins.Get(i), headerBytes, "inRings", i));
    targets_.assign(out_.size(), 0);
    keyHigh_ = HoldView(env, info[6], napi_int32_array, "Int32Array", "keyHigh");
    keyLow_ = HoldView(env, info[7], napi_int32_array, "Int32Array", "keyLow");
    ports_ = HoldView(env, info[8], napi_int32_array, "Int32Array", "ports");
    seen_ = HoldView(env, info[9], napi_float64_array, "Float64Array", "seen");
    buckets_ = HoldView(env, info[10], napi_int32_array, "Int32Array", "buckets");
    size_t entries = keyHigh_.length / 4;
    size_t buckets = buckets_.length / 4;
    if (keyLow_.length / 4 != entries || ports_.length / 4 != entries ||
        seen_.length / 8 != entries || buckets == 0 || (buckets & (buckets - 1)) != 0)
      ThrowRangeError(env, "MAC table arrays are inconsistent");
    entries_ = static_cast<uint32_t>(entries);
    bucketMask_ = static_cast<uint32_t>(buckets - 1);
    return env.Undefined();
  }

  static Ring MakeRing(Napi::Env env, Napi::Value v, int64_t headerBytes, const char* what,
                       uint32_t i) {
    Ring r;
    r.view = HoldView(env, v, napi_uint8_array, "Uint8Array",
                      std::string(what) + "[" + std::to_string(i) + "]");
    if (r.view.length <= static_cast<size_t>(headerBytes))
      ThrowRangeError(env, std::string(what) + "[" + std::to_string(i) + "] is too small");
    r.header = reinterpret_cast<int32_t*>(r.view.base);
    r.data = r.view.base + headerBytes;
    r.capacity = static_cast<uint32_t>(r.view.length - headerBytes);
    if ((r.capacity & (r.capacity - 1)) != 0 || r.capacity < 4096)
      ThrowRangeError(env, std::string(what) + "[" + std::to_string(i) + "] capacity is not a power of two");
    r.mask = r.capacity - 1;
    return r;
  }

  // --- guest memory ---------------------------------------------------------

  /** Host bytes of guest [gpa, gpa + len) when wholly inside one region, else null. */
  uint8_t* Translate(double gpa, uint32_t len) {
    size_t n = regions_.size();
    for (size_t k = 0; k < n; k++) {
      size_t i = (lastRegion_ + k) % n;
      const Region& r = regions_[i];
      if (gpa >= r.start && gpa < r.end) {
        if (gpa + len > r.end) return nullptr;
        lastRegion_ = i;
        return r.view.base + static_cast<size_t>(gpa - r.bias);
      }
    }
    return nullptr;
  }

  /** The split ring's three parts, located by TypeScript (SplitVirtqueue.burstLocation). */
  struct Queue {
    uint8_t* desc;
    uint8_t* avail;
    uint8_t* used;
    uint32_t size;
    uint32_t mask;
  };

  /** The queue in `ctl`, checked to lie inside its regions; false when it does not. */
  bool LocateQueue(const double* ctl, Queue* q) {
    double size = ctl[kQueueSize];
    if (!(size >= 1 && size <= 32768)) return false;
    q->size = static_cast<uint32_t>(size);
    if ((q->size & (q->size - 1)) != 0) return false;
    q->mask = q->size - 1;
    q->desc = RingPart(ctl[kDescRegion], ctl[kDescOffset], kDescSize * q->size);
    q->avail = RingPart(ctl[kAvailRegion], ctl[kAvailOffset], kAvailRing + 2 * q->size);
    q->used = RingPart(ctl[kUsedRegion], ctl[kUsedOffset], kUsedRing + 8 * q->size);
    return q->desc != nullptr && q->avail != nullptr && q->used != nullptr;
  }

  uint8_t* RingPart(double region, double offset, size_t bytes) {
    if (!(region >= 0 && region < static_cast<double>(regions_.size()))) return nullptr;
    const HeldView& v = regions_[static_cast<size_t>(region)].view;
    if (!(offset >= 0 && offset + static_cast<double>(bytes) <= static_cast<double>(v.length)))
      return nullptr;
    return v.base + static_cast<size_t>(offset);
  }

  /**
   * Walks chain `head`: every descriptor direct, each buffer inside one
   * region, all readable (`writable` false) or all writable. Fills `segs`;
   * returns their count, or -1 for anything else (the TypeScript walk decides).
   */
  int Walk(const Queue& q, uint32_t head, bool writable, Segment* segs, uint64_t* total) {
    uint32_t index = head;
    int n = 0;
    uint64_t sum = 0;
    for (uint32_t count = 1;; count++) {
      if (count > q.size) return -1;
      const uint8_t* d = q.desc + index * kDescSize;
      // Each field read once.
      uint64_t addr;
      std::memcpy(&addr, d, 8);
      uint32_t len = LoadU32(d + 8);
      uint16_t flags = LoadU16(d + 12);
      uint16_t next = LoadU16(d + 14);
      if ((flags & kDescIndirect) != 0) return -1;
      if (((flags & kDescWrite) != 0) != writable) return -1;
      if (len > 0) {
        if (n == kMaxSegments) return -1;
        uint8_t* at = Translate(static_cast<double>(addr), len);
        // A 64-bit address rounds as a double only far above every region.
        if (at == nullptr || addr > (uint64_t{1} << 53)) return -1;
        segs[n++] = Segment{at, len};
        sum += len;
        if (sum > 0xffffffffu) return -1;
      }
      if ((flags & kDescNext) == 0) break;
      if (next >= q.size) return -1;
      index = next;
    }
    *total = sum;
    return n;
  }

  // --- the MAC table (read only) --------------------------------------------

  int Lookup(uint32_t high, uint32_t low, double now, double ageing) {
    const int32_t* keyHigh = reinterpret_cast<const int32_t*>(keyHigh_.base);
    const int32_t* keyLow = reinterpret_cast<const int32_t*>(keyLow_.base);
    const int32_t* buckets = reinterpret_cast<const int32_t*>(buckets_.base);
    uint32_t h = (low ^ (high * kHashMultiplier)) * kHashMultiplier;
    h ^= h >> 16;
    uint32_t b = h & bucketMask_;
    for (uint32_t probes = 0; probes <= bucketMask_; probes++) {
      int32_t e = buckets[b];
      if (e <= 0 || static_cast<uint32_t>(e) > entries_) return kUnknownPort;
      if (static_cast<uint32_t>(keyLow[e - 1]) == low && static_cast<uint32_t>(keyHigh[e - 1]) == high) {
        const double* seen = reinterpret_cast<const double*>(seen_.base);
        if (now - seen[e - 1] > ageing) return kUnknownPort;
        return reinterpret_cast<const int32_t*>(ports_.base)[e - 1];
      }
      b = (b + 1) & bucketMask_;
    }
    return kUnknownPort;
  }

  // --- packet rings ---------------------------------------------------------

  /** Producer: whether `bytes` fit now (TAIL reloaded when they seem not to). */
  bool HasRoom(const Ring& r, double* state, uint32_t bytes) {
    uint32_t head = static_cast<uint32_t>(static_cast<int64_t>(state[0]));
    uint32_t tailSeen = static_cast<uint32_t>(static_cast<int64_t>(state[1]));
    uint32_t pos = head & r.mask;
    uint32_t record = kRecordHeader + Align4(bytes);
    uint32_t pad = pos + record > r.capacity ? r.capacity - pos : 0;
    if ((head - tailSeen) + pad + record <= r.capacity) return true;
    // Acquire, as PacketRing.tryReserve: the consumer is done with the space before TAIL.
    tailSeen = static_cast<uint32_t>(__atomic_load_n(&r.header[tailSlot_], __ATOMIC_ACQUIRE));
    state[1] = static_cast<int32_t>(tailSeen);
    return (head - tailSeen) + pad + record <= r.capacity;
  }

  /** Producer: reserves a record of `bytes` (HasRoom said yes) with its length word; returns where the frame goes. */
  uint8_t* Reserve(const Ring& r, double* state, uint32_t bytes) {
    uint32_t head = static_cast<uint32_t>(static_cast<int64_t>(state[0]));
    uint32_t pos = head & r.mask;
    uint32_t record = kRecordHeader + Align4(bytes);
    uint32_t pad = pos + record > r.capacity ? r.capacity - pos : 0;
    if (pad > 0) StoreU32(r.data + pos, kWrap);
    uint32_t at = pad > 0 ? 0 : pos;
    StoreU32(r.data + at, bytes);
    state[0] = static_cast<int32_t>(head + pad + record);
    state[2] += 1;
    return r.data + at + kRecordHeader;
  }

  // --- tx: driver → rings ---------------------------------------------------

  // tx(ctl: Float64Array) -> status; see Ctl and src/devices/net/burst.ts.
  Napi::Value Tx(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Float64Array array = ArgFloat64Array(info, 0, "ctl");
    size_t ports = out_.size();
    if (array.ElementLength() < kRingState + 3 * ports) ThrowRangeError(env, "ctl is too short");
    double* ctl = array.Data();
    ctl[kFrames] = 0;
    ctl[kBytes] = 0;
    Queue q;
    if (!LocateQueue(ctl, &q)) return Napi::Number::New(env, kDefer);
    uint16_t last = static_cast<uint16_t>(ctl[kLastAvail]);
    uint32_t avail = (static_cast<uint32_t>(ctl[kAvailIdx]) - last) & 0xffff;
    uint32_t max = std::min<uint32_t>(avail, static_cast<uint32_t>(ctl[kMax]));
    uint16_t used = static_cast<uint16_t>(ctl[kUsedIdx]);
    uint32_t maxFrame = static_cast<uint32_t>(ctl[kMaxFrame]);
    uint32_t minFrame = static_cast<uint32_t>(ctl[kMinFrame]);
    double now = ctl[kNow], ageing = ctl[kAgeingMs];
    uint16_t end = static_cast<uint16_t>(last + max);
    PrefetchStart(q, last, end, false);
    Segment segs[kMaxSegments];
    int* targets = targets_.data();
    uint32_t frames = 0;
    double bytesTotal = 0;
    int status = kDone;
    for (; frames < max; frames++) {
      PrefetchAhead(q, static_cast<uint16_t>(last + frames), end, false);
      uint16_t slot = static_cast<uint16_t>(last + frames) & q.mask;
      uint32_t head = LoadU16(q.avail + kAvailRing + 2 * slot);
      if (head >= q.size) { status = kDefer; break; }
      uint64_t total = 0;
      int n = Walk(q, head, false, segs, &total);
      // The header and both addresses in the first buffer; a bare frame of a sane length.
      if (n <= 0 || segs[0].length < kNetHdr + 12 || total < kNetHdr + minFrame ||
          total - kNetHdr > maxFrame) { status = kDefer; break; }
      uint32_t length = static_cast<uint32_t>(total - kNetHdr);
      const uint8_t* h = segs[0].at;
      if (h[0] != 0 || h[1] != 0) { status = kDefer; break; }
      // The addresses, read once: routed by these, as the TypeScript path routes by its copy.
      uint8_t mac[12];
      std::memcpy(mac, h + kNetHdr, 12);
      uint32_t dstHigh = (mac[0] << 8) | mac[1];
      uint32_t dstLow = LoadBe32(mac + 2);
      uint32_t srcHigh = (mac[6] << 8) | mac[7];
      uint32_t srcLow = LoadBe32(mac + 8);
      if (ctl[kLearntValid] == 0 || static_cast<uint32_t>(ctl[kLearntHigh]) != srcHigh ||
          static_cast<uint32_t>(static_cast<int64_t>(ctl[kLearntLow])) != srcLow) {
        ctl[kLearnHigh] = srcHigh;
        ctl[kLearnLow] = static_cast<int32_t>(srcLow);
        status = kLearn;
        break;
      }
      int count = 0;
      int dst = (mac[0] & 1) != 0 ? kUnknownPort : Lookup(dstHigh, dstLow, now, ageing);
      if (dst == self_) {
        count = 0;  // behind this very port: filtered
      } else if (dst != kUnknownPort) {
        if (dst < 0 || static_cast<size_t>(dst) >= ports || out_[dst].data == nullptr) {
          count = 0;
        } else {
          targets[count++] = dst;
        }
      } else {
        for (size_t p = 0; p < ports; p++)
          if (static_cast<int>(p) != self_ && out_[p].data != nullptr) targets[count++] = static_cast<int>(p);
      }
      bool room = true;
      for (int t = 0; t < count && room; t++) {
        const Ring& r = out_[targets[t]];
        room = length <= r.capacity / 4 && HasRoom(r, ctl + kRingState + 3 * targets[t], length);
      }
      // A full destination: hold or drop is policy (SwitchPort.reserve).
      if (!room) { status = kDefer; break; }
      uint8_t* first = nullptr;
      for (int t = 0; t < count; t++) {
        uint8_t* to = Reserve(out_[targets[t]], ctl + kRingState + 3 * targets[t], length);
        if (first == nullptr) {
          CopyFromSegments(segs, n, kNetHdr, to, length);
          first = to;
        } else {
          std::memcpy(to, first, length);
        }
      }
      uint8_t* u = q.used + kUsedRing + 8 * ((used + frames) & q.mask);
      StoreU32(u, head);
      StoreU32(u + 4, 0);
      bytesTotal += length;
    }
    ctl[kFrames] = frames;
    ctl[kBytes] = bytesTotal;
    return Napi::Number::New(env, status);
  }

  static uint32_t LoadBe32(const uint8_t* p) {
    return (static_cast<uint32_t>(p[0]) << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
  }

  /** Copies `length` bytes of the chain's buffers, after its first `skip`, to `to`. */
  static void CopyFromSegments(const Segment* segs, int n, uint32_t skip, uint8_t* to,
                               uint32_t length) {
    for (int s = 0; s < n && length > 0; s++) {
      uint32_t len = segs[s].length;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      uint32_t take = std::min(len - skip, length);
      std::memcpy(to, segs[s].at + skip, take);
      to += take;
      length -= take;
      skip = 0;
    }
  }

  /**
   * Rolling prefetch over the avail ring: the descriptor of the chain
   * kDescAhead places ahead of `at`, and the first line of the buffer of the
   * chain kBufferAhead ahead (its descriptor was asked for earlier), so that
   * about a dozen misses are in flight while frames are moved — the driver's
   * CPU just wrote them all, and one by one each is a cross-CPU miss that
   * stalled the loop (perf: 64 % of the transmit loop on the header's first
   * read). `write`: the line will be written (a receive buffer). Only hints:
   * nothing read here is trusted, every address is translated first.
   */
  void PrefetchAhead(const Queue& q, uint16_t at, uint16_t end, bool write) {
    uint16_t d = static_cast<uint16_t>(at + kDescAhead);
    if (static_cast<uint16_t>(end - at) > kDescAhead) {
      uint32_t head = LoadU16(q.avail + kAvailRing + 2 * (d & q.mask));
      if (head < q.size) __builtin_prefetch(q.desc + head * kDescSize, 0, 3);
    }
    uint16_t b = static_cast<uint16_t>(at + kBufferAhead);
    if (static_cast<uint16_t>(end - at) > kBufferAhead) PrefetchBuffer(q, b, write);
  }

  /** The first line of the first buffer of the chain in avail slot `idx`. */
  void PrefetchBuffer(const Queue& q, uint16_t idx, bool write) {
    uint32_t head = LoadU16(q.avail + kAvailRing + 2 * (idx & q.mask));
    if (head >= q.size) return;
    uint64_t addr;
    std::memcpy(&addr, q.desc + head * kDescSize, 8);
    uint8_t* line = Translate(static_cast<double>(addr), 1);
    if (line == nullptr) return;
    if (write)
      __builtin_prefetch(line, 1, 3);
    else
      __builtin_prefetch(line, 0, 3);
  }

  /** Starts the rolling prefetch of chains [at, end): the first descriptors and buffers. */
  void PrefetchStart(const Queue& q, uint16_t at, uint16_t end, bool write) {
    uint16_t n = static_cast<uint16_t>(end - at);
    for (uint16_t i = 0; i < n && i < kDescAhead; i++) {
      uint32_t head = LoadU16(q.avail + kAvailRing + 2 * ((at + i) & q.mask));
      if (head < q.size) __builtin_prefetch(q.desc + head * kDescSize, 0, 3);
    }
    for (uint16_t i = 0; i < n && i < kBufferAhead; i++)
      PrefetchBuffer(q, static_cast<uint16_t>(at + i), write);
  }

  // --- rx: rings → driver ---------------------------------------------------

  // rx(ctl: Float64Array) -> status; consumer state of ring ctl[kInRing] at kRingState.
  Napi::Value Rx(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Float64Array array = ArgFloat64Array(info, 0, "ctl");
    if (array.ElementLength() < kRingState + 2) ThrowRangeError(env, "ctl is too short");
    double* ctl = array.Data();
    ctl[kFrames] = 0;
    ctl[kBytes] = 0;
    ctl[kPopped] = 0;
    double ringIndex = ctl[kInRing];
    if (!(ringIndex >= 0 && ringIndex < static_cast<double>(in_.size())))
      ThrowRangeError(env, "ctl names no incoming ring");
    const Ring& ring = in_[static_cast<size_t>(ringIndex)];
    Queue q;
    if (!LocateQueue(ctl, &q)) return Napi::Number::New(env, kDefer);
    double* state = ctl + kRingState;
    uint32_t tail = static_cast<uint32_t>(static_cast<int64_t>(state[0]));
    uint32_t headSeen = static_cast<uint32_t>(static_cast<int64_t>(state[1]));
    uint16_t last = static_cast<uint16_t>(ctl[kLastAvail]);
    uint16_t availIdx = static_cast<uint16_t>(ctl[kAvailIdx]);
    uint16_t used = static_cast<uint16_t>(ctl[kUsedIdx]);
    uint32_t max = static_cast<uint32_t>(ctl[kMax]);
    uint32_t maxChains = std::min<uint32_t>(kMaxRxChains, static_cast<uint32_t>(ctl[kMaxChains]));
    bool filterAll = ctl[kFilterAll] != 0, allMulti = ctl[kAllMulti] != 0;
    uint32_t primaryHigh = static_cast<uint32_t>(ctl[kPrimaryHigh]);
    uint32_t primaryLow = static_cast<uint32_t>(static_cast<int64_t>(ctl[kPrimaryLow]));
    Segment segs[kMaxSegments];
    uint32_t heads[kMaxRxChains];
    uint32_t lens[kMaxRxChains];
    uint32_t frames = 0, popped = 0;
    double bytesTotal = 0;
    int status = kDone;
    PrefetchStart(q, last, availIdx, true);
    while (frames < max) {
      if (tail == headSeen) {
        // Acquire, as PacketRing.peek: records before HEAD are fully written.
        headSeen = static_cast<uint32_t>(__atomic_load_n(&ring.header[headSlot_], __ATOMIC_ACQUIRE));
        if (tail == headSeen) break;
      }
      uint32_t pos = tail & ring.mask;
      uint32_t word = LoadU32(ring.data + pos);
      uint32_t skip = 0;
      if (word == kWrap) {
        skip = ring.capacity - pos;
        pos = 0;
        word = LoadU32(ring.data);
      }
      // A frame with its virtio_net_hdr (offloads), or a record that makes no sense: TypeScript's.
      if ((word & kVnetHeaderFlag) != 0 || word < 12 || pos + kRecordHeader + word > ring.capacity) {
        status = kDefer;
        break;
      }
      uint32_t length = word;
      const uint8_t* frame = ring.data + pos + kRecordHeader;
      uint32_t dstHigh = (frame[0] << 8) | frame[1];
      uint32_t dstLow = LoadBe32(frame + 2);
      if (!filterAll) {
        bool group = (frame[0] & 1) != 0;
        bool ok = group ? (allMulti || (dstHigh == 0xffff && dstLow == 0xffffffffu))
                        : (dstHigh == primaryHigh && dstLow == primaryLow);
        // Anything the filter's tables would decide: TypeScript's.
        if (!ok) { status = kDefer; break; }
      }
      // Place header + frame in as many chains as it takes.
      uint32_t need = kNetHdr + length;
      uint32_t placed = 0;
      uint32_t chains = 0;
      uint8_t* numBuffers = nullptr;
      int verdict = kDone;
      while (placed < need) {
        if (chains == maxChains) { verdict = kDefer; break; }
        if (static_cast<uint16_t>(last + popped + chains) == availIdx) { verdict = kNoBuffers; break; }
        uint16_t at = static_cast<uint16_t>(last + popped + chains);
        PrefetchAhead(q, at, availIdx, true);
        uint32_t head = LoadU16(q.avail + kAvailRing + 2 * (at & q.mask));
        if (head >= q.size) { verdict = kDefer; break; }
        uint64_t total = 0;
        int n = Walk(q, head, true, segs, &total);
        if (n <= 0 || (chains == 0 && segs[0].length < kNetHdr)) { verdict = kDefer; break; }
        uint32_t wrote = 0;
        for (int s = 0; s < n && placed < need; s++) {
          uint32_t take = std::min(segs[s].length, need - placed);
          uint8_t* to = segs[s].at;
          uint32_t from = placed;
          if (from < kNetHdr) {
            // The header: zero, num_buffers patched below (the first segment holds all 12 bytes).
            std::memset(to, 0, kNetHdr);
            numBuffers = to + kNumBuffers;
            std::memcpy(to + kNetHdr, frame, take - kNetHdr);
          } else {
            std::memcpy(to, frame + (from - kNetHdr), take);
          }
          placed += take;
          wrote += take;
        }
        heads[chains] = head;
        lens[chains] = wrote;
        chains++;
      }
      if (verdict != kDone) {
        // Nothing published: the chains taken stay available, the frame stays in the ring.
        status = verdict;
        break;
      }
      numBuffers[0] = static_cast<uint8_t>(chains & 0xff);
      numBuffers[1] = static_cast<uint8_t>(chains >> 8);
      for (uint32_t c = 0; c < chains; c++) {
        uint8_t* u = q.used + kUsedRing + 8 * ((used + popped + c) & q.mask);
        StoreU32(u, heads[c]);
        StoreU32(u + 4, lens[c]);
      }
      popped += chains;
      tail = tail + skip + kRecordHeader + Align4(length);
      frames++;
      bytesTotal += length;
      // Delivered: now its source is learnt, as PacketRing release() learns it
      // (read before TAIL hands the record back). A new one stops the loop.
      uint32_t srcHigh = (frame[6] << 8) | frame[7];
      uint32_t srcLow = LoadBe32(frame + 8);
      if (ctl[kLearntValid] == 0 || static_cast<uint32_t>(ctl[kLearntHigh]) != srcHigh ||
          static_cast<uint32_t>(static_cast<int64_t>(ctl[kLearntLow])) != srcLow) {
        ctl[kLearnHigh] = srcHigh;
        ctl[kLearnLow] = static_cast<int32_t>(srcLow);
        status = kLearn;
        break;
      }
    }
    state[0] = static_cast<int32_t>(tail);
    state[1] = static_cast<int32_t>(headSeen);
    ctl[kFrames] = frames;
    ctl[kBytes] = bytesTotal;
    ctl[kPopped] = popped;
    return Napi::Number::New(env, status);
  }

  std::vector<Region> regions_;
  size_t lastRegion_ = 0;
  std::vector<Ring> out_;
  std::vector<Ring> in_;
  /** Destination ports of the frame being routed (one per port at most). */
  std::vector<int> targets_;
  int self_ = 0;
  int headSlot_ = 0;
  int tailSlot_ = 0;
  HeldView keyHigh_, keyLow_, ports_, seen_, buckets_;
  uint32_t entries_ = 0;
  uint32_t bucketMask_ = 0;
};

void InitNetBurst(Napi::Env env, Napi::Object exports) {
  exports.Set("NetBurst", NetBurst::Define(env));
}

}  // namespace vhost_rt
