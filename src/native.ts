/**
 * The typed face of the native addon (native/, one .cc file per concern,
 * registered in native/addon.cc; built as native/build/Release/vhost_rt.node).
 * The addon is a flat set of syscall wrappers over numbers and buffers; all
 * policy lives in TypeScript. Every failing call throws a {@link SystemError}
 * whose `code` is errno's name (`EINVAL`), with `errno` and `syscall` set,
 * like Node's own.
 *
 * The addon is context-aware: it loads in the main thread and in every
 * worker_thread, and each thread's {@link FdWatcher}s run on that thread's own
 * libuv loop.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SystemError, VhostRtError } from './errors.js';

/** Bits of {@link FdWatcher.start}'s `events`, and of what its callback receives. */
export const POLL_READABLE = 1;
/** {@link FdWatcher} bit: the fd can be written without blocking (libuv UV_WRITABLE). */
export const POLL_WRITABLE = 2;
/** Set in the callback's `events` when the peer hung up or the fd is in error. */
export const POLL_DISCONNECT = 4;

/**
 * Readiness watcher over one fd (a libuv `uv_poll_t` on the calling thread's
 * loop). While started it keeps the thread's loop alive. The callback receives
 * the POLL_* bits that are ready, or a negative errno value on error.
 */
export interface FdWatcher {
  start(events: number): void;
  stop(): void;
  /** Stops and releases the handle; the fd itself is not closed. Idempotent. */
  close(): void;
}

/**
 * Copies byte ranges between views it names by index (native/net.cc). Every
 * range is checked against its view; a bad op throws RangeError (ops before
 * it were copied).
 */
export interface FrameCopier {
  /** View i is what ops call buffer i; replaces the previous table. */
  setViews(views: Uint8Array[]): void;
  /**
   * Performs ops `[0, count)`, op k being `ops[5k, 5k + 5)` = (source view,
   * source offset, destination view, destination offset, length).
   */
  copy(ops: Float64Array, count: number): void;
  /**
   * Starts loading into the cache the line at each of pairs `[0, count)`,
   * pair k being `at[2k, 2k + 2)` = (view, offset), and the line after it
   * when the next 32 bytes cross into it. Returns at once (a CPU prefetch,
   * which never faults); a pair outside the view table or its view is
   * skipped, not an error.
   */
  prefetch(at: Float64Array, count: number): void;
}

/**
 * The switch's per-batch frame loop in native code (native/net-burst.cc,
 * issue 13): moves a batch of bare frames between a split ring and the
 * packet rings, and stops at the first frame it leaves to TypeScript.
 * Driven by src/net/switch-port.ts and src/devices/net/burst.ts, whose
 * control array is laid out as {@link BURST_CTL}.
 */
export interface NetBurst {
  /**
   * The guest memory table: region i spans guest addresses
   * `[starts[i], ends[i])`, address a at `views[i][a - biases[i]]`.
   */
  setGuest(
    views: Uint8Array[],
    starts: Float64Array,
    ends: Float64Array,
    biases: Float64Array,
  ): void;
  /**
   * This port's switch side: its index, its rings (whole SharedArrayBuffer
   * views; null on the diagonal), the PacketRing header's HEAD and TAIL
   * slots and size, and the MAC table's arrays (read only).
   */
  setSwitch(
    self: number,
    outRings: (Uint8Array | null)[],
    inRings: Uint8Array[],
    headSlot: number,
    tailSlot: number,
    headerBytes: number,
    keyHigh: Int32Array,
    keyLow: Int32Array,
    ports: Int32Array,
    seen: Float64Array,
    buckets: Int32Array,
  ): void;
  /** Transmits a batch from the queue in `ctl`; returns a {@link BURST_STATUS}. */
  tx(ctl: Float64Array): number;
  /** Delivers a batch from in ring `ctl[IN_RING]` to the queue in `ctl`; returns a {@link BURST_STATUS}. */
  rx(ctl: Float64Array): number;
}

/** Slots of a {@link NetBurst} control array (native/net-burst.cc `Ctl`). */
export const BURST_CTL = {
  DESC_REGION: 0,
  DESC_OFFSET: 1,
  AVAIL_REGION: 2,
  AVAIL_OFFSET: 3,
  USED_REGION: 4,
  USED_OFFSET: 5,
  QUEUE_SIZE: 6,
  LAST_AVAIL: 7,
  AVAIL_IDX: 8,
  USED_IDX: 9,
  /** Most frames this call may move. */
  MAX: 10,
  /** tx: longest bare frame accepted (the device's max frame). */
  MAX_FRAME: 11,
  /** tx: shortest frame accepted. */
  MIN_FRAME: 12,
  /** The batch clock and the table's ageing time (lookups). */
  NOW: 13,
  AGEING_MS: 14,
  /** The source address already learnt in this batch (1 valid, high 16 bits, low 32 as int32). */
  LEARNT_VALID: 15,
  LEARNT_HIGH: 16,
  LEARNT_LOW: 17,
  /** rx: the in ring, and the receive filter (accept all; primary address; all multicast). */
  IN_RING: 18,
  FILTER_ALL: 19,
  PRIMARY_HIGH: 20,
  PRIMARY_LOW: 21,
  ALL_MULTI: 22,
  /** rx: most receive chains one frame may take. */
  MAX_CHAINS: 23,
  /** Results: frames moved, their bytes, rx chains popped (= used elements added). */
  FRAMES: 24,
  BYTES: 25,
  POPPED: 26,
  /** Result of {@link BURST_STATUS.LEARN}: the address to learn. */
  LEARN_HIGH: 28,
  LEARN_LOW: 29,
  /** tx: (head, tailSeen, frames committed) per out ring by port; rx: (tail, headSeen) of the in ring. */
  RING_STATE: 32,
} as const;

/** What a {@link NetBurst} call stopped at. */
export const BURST_STATUS = {
  /** Its maximum, or nothing left (the ring of frames or the avail snapshot). */
  DONE: 0,
  /** The next frame goes the TypeScript way (its chain, header, route or destination). */
  DEFER: 1,
  /**
   * A source address to learn (LEARN_HIGH / LEARN_LOW): tx, of the next
   * frame, before it is routed; rx, of the last frame delivered.
   */
  LEARN: 2,
  /** rx: the avail snapshot ran out of buffers before the next frame was placed. */
  NO_BUFFERS: 3,
} as const;

/**
 * Maps small integers to the base addresses of SharedArrayBuffers (guest RAM
 * regions, or any other SAB), so that iovec tables can name memory as
 * (buffer index, offset, length) and the native side builds real pointers.
 * Holds a reference to every buffer it was given until `set` replaces them,
 * so memory stays mapped while an I/O that uses it is in flight.
 */
export interface BufferTable {
  set(buffers: SharedArrayBuffer[]): void;
  readonly length: number;
  /** Largest power of two (at most 4096) dividing the base address of entry `index`. */
  baseAlignment(index: number): number;
}

/** Layout of one entry in the `ops` Float64Array of {@link AioContext.submit}. */
export const AIO_OP_STRIDE = 6;
/** Field offsets inside one ops entry. */
export const AIO_OP = {
  opcode: 0,
  fd: 1,
  offset: 2,
  firstIov: 3,
  iovCount: 4,
  userData: 5,
} as const;
/** Opcodes of ops entries; values are the kernel's IOCB_CMD_*. */
export const AIO_CMD = { PREAD: 0, PWRITE: 1, FSYNC: 2, FDSYNC: 3, PREADV: 7, PWRITEV: 8 } as const;
/** Layout of one entry in an iovec Float64Array: [bufferIndex, byteOffset, byteLength]. */
export const IOV_STRIDE = 3;

/**
 * A Linux AIO context (io_setup) whose completions are signalled on an eventfd
 * (IOCB_FLAG_RESFD). Iocbs and iovecs live in native memory allocated once in
 * the constructor: submit and getEvents allocate nothing.
 */
export interface AioContext {
  /**
   * Builds `count` iocbs from `ops` (AIO_OP_STRIDE doubles each) whose iovecs are
   * read from `iovs` (IOV_STRIDE doubles each, indexes into `table`), and hands
   * them to one io_submit. Every iovec is bounds-checked against its buffer before
   * anything is submitted (RangeError otherwise). Returns how many the kernel
   * took (it may take fewer than `count`); EAGAIN throws. `ioprios`, when
   * given, holds one I/O priority per op (ioprio_set(2) encoding; 0: none),
   * submitted with IOCB_FLAG_IOPRIO and aio_reqprio.
   */
  submit(
    table: BufferTable,
    ops: Float64Array,
    count: number,
    iovs: Float64Array,
    ioprios?: Uint16Array,
  ): number;
  /**
   * Reaps up to `max` completions without blocking (io_getevents with min 0).
   * Writes pairs [userData, result] into `out`; result is bytes transferred or
   * -errno. Returns the number of pairs written.
   */
  getEvents(out: Float64Array, max: number): number;
  /** io_destroy; waits for in-flight iocbs as the kernel does. Idempotent. */
  destroy(): void;
}

/** A thread's scheduling attributes as `schedGetAttr` reads them (times in ns). */
export interface SchedAttr {
  policy: number;
  runtimeNs: number;
  deadlineNs: number;
  periodNs: number;
}

/**
 * A thread's scheduling as `schedGetScheduler` reads it: kernel SCHED_* policy
 * (SCHED_RESET_ON_FORK masked off) and sched_priority (0 unless fifo/rr).
 */
export interface SchedParams {
  policy: number;
  priority: number;
}

/** What {@link NativeBinding.fdInfo} reads about a descriptor. */
export interface FdFacts {
  /** st_mode: file type bits (S_IFMT) and permissions. */
  mode: number;
  /** st_size in bytes. */
  size: number;
  /** st_dev and st_ino: together, which file it is. */
  dev: number;
  ino: number;
  /** f_type of fstatfs: the file system's magic number (hugetlbfs: 0x958458f6). */
  fsType: number;
  /** The open file's access mode allows read(2) / write(2) (both false for O_PATH). */
  readable: boolean;
  writable: boolean;
  /** The open file is O_NONBLOCK (shared by every process holding it). */
  nonBlocking: boolean;
  /** Opened with O_PATH: only good for naming the file. */
  pathOnly: boolean;
  /** The /proc/self/fd/N link: 'anon_inode:[eventfd]', 'pipe:[123]', '/memfd:ram (deleted)', a path; '' without /proc. */
  link: string;
}

/** Kernel and libc constants as the addon was compiled with them (native/addon.cc). */
export interface NativeConstants {
  O_DIRECT: number;
  SCHED_OTHER: number;
  SCHED_FIFO: number;
  SCHED_RR: number;
  SCHED_BATCH: number;
  SCHED_IDLE: number;
  MCL_CURRENT: number;
  MCL_FUTURE: number;
  FALLOC_FL_KEEP_SIZE: number;
  FALLOC_FL_PUNCH_HOLE: number;
  FALLOC_FL_ZERO_RANGE: number;
}

/** Layout of one entry in the `ops` Float64Array of {@link NbdClient.submit}. */
export const NBD_OP_STRIDE = 7;
/** Field offsets inside one NBD ops entry (`length`: trim and zero only; iovecs: read and write only). */
export const NBD_OP = {
  cmd: 0,
  flags: 1,
  offset: 2,
  length: 3,
  firstIov: 4,
  iovCount: 5,
  userData: 6,
} as const;
/** Commands of NBD ops entries (NBD_CMD_READ, WRITE, FLUSH, TRIM, WRITE_ZEROES). */
export const NBD_CMD = { READ: 0, WRITE: 1, FLUSH: 2, TRIM: 3, ZERO: 4 } as const;
/** Command flags of NBD ops entries: libnbd's LIBNBD_CMD_FLAG_FUA and _NO_HOLE. */
export const NBD_FLAG = { FUA: 1, NO_HOLE: 2 } as const;
/**
 * Bits of the status {@link NbdClient} returns: the directions libnbd waits
 * for (its LIBNBD_AIO_DIRECTION_*, the same values as POLL_READABLE /
 * POLL_WRITABLE), completions waiting for getEvents, connected, dead, and
 * commands held for a connection.
 */
export const NBD_STATUS = {
  READ: 1,
  WRITE: 2,
  COMPLETIONS: 4,
  READY: 8,
  DEAD: 16,
  HELD: 32,
} as const;

/**
 * Flags of {@link NbdClient.pump} besides the POLL_* bits. IF_READABLE: the
 * caller guesses (a busy poll), so the read is notified only if the socket is
 * readable now; a read notified on a socket with nothing to read can stall a
 * half-sent request for ever (native/nbd.cc Pump).
 */
export const NBD_PUMP = { IF_READABLE: 8 } as const;

/** What an NBD server said about its export during the handshake (libnbd's nbd_get_* / nbd_can_*). */
export interface NbdExportInfo {
  size: number;
  readOnly: boolean;
  canFlush: boolean;
  canFua: boolean;
  canTrim: boolean;
  canZero: boolean;
  canMultiConn: boolean;
  /** Structured replies were negotiated (libnbd asks for them). */
  structuredReplies: boolean;
  /** Block size constraints (-1: the server gave none). */
  minBlock: number;
  preferredBlock: number;
  maxBlock: number;
  /** 'newstyle-fixed', 'newstyle' or 'oldstyle'. */
  protocol: string;
}

/**
 * One libnbd handle driven through its asynchronous API (native/nbd.cc). The
 * caller watches `fd` for the status' direction bits and calls `pump` with
 * what is ready; completions are collected natively and reaped in batches.
 * A command that loses its connection is held (with its guest buffer) until
 * `resubmitHeld` on a new connection or `failHeld`. Nothing allocates per
 * request once the high-water mark of commands in flight is reached.
 */
export interface NbdClient {
  /**
   * Connects to an NBD URI (nbd://, nbd+unix://, ...) and completes the
   * handshake, blocking at most `timeoutMs` (for opening a device, before it
   * serves anything). Throws a SystemError (syscall `nbd_connect_uri`,
   * libnbd's message, its errno's code; ETIMEDOUT after the timeout).
   */
  connect(uri: string, timeoutMs: number): void;
  /** Closes the current handle and starts connecting a new one without blocking; returns the status. */
  beginConnect(uri: string): number;
  /** The export as negotiated; ENOTCONN unless connected. */
  info(): NbdExportInfo;
  /** The socket to watch (-1: no handle). Changes on every (re)connect. */
  readonly fd: number;
  /** NBD commands held for a connection. */
  readonly held: number;
  /** libnbd's message for the last failure seen (connect, notify, issue). */
  readonly lastError: string;
  /**
   * Checks all `count` ops (NBD_OP layout) and their iovecs (IOV_STRIDE,
   * indexes into `table`), then issues them: a read or write as one NBD
   * command per iovec (split further at the server's maximum block size).
   * RangeError before anything is issued when an entry is invalid or more ops
   * are given than free slots (`depth`). Returns the status.
   */
  submit(table: BufferTable, ops: Float64Array, count: number, iovs: Float64Array): number;
  /**
   * nbd_aio_notify_read / _write for the POLL_* bits in `events` (negative: an
   * error, read); with {@link NBD_PUMP}.IF_READABLE the read is notified only
   * if the socket is readable now. Returns the status.
   */
  pump(events: number): number;
  /** Writes finished ops as [userData, result] pairs (bytes or -errno); returns how many. */
  getEvents(out: Float64Array, max: number): number;
  /** Issues every held command on the (ready) connection; returns the status. */
  resubmitHeld(): number;
  /** Fails every held command with `errno`; their ops complete with -errno. Returns the status. */
  failHeld(errno: number): number;
  /** Disconnects and closes the handle. Idempotent. */
  close(): void;
}

/** Everything the addon exports. */
export interface NativeBinding {
  constants: NativeConstants;
  /** Called once per thread by this module: errors are built as `new cls(message)`. */
  setErrorClass(cls: new (message: string) => Error): void;

  // Unix sockets. All fds are created O_NONBLOCK | O_CLOEXEC.
  /** socket + bind + listen on a filesystem path; the caller removes stale files. */
  unixListen(path: string, backlog: number): number;
  /** socket + connect to a filesystem path; the returned fd is non-blocking. */
  unixConnect(path: string): number;
  /** accept4; returns -1 when no connection is pending (EAGAIN). */
  accept(listenFd: number): number;
  /**
   * recvmsg into `buf`, collecting SCM_RIGHTS fds (received fds are O_CLOEXEC).
   * Returns null on EAGAIN; bytes 0 means the peer closed.
   */
  recvMsg(fd: number, buf: Uint8Array): { bytes: number; fds: number[] } | null;
  /** sendmsg of all of `buf` with `fds` attached as SCM_RIGHTS (MSG_NOSIGNAL). */
  sendMsg(fd: number, buf: Uint8Array, fds: number[]): void;
  close(fd: number): void;
  /**
   * One datagram to the AF_UNIX SOCK_DGRAM socket at `path` ('@name': the
   * abstract namespace) from a fresh unbound socket: sd_notify's wire shape.
   */
  unixDatagramSend(path: string, buf: Uint8Array): void;
  /** A SOCK_DGRAM socket bound to `path` ('@name': abstract); read it with recvMsg. */
  unixDatagramBind(path: string): number;
  /**
   * What socket `fd` is: family (AF_UNIX 1), type (SOCK_STREAM 1, SOCK_DGRAM 2),
   * whether it listens (SO_ACCEPTCONN) and its bound path ('@name' abstract,
   * '' unnamed). ENOTSOCK / EBADF otherwise.
   */
  socketInfo(fd: number): { domain: number; type: number; listening: boolean; path: string };
  /** Sets or clears O_NONBLOCK (on the open file) and FD_CLOEXEC (on this fd): for inherited fds. */
  setFdFlags(fd: number, nonBlocking: boolean, closeOnExec: boolean): void;

  // Memory.
  /** memfd_create(name, MFD_CLOEXEC) + ftruncate(size). */
  memfdCreate(name: string, size: number): number;
  /**
   * mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset) exposed as a
   * SharedArrayBuffer over the mapping itself (an external V8 backing store), so
   * it can be posted to worker threads and every thread sees the same pages.
   * munmap happens when the last reference in any thread is collected.
   */
  mmapShared(fd: number, size: number, offset: number): SharedArrayBuffer;
  /**
   * Releases the file pages behind a buffer from {@link mmapShared} at once:
   * the whole range is replaced in place by private anonymous memory
   * (MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE). Views that are
   * still reachable in any thread then read zeros and write into memory nobody
   * reads, instead of faulting; the address range itself is freed when the
   * last reference is collected, as before. Returns false when the buffer was
   * already retired; TypeError for a buffer mmapShared did not make.
   */
  retireMapping(buffer: SharedArrayBuffer): boolean;
  /**
   * What descriptor `fd` is, read without changing it: fstat, fstatfs, the
   * access mode and the /proc/self/fd link. src/vhost-user/fds.ts classifies it.
   */
  fdInfo(fd: number): FdFacts;

  // eventfd. Created EFD_NONBLOCK | EFD_CLOEXEC (or blocking with nonBlocking false: tests only).
  eventfd(initval: number, nonBlocking?: boolean): number;
  /** Returns the counter (and resets it), or 0 when it was 0 (EAGAIN). */
  eventfdRead(fd: number): number;
  eventfdWrite(fd: number, value: number): void;

  FdWatcher: new (fd: number, callback: (events: number) => void) => FdWatcher;

  // Block I/O.
  BufferTable: new () => BufferTable;
  AioContext: new (depth: number, eventfd: number, maxIovs: number) => AioContext;
  /** An NBD client for up to `depth` ops in flight and `maxIovs` iovecs per submit. */
  NbdClient: new (
    depth: number,
    maxIovs: number,
  ) => NbdClient;
  /** Synchronous preadv/pwritev over iovecs of a BufferTable (baseline engines). */
  preadv(
    fd: number,
    table: BufferTable,
    iovs: Float64Array,
    firstIov: number,
    iovCount: number,
    offset: number,
  ): number;
  pwritev(
    fd: number,
    table: BufferTable,
    iovs: Float64Array,
    firstIov: number,
    iovCount: number,
    offset: number,
  ): number;
  /** fdatasync on the libuv threadpool; callback(err, 0) on this thread's loop. */
  fdatasyncAsync(fd: number, callback: (err: Error | null, result: number) => void): void;
  /** fallocate on the libuv threadpool; callback(err, 0) on this thread's loop. */
  fallocateAsync(
    fd: number,
    mode: number,
    offset: number,
    length: number,
    callback: (err: Error | null, result: number) => void,
  ): void;
  /** O_DIRECT alignment under an open fd: BLKSSZGET for block devices, statx DIO alignment (else 512) for files; at most 4096. */
  blockSize(fd: number): number;
  /**
   * Extents the file under `fd` maps (FS_IOC_FIEMAP, counting only), on the
   * libuv threadpool; callback(err, extents) on this thread's loop, err where
   * there is no FIEMAP (EOPNOTSUPP) or `fd` is bad.
   */
  extentCountAsync(fd: number, callback: (err: Error | null, extents: number) => void): void;
  /**
   * fcntl(F_OFD_SETLK) on bytes [start, start + length): `type` 1 read (shared),
   * 2 write (exclusive), 0 unlock. Never waits: a conflicting lock throws EAGAIN.
   */
  ofdSetLock(fd: number, type: 0 | 1 | 2, start: number, length: number): void;
  /**
   * fcntl(F_OFD_GETLK): 1 or 2 when a read or write lock held through another
   * open file description would conflict with taking `type` on the range; 0 when none.
   */
  ofdTestLock(fd: number, type: 1 | 2, start: number, length: number): 0 | 1 | 2;

  // Real-time knobs. tid 0 means the calling thread.
  gettid(): number;
  schedSetScheduler(tid: number, policy: number, priority: number): void;
  schedGetScheduler(tid: number): SchedParams;
  schedGetPriorityMax(policy: number): number;
  schedSetAffinity(tid: number, cpus: number[]): void;
  schedGetAffinity(tid: number): number[];
  /** setpriority(PRIO_PROCESS, tid, nice). */
  setNice(tid: number, nice: number): void;
  mlockall(flags: number): void;
  /**
   * munlockall. V8 aborts the process when it tears down a thread while memory
   * is locked, so whoever called mlockall calls this before any thread ends.
   */
  munlockall(): void;
  /**
   * mlock of one SharedArrayBuffer's pages (guest RAM). Unlike mlockall this
   * leaves the JS heap alone, which V8 must be able to madvise away.
   */
  mlockBuffer(buffer: SharedArrayBuffer): void;
  /** sched_setattr(tid, SCHED_DEADLINE, runtime, deadline, period in ns); the kernel validates. */
  schedSetAttrDeadline(tid: number, runtimeNs: number, deadlineNs: number, periodNs: number): void;
  /** sched_getattr: the thread's policy and (SCHED_DEADLINE) runtime, deadline, period in ns. */
  schedGetAttr(tid: number): SchedAttr;
  /** ioprio_set(IOPRIO_WHO_PROCESS, tid, ioprio): one thread's I/O priority (tid 0: the caller). */
  ioprioSet(tid: number, ioprio: number): void;
  /** ioprio_get(IOPRIO_WHO_PROCESS, tid). */
  ioprioGet(tid: number): number;

  // --- io_uring (issue 3) ---
  /**
   * An io_uring (liburing) with AioContext's shape. `sqpollIdleMs` -1 means no
   * SQPOLL; otherwise a kernel thread polls the SQ ring and sleeps after that
   * many idle milliseconds. Throws the SystemError of io_uring_setup (EPERM,
   * EINVAL, ENOMEM...) when the kernel refuses.
   */
  UringContext: new (
    depth: number,
    eventfd: number,
    maxIovs: number,
    sqpollIdleMs: number,
  ) => {
    /**
     * Checks all `count` ops (AIO_OP layout, URING_CMD opcodes; FALLOCATE
     * carries mode and length in the firstIov and iovCount fields), builds their
     * iovecs into native memory, queues one SQE each and submits them with one
     * io_uring_enter. Returns count: an op the kernel refuses completes with
     * -errno. RangeError before anything is queued when an entry is invalid.
     * `ioprios`, when given, holds one I/O priority per op (sqe->ioprio; 0: none).
     */
    submit(
      table: BufferTable,
      ops: Float64Array,
      count: number,
      iovs: Float64Array,
      ioprios?: Uint16Array,
    ): number;
    /** Reaps up to `max` CQEs without blocking into [userData, result] pairs. */
    getEvents(out: Float64Array, max: number): number;
    /** Unregisters the eventfd and tears the ring down. Idempotent. */
    destroy(): void;
    /** True when the ring was set up with IORING_SETUP_SQPOLL. */
    readonly sqpoll: boolean;
  };

  // --- net: TAP devices (issue 5) ---
  /**
   * The network switch's batched frame copy (issue 13): `memcpy` between
   * Uint8Array views (guest RAM, packet rings) that `setViews` names by index,
   * one native call per batch instead of a `TypedArray.set` per frame.
   */
  FrameCopier: new () => FrameCopier;
  /** The switch's native per-batch frame loop (issue 13); see {@link NetBurst}. */
  NetBurst: new () => NetBurst;
  /**
   * Opens (creating it if absent) the TAP device `name` (empty: the kernel picks
   * one) with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, sets the virtio-net header size
   * (TUNSETVNETHDRSZ, 10 or 12) and the offloads the kernel may send us
   * (TUNSETOFFLOAD, TUN_F_* bits; 0: fully checksummed, unsegmented frames), and
   * brings the link up (SIOCSIFFLAGS). The fd is O_NONBLOCK | O_CLOEXEC.
   */
  tapOpen(name: string, vnetHdrSize: number, offload: number): { fd: number; name: string };
  /**
   * One readv: the virtio-net header into `hdr`, the frame into
   * `data[offset, offset + maxLength)`. Returns the frame's length (without the
   * header), or -1 when nothing is pending (EAGAIN).
   */
  tapRead(fd: number, hdr: Uint8Array, data: Uint8Array, offset: number, maxLength: number): number;
  /**
   * One writev of one frame: `hdr`, then `data[off1, off1 + len1)` and
   * `data[off2, off2 + len2)` (len2 0: one part). Returns bytes written, header
   * included, or -1 when the device's queue is full (EAGAIN).
   */
  tapWrite(
    fd: number,
    hdr: Uint8Array,
    data: Uint8Array,
    off1: number,
    len1: number,
    off2: number,
    len2: number,
  ): number;

  // --- guest memory that shrinks under the daemon (native/sigbus.cc, issue 11) ---
  /**
   * An Int32Array over the process-wide count of SIGBUS faults answered in
   * guest memory. Every {@link mmapShared} mapping is registered with the
   * SIGBUS handler: a fault inside one (the front end truncated the file)
   * maps private zero pages over the rest of that mapping, counts, and the
   * access is retried and reads zeros. Read it with Atomics.load; any thread.
   */
  guestFaultCounter(): Int32Array;
  /** Faults answered in the mapping of `buffer` (an mmapShared buffer) since it was made; 0 for other buffers. */
  guestFaults(buffer: SharedArrayBuffer): number;
  /** How many mappings the SIGBUS handler knows (mmapShared buffers not yet collected, retired ones included). */
  guestRangeCount(): number;
}

const here = dirname(fileURLToPath(import.meta.url));
// Compiled code runs from dist/src/, sources from src/ under vitest: both are
// found by walking up to the folder that holds native/.
const root = here.includes('/dist/') ? join(here, '..', '..') : join(here, '..');
const require = createRequire(import.meta.url);

const ADDON_PATH = join(root, 'native', 'build', 'Release', 'vhost_rt.node');

/**
 * Loads the addon. When it cannot be loaded (not built, or built for another
 * Node), what does not need it — `vhost-rt --help`, `--version`, option
 * parsing — still works: every use of the binding then throws one clear
 * error naming the file, the cause and how to build it.
 */
function load(): NativeBinding {
  let binding: NativeBinding;
  try {
    binding = require(ADDON_PATH) as NativeBinding;
  } catch (err) {
    return unavailable(err);
  }
  binding.setErrorClass(SystemError);
  return binding;
}

function unavailable(cause: unknown): NativeBinding {
  const message =
    `the native addon ${ADDON_PATH} cannot be loaded (${(cause as Error).message.split('\n')[0]}); ` +
    'build it with `npm run build:native` (Debian: apt-get install g++ make python3 libaio-dev liburing-dev libnbd-dev)';
  return new Proxy({} as NativeBinding, {
    get(_target, property) {
      // `then` is probed by await/Promise.resolve: answer "not a thenable" instead of throwing.
      if (property === 'then') return undefined;
      throw new VhostRtError('ERR_NATIVE_UNAVAILABLE', message, { cause });
    },
  });
}

/** The addon, loaded once per thread. */
export const native: NativeBinding = load();

/** Project root (the folder holding package.json), for locating compiled workers. */
export const projectRoot = root;
