# Sourced by the ingest benchmarks: wait_for_quiet_inodes DIR waits until
# creating a file in DIR costs what it costs on a quiet filesystem.
#
# ext4 without a journal (this development machine's root filesystem)
# does not reuse an inode freed in the last 60 s (360 s while its inode
# table block is dirty): every create scans past each such inode of its
# block group (`recently_deleted`, a buffer look-up per inode). After a
# benchmark's cleanup or any large `rm -rf`, a create cost 100–450 µs of
# CPU instead of ~20 (measured 2026-12-07 with a loop of `open(O_CREAT)`;
# `perf` put half of it in `recently_deleted` and `find_get_block_common`),
# and every peer of a run started in that window paid it: the receivers
# create a file per instance. A journaled ext4 or XFS does not scan so.
#
# The probe creates 64 empty files under DIR/.inode-probe and keeps them
# (deleting them would start the window again); it retries every 15 s for
# at most INODE_WAIT_MAX seconds (default 420), then goes on with a
# warning. It prints how long it waited when it did.
INODE_PROBE_LIMIT_US=${INODE_PROBE_LIMIT_US:-40}
INODE_WAIT_MAX=${INODE_WAIT_MAX:-420}

# CPU µs per create of 64 files in a new folder below $1.
inode_probe() {
  python3 - "$1" <<'PY'
import os, sys, tempfile, time
base = os.path.join(sys.argv[1], ".inode-probe")
os.makedirs(base, exist_ok=True)
d = tempfile.mkdtemp(dir=base)
t = time.process_time()
for i in range(64):
    os.close(os.open(os.path.join(d, str(i)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
print(round((time.process_time() - t) * 1e6 / 64))
PY
}

wait_for_quiet_inodes() {
  local dir=$1 waited=0 cost
  mkdir -p "$dir"
  while cost=$(inode_probe "$dir"); ((cost > INODE_PROBE_LIMIT_US)); do
    if ((waited >= INODE_WAIT_MAX)); then
      echo "WARNING: a create in $dir still costs ${cost} µs of CPU after ${waited} s (limit ${INODE_PROBE_LIMIT_US}): measuring anyway" >&2
      return 0
    fi
    sleep 15
    waited=$((waited + 15))
  done
  ((waited == 0)) || echo "waited ${waited} s for recently freed inodes to age (a create now costs ${cost} µs)" >&2
}
