#!/bin/bash
# Where device A's RT reads wait on a disk B floods (issue 14): the kernel's block tracepoints
# (block_rq_insert / issue / complete, in a private ftrace instance) split each of A's reads
# into insert→issue (the I/O scheduler and blk-mq's dispatch list) and issue→complete (the
# device), and count B's writes at the device when the read was issued. One vhost-rt process
# serves A (4k randread QD1, --ioprio rt:0) and B (1M write QD32) on two image files of the
# same disk, as bench/priority-inversion-shared-disk.ts does.
#
#   bash bench/priority-inversion-trace.sh [B's extra device options, e.g. ,no-rt-guard]
#
# Needs root (tracefs), a built tree (npm run build:ts) and python3. Run it on a quiet machine
# (/tmp/with-bench-lock here). It prints the two generators' summaries and the percentiles.
set -euo pipefail
cd "$(dirname "$0")/.."
B_EXTRA=${1:-}
W=$(mktemp -d /tmp/vhost-rt-pitrace.XXXXXX)
T=/sys/kernel/tracing/instances/vhost-rt-pitrace-$$
A_IMG=.cache/bench/image-1g.raw
B_IMG=.cache/bench/image-b-1g.raw
for img in "$A_IMG" "$B_IMG"; do
  [[ -f $img ]] || dd if=/dev/urandom of="$img" bs=1M count=1024 oflag=direct status=none
done
# The disk under the images, as the tracepoints name it (major,minor).
DEV=$(stat -c '%d' "$A_IMG")
DISK="$((DEV >> 8)),$((DEV & 255))"

cleanup() {
  [[ -d $T ]] && { echo 0 >"$T/tracing_on"; echo 0 >"$T/events/enable"; rmdir "$T"; }
  [[ -n ${D:-} ]] && kill "$D" 2>/dev/null && wait "$D" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

node dist/src/cli/main.js blk --aio linux-aio --quiet \
  --device "socket-path=$W/a.sock,image=$A_IMG,ioprio=rt:0" \
  --device "socket-path=$W/b.sock,image=$B_IMG$B_EXTRA" >"$W/daemon.log" 2>&1 &
D=$!
for _ in $(seq 100); do
  [[ $(grep -c 'ready:' "$W/daemon.log") -ge 2 ]] && break
  sleep 0.1
done

mkdir "$T"
echo 16384 >"$T/buffer_size_kb"
for e in block_rq_insert block_rq_issue block_rq_complete; do echo 1 >"$T/events/block/$e/enable"; done
node dist/bench/loadgen/cli.js --socket "$W/b.sock" --rw write --bs 1M --iodepth 32 --runtime 5 --ramp 0.5 >"$W/b.txt" &
G=$!
# B floods for a second before A starts, as in the experiment.
sleep 1.5
echo 1 >"$T/tracing_on"
node dist/bench/loadgen/cli.js --socket "$W/a.sock" --rw randread --bs 4k --iodepth 1 --runtime 2 --ramp 0.2 >"$W/a.txt"
echo 0 >"$T/tracing_on"
wait "$G"
echo "B: $(sed -n 2p "$W/b.txt")"
echo "A: $(sed -n 2,3p "$W/a.txt" | tr -s ' ' | paste -sd' ')"
python3 - "$T/trace" "$DISK" <<'EOF'
import re, sys
disk = sys.argv[2]
ev = re.compile(r'\s(\d+\.\d+): block_rq_(insert|issue|complete): ' + disk +
                r' (\w+) (?:\d+ )?\(\) (\d+) \+ \d+ (\S+)')
inserted, issued, writes, reads = {}, {}, set(), []
for line in open(sys.argv[1]):
    m = ev.search(line)
    if not m:
        continue
    t, kind, rwbs, sector, prio = float(m[1]), m[2], m[3], int(m[4]), m[5]
    rt_read = rwbs.startswith('R') and prio.startswith('rt')
    if kind == 'insert' and rt_read:
        inserted[sector] = t
    elif kind == 'issue':
        if rt_read:
            issued[sector] = (t, len(writes))
        elif rwbs.startswith('W'):
            writes.add(sector)
    elif kind == 'complete':
        writes.discard(sector)
        if rt_read and sector in issued:
            ti, at_device = issued.pop(sector)
            reads.append(((ti - inserted.pop(sector, ti)) * 1e6, (t - ti) * 1e6, at_device))
if not reads:
    sys.exit('no RT reads traced on ' + disk)
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]
print(f'{len(reads)} RT reads of A traced on {disk}:')
for name, i in (('insert->issue us', 0), ('issue->complete us', 1), ('writes at the device at issue', 2)):
    v = [r[i] for r in reads]
    print(f'  {name}: p50 {pct(v, .5):.0f}  p99 {pct(v, .99):.0f}  p99.9 {pct(v, .999):.0f}  max {max(v):.0f}')
EOF
