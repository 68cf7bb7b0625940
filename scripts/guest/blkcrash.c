/*
 * blkcrash: the guest side of test/e2e/blk-crash-reconnect.test.ts (issue 9).
 * Built static (gcc -static) by the test and put into the guest as /bin/blkcrash.
 *
 *   blkcrash DEV BLOCKS GENERATIONS DEPTH
 *
 * Layout of DEV in 4 KiB blocks: [0, BLOCKS) data, BLOCKS control (written by the
 * host), BLOCKS+1 phase marker (written here), [BLOCKS+8, BLOCKS+72) discard area.
 *
 * Phase W: writes every data block GENERATIONS times, generation g = 1..G, with
 * O_DIRECT through Linux AIO (raw io_setup/io_submit/io_getevents system calls) at
 * DEPTH requests in flight. Each step reads the block back first and checks that it
 * holds exactly the last generation acknowledged for it (a replayed earlier write that
 * overwrote a later one shows up here), then writes the next generation; every 8th
 * step also queues an fdatasync (IOCB_CMD_FDSYNC: a virtio-blk FLUSH) among the
 * writes, as a journaling file system would. Every block
 * is self-describing: magic, block number, generation, sequence number, a pattern
 * derived from them and an FNV-1a checksum. Prints "A <block> <gen>" for every
 * acknowledged write, "E ..." for an I/O error, "BAD ..." for a wrong read-back.
 * Phase F: writes "PHASE F" into the marker block, then calls fdatasync (a virtio-blk
 * FLUSH each) until the host writes "STOP F" into the control block.
 * Phase D: the same with BLKDISCARD of 4 KiB ranges in the discard area ("STOP D").
 * Last: reads every data block once more and checks it holds generation G.
 * Exits 0 when nothing failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BS 4096
#define MAGIC 0x56525449u /* "VRTI" */
#define MAX_DEPTH 64

static int fd;
static long blocks, gens, depth;
static aio_context_t ctx;
static long failures;

struct slot {
  struct iocb cb;
  unsigned char *buf;
  long block;
  long gen;    /* generation being written (reads: the one expected back) */
  int reading; /* 1: the read-back before the write */
  int syncing; /* 1: an fdatasync, no block */
  int busy;
};

static struct slot slots[MAX_DEPTH];
static long *acked; /* last acknowledged generation per block */
static int *busy_block;
static long seq_no;

static uint32_t fnv1a(const unsigned char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
  return h;
}

static void fill_block(unsigned char *b, long block, long gen, long seq) {
  uint32_t *w = (uint32_t *)b;
  uint32_t x = (uint32_t)(block * 2654435761u) ^ (uint32_t)(gen * 40503u) ^ 0x9e3779b9u;
  w[0] = MAGIC;
  w[1] = (uint32_t)block;
  w[2] = (uint32_t)gen;
  w[3] = (uint32_t)seq;
  for (int i = 4; i < BS / 4 - 1; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    w[i] = x;
  }
  w[BS / 4 - 1] = fnv1a(b, BS - 4);
}

/* The generation block `block` holds, 0 for a never-written (zero) block, -1 if corrupt. */
static long block_gen(const unsigned char *b, long block) {
  const uint32_t *w = (const uint32_t *)b;
  int zero = 1;
  for (int i = 0; i < BS / 4; i++) if (w[i] != 0) { zero = 0; break; }
  if (zero) return 0;
  if (w[0] != MAGIC || w[1] != (uint32_t)block || w[BS / 4 - 1] != fnv1a(b, BS - 4)) return -1;
  unsigned char want[BS];
  fill_block(want, block, w[2], w[3]);
  return memcmp(want, b, BS) == 0 ? (long)w[2] : -1;
}

static void submit(struct slot *s) {
  struct iocb *list[1] = {&s->cb};
  memset(&s->cb, 0, sizeof s->cb);
  s->cb.aio_fildes = fd;
  s->cb.aio_buf = (uint64_t)(uintptr_t)s->buf;
  s->cb.aio_nbytes = BS;
  s->cb.aio_offset = (int64_t)s->block * BS;
  s->cb.aio_data = (uint64_t)(uintptr_t)s;
  if (s->syncing) {
    s->cb.aio_lio_opcode = IOCB_CMD_FDSYNC;
    s->cb.aio_buf = 0;
    s->cb.aio_nbytes = 0;
    s->cb.aio_offset = 0;
  } else if (s->reading) {
    s->cb.aio_lio_opcode = IOCB_CMD_PREAD;
  } else {
    s->cb.aio_lio_opcode = IOCB_CMD_PWRITE;
    fill_block(s->buf, s->block, s->gen, ++seq_no);
  }
  for (;;) {
    long r = syscall(SYS_io_submit, ctx, 1, list);
    if (r == 1) break;
    if (r < 0 && errno == EAGAIN) continue;
    printf("E submit %ld %ld\n", s->block, r < 0 ? -errno : r);
    exit(3);
  }
  s->busy = 1;
}

/* One completion: a read-back is checked and followed by the write; a write is acknowledged. */
static void complete(struct slot *s, long res) {
  if (s->syncing) {
    if (res != 0) {
      printf("E fdsync %ld\n", res);
      failures++;
    }
    s->syncing = 0;
    s->busy = 0;
    return;
  }
  if (res != BS) {
    printf("E %s %ld %ld\n", s->reading ? "read" : "write", s->block, res);
    failures++;
    s->busy = 0;
    busy_block[s->block] = 0;
    return;
  }
  if (s->reading) {
    long got = block_gen(s->buf, s->block);
    if (got != acked[s->block]) {
      printf("BAD %ld expected %ld got %ld\n", s->block, acked[s->block], got);
      failures++;
    }
    s->reading = 0;
    submit(s);
    return;
  }
  acked[s->block] = s->gen;
  printf("A %ld %ld\n", s->block, s->gen);
  s->busy = 0;
  busy_block[s->block] = 0;
}

static int reap(int min) {
  struct io_event ev[MAX_DEPTH];
  long n;
  do n = syscall(SYS_io_getevents, ctx, min, MAX_DEPTH, ev, NULL);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    perror("io_getevents");
    exit(3);
  }
  for (long i = 0; i < n; i++) complete((struct slot *)(uintptr_t)ev[i].data, (long)ev[i].res);
  return (int)n;
}

static struct slot *free_slot(void) {
  for (;;) {
    for (long i = 0; i < depth; i++) if (!slots[i].busy) return &slots[i];
    reap(1);
  }
}

static void phase_writes(void) {
  for (long step = 0; step < blocks * gens; step++) {
    long block = step % blocks, gen = step / blocks + 1;
    /* One request per block at a time: its previous write must be acknowledged first. */
    while (busy_block[block]) reap(1);
    struct slot *s = free_slot();
    s->block = block;
    s->gen = gen;
    s->reading = 1;
    busy_block[block] = 1;
    submit(s);
    if (step % 8 == 7) {
      struct slot *f = free_slot();
      f->syncing = 1;
      submit(f);
    }
  }
  for (;;) {
    int any = 0;
    for (long i = 0; i < depth; i++) any |= slots[i].busy;
    if (!any) break;
    reap(1);
  }
  printf("PHASE W DONE failures=%ld\n", failures);
}

static void pwrite_block(long block, const char *text) {
  unsigned char *b = slots[0].buf;
  memset(b, 0, BS);
  memcpy(b, text, strlen(text));
  if (pwrite(fd, b, BS, block * BS) != BS) {
    printf("E marker %ld %d\n", block, errno);
    failures++;
  }
}

static int stop_requested(const char *word) {
  unsigned char *b = slots[1].buf;
  if (pread(fd, b, BS, blocks * BS) != BS) {
    printf("E control %d\n", errno);
    failures++;
    return 1;
  }
  return memcmp(b, word, strlen(word)) == 0;
}

static void phase_flush(void) {
  long n = 0, bad = 0;
  pwrite_block(blocks + 1, "PHASE F");
  do {
    for (int i = 0; i < 8; i++, n++)
      if (fdatasync(fd) != 0) {
        printf("E flush %d\n", errno);
        bad++;
      }
  } while (!stop_requested("STOP F"));
  failures += bad;
  printf("PHASE F DONE flushes=%ld failures=%ld\n", n, bad);
}

static void phase_discard(void) {
  long n = 0, bad = 0;
  pwrite_block(blocks + 1, "PHASE D");
  do {
    for (int i = 0; i < 8; i++, n++) {
      uint64_t range[2] = {(uint64_t)(blocks + 8 + n % 64) * BS, BS};
      if (ioctl(fd, BLKDISCARD, range) != 0) {
        printf("E discard %d\n", errno);
        bad++;
      }
    }
  } while (!stop_requested("STOP D"));
  failures += bad;
  printf("PHASE D DONE discards=%ld failures=%ld\n", n, bad);
}

static void verify(void) {
  long bad = 0;
  for (long b = 0; b < blocks; b++) {
    if (pread(fd, slots[0].buf, BS, b * BS) != BS) {
      printf("E verify %ld %d\n", b, errno);
      bad++;
      continue;
    }
    long got = block_gen(slots[0].buf, b);
    if (got != gens) {
      printf("BAD %ld expected %ld got %ld\n", b, gens, got);
      bad++;
    }
  }
  failures += bad;
  printf("VERIFY %s\n", bad == 0 ? "OK" : "FAILED");
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: blkcrash DEV BLOCKS GENERATIONS DEPTH\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  blocks = atol(argv[2]);
  gens = atol(argv[3]);
  depth = atol(argv[4]);
  if (blocks < 1 || gens < 1 || depth < 2 || depth > MAX_DEPTH) return 2;
  fd = open(argv[1], O_RDWR | O_DIRECT);
  if (fd < 0) {
    perror("open");
    return 2;
  }
  acked = calloc(blocks, sizeof *acked);
  busy_block = calloc(blocks, sizeof *busy_block);
  for (long i = 0; i < depth; i++)
    if (posix_memalign((void **)&slots[i].buf, BS, BS) != 0) return 2;
  if (syscall(SYS_io_setup, depth, &ctx) != 0) {
    perror("io_setup");
    return 2;
  }
  printf("BLKCRASH START blocks=%ld gens=%ld depth=%ld\n", blocks, gens, depth);
  phase_writes();
  phase_flush();
  phase_discard();
  verify();
  printf("BLKCRASH END failures=%ld\n", failures);
  return failures == 0 ? 0 : 1;
}
