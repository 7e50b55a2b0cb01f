#!/usr/bin/env python3
"""The large deployment's benchmarks (issue: the large deployment), on one
machine, through deploy/large/cluster.sh (PostgreSQL, nodes on 127.0.0.1-3,
HAProxy in front):

  ingest    eight storescu associations through the balancer, one node
            against three, interleaved runs, a fresh cluster per run; the
            CPU seconds of the nodes, PostgreSQL, HAProxy and the senders
            beside each rate show where two cores saturate. Every run is
            checked: the index holds exactly the corpus.
  find      study-level C-FIND latency (one association per query, as a
            workstation does), through the balancer against straight to a
            node, interleaved, p50/p99.
  takeover  kill -9 of the node running a work item (a migrate_study held
            at a pause point), then the time until another node holds it;
            repeated (the victim restarted each time), per lease setting.

usage: benches/cluster.py [--runs N] [--corpus DIR] [--finds N]
                          [--kills N] [--leases 5,10] [--only ingest,find,takeover]
       benches/cluster.py --smoke   (tiny sizes, every check still made)

Needs: DCMTK, haproxy, PostgreSQL 15 (Debian), python3 with pydicom,
pynetdicom and numpy (the corpus generator). Builds the release binary
unless IMAGESERVER_BIN names one. Prints a table per benchmark and writes
JSON to $BENCH_TMPDIR (default /tmp).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(os.environ.get("BENCH_DIR", ROOT.parent / "shared" / "bench"))
TMP = Path(os.environ.get("BENCH_TMPDIR", "/tmp"))
TICK = os.sysconf("SC_CLK_TCK")
BENCH_AE = "BENCHSCU"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def binary():
    if os.environ.get("IMAGESERVER_BIN"):
        return os.environ["IMAGESERVER_BIN"]
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "imageserver"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "release" / "imageserver")


class Cluster:
    """A cluster started by cluster.sh, stopped (by the script, which kills
    only what it started) on exit."""

    def __init__(self, nodes, lease=10, extra="", env=None):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=TMP))
        self.dir.chmod(0o755)  # PostgreSQL runs as its own user
        extra_file = self.dir / "extra.toml"
        extra_file.write_text(
            f'[[devices]]\nae_title = "{BENCH_AE}"\nhost = "127.0.0.1"\nport = 104\n' + extra
        )
        self.env = dict(os.environ, CLUSTER_NODES=str(nodes), CLUSTER_LEASE_SECS=str(lease),
                        CLUSTER_EXTRA=str(extra_file), IMAGESERVER_LOG="warn", **(env or {}))
        started = subprocess.run(["bash", str(ROOT / "deploy/large/cluster.sh"), "start", str(self.dir / "c")],
                                 env=self.env, capture_output=True, text=True)
        if started.returncode != 0:
            self.stop()
            sys.exit(f"the cluster did not start:\n{started.stderr[-3000:]}")
        out = started.stdout
        self.values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        host, port = self.values["BALANCER"].split(":")
        self.balancer = (host, int(port))
        self.nodes = [(h, int(p)) for h, p in (n.split(":") for n in self.values["NODES"].split(","))]
        self.pids = [int(p) for p in self.values["NODE_PIDS"].split(",")]
        self.haproxy = int(self.values["HAPROXY_PID"])

    def config(self, n):
        return str(self.dir / "c" / f"node{n + 1}.toml")

    def psql(self, sql):
        return run(["psql", "-qtAX", self.values["DB"], "-c", sql]).stdout.strip()

    def postmaster(self):
        return int((self.dir / "c" / "pg" / "data" / "postmaster.pid").read_text().split()[0])

    def stop(self):
        subprocess.run(["bash", str(ROOT / "deploy/large/cluster.sh"), "stop", str(self.dir / "c")],
                       env=self.env, capture_output=True)
        subprocess.run(["rm", "-rf", str(self.dir)])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def cpu_seconds(pid, children_too=False):
    """utime+stime of a live process (and its reaped children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children_too:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def postgres_cpu(postmaster):
    """The postmaster, its reaped backends, and its live ones."""
    total = cpu_seconds(postmaster, children_too=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def corpus_files(path):
    files = sorted(str(p) for p in Path(path).rglob("*.dcm"))
    if not files:
        sys.exit(f"no .dcm files under {path}")
    return files


def ensure_corpus(smoke):
    if smoke:
        out = TMP / "imageserver_corpus_cluster_smoke"
        args = ["--tiny", "--studies", "4", "--series-per-study", "1", "--instances-per-series", "4", "--seed", "7"]
    else:
        out = TMP / "imageserver_corpus_tiny2000"
        args = ["--tiny", "--studies", "40", "--series-per-study", "2", "--instances-per-series", "25", "--seed", "2"]
    if not out.is_dir():
        run([sys.executable, str(BENCH / "gen_corpus.py"), "--out", str(out), *args])
    return out


def ingest_once(nodes, files, assocs):
    with Cluster(nodes) as cluster:
        chunks = [files[i::assocs] for i in range(assocs)]
        before = {
            "nodes": sum(cpu_seconds(p) for p in cluster.pids),
            "postgres": postgres_cpu(cluster.postmaster()),
            "haproxy": cpu_seconds(cluster.haproxy),
        }
        env = dict(os.environ, TCP_NODELAY="1")
        host, port = cluster.balancer
        started = time.monotonic()
        procs = [subprocess.Popen(["/usr/bin/storescu", "-aet", BENCH_AE, "-aec", cluster.values["AE"],
                                   host, str(port), *chunk], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for chunk in chunks if chunk]
        senders_cpu, failed = 0.0, []
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            senders_cpu += usage.ru_utime + usage.ru_stime
            if proc.returncode != 0:
                failed.append(proc.stderr.read().decode(errors="replace")[-500:])
        elapsed = time.monotonic() - started
        cpu = {
            "nodes": sum(cpu_seconds(p) for p in cluster.pids) - before["nodes"],
            "postgres": postgres_cpu(cluster.postmaster()) - before["postgres"],
            "haproxy": cpu_seconds(cluster.haproxy) - before["haproxy"],
            "senders": senders_cpu,
        }
        stored = int(cluster.psql("SELECT count(*) FROM instance"))
        if failed or stored != len(files):
            sys.exit(f"ingest run with {nodes} node(s) is wrong: {stored} of {len(files)} indexed; "
                     f"failed senders: {failed}")
        return {"nodes": nodes, "instances": len(files), "seconds": elapsed,
                "rate": len(files) / elapsed, "cpu": cpu}


def bench_ingest(args, files):
    results = {1: [], 3: []}
    for r in range(args.runs):
        for nodes in (1, 3):
            result = ingest_once(nodes, files, 8)
            results[nodes].append(result)
            print(f"  run {r + 1}: {nodes} node(s): {result['rate']:.0f} inst/s "
                  f"(cpu s: " + ", ".join(f"{k} {v:.1f}" for k, v in result["cpu"].items()) + ")",
                  flush=True)
    median = {n: statistics.median(x["rate"] for x in rs) for n, rs in results.items()}
    print(f"\ningest through HAProxy, 8 associations, {len(files)} instances, medians of {args.runs}:")
    print("| nodes | inst/s | ratio to 1 node | CPU s per 1000 inst: nodes / postgres / haproxy / senders |")
    print("|---|---|---|---|")
    for nodes, rs in results.items():
        cpu = {k: statistics.median(x["cpu"][k] for x in rs) * 1000 / len(files) for k in rs[0]["cpu"]}
        print(f"| {nodes} | {median[nodes]:.0f} | {median[nodes] / median[1]:.2f} | "
              + " / ".join(f"{v:.2f}" for v in cpu.values()) + " |")
    return results


def find_latencies(addr, ae, count):
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientName = "*"
    query.NumberOfStudyRelatedInstances = ""
    client = AE(ae_title=BENCH_AE)
    client.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    times, answers = [], None
    for _ in range(count):
        started = time.perf_counter()
        assoc = client.associate(addr[0], addr[1], ae_title=ae)
        if not assoc.is_established:
            sys.exit(f"no association with {addr}")
        matches = [ds.StudyInstanceUID for status, ds in
                   assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                   if status and status.Status in (0xFF00, 0xFF01)]
        assoc.release()
        times.append((time.perf_counter() - started) * 1000)
        if answers is None:
            answers = sorted(matches)
        elif sorted(matches) != answers:
            sys.exit(f"C-FIND through {addr} answered differently")
    return times, answers


def bench_find(args, files):
    with Cluster(3) as cluster:
        host, port = cluster.balancer
        env = dict(os.environ, TCP_NODELAY="1")
        run(["/usr/bin/storescu", "-aet", BENCH_AE, "-aec", cluster.values["AE"], host, str(port), *files], env=env)
        ae = cluster.values["AE"]
        through, direct, answer_sets = [], [], []
        rounds = 10
        for _ in range(rounds):
            for target, sink in ((cluster.balancer, through), (cluster.nodes[0], direct)):
                times, answers = find_latencies(target, ae, max(1, args.finds // rounds))
                sink.extend(times)
                answer_sets.append(answers)
        if any(a != answer_sets[0] for a in answer_sets) or not answer_sets[0]:
            sys.exit("C-FIND answers differ between the balancer and the node, or are empty")

    def pct(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

    print(f"\nC-FIND (study level, one association per query, {len(answer_sets[0])} matches), "
          f"{len(through)} queries each, interleaved:")
    print("| path | p50 ms | p99 ms |")
    print("|---|---|---|")
    for name, xs in (("through HAProxy", through), ("straight to a node", direct)):
        print(f"| {name} | {pct(xs, 50):.2f} | {pct(xs, 99):.2f} |")
    print(f"ratio p50 balancer/direct: {pct(through, 50) / pct(direct, 50):.2f}")
    return {"through": through, "direct": direct}


def restart_node(cluster, n, binary_path):
    """Starts node n again with its configuration (same id); returns its pid."""
    log = open(cluster.dir / "c" / f"node{n + 1}.restart.log", "a")
    proc = subprocess.Popen([binary_path, "serve", "--config", cluster.config(n)],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            env=cluster.env, start_new_session=True)
    cluster.pids[n] = proc.pid
    return proc


def bench_takeover(args, files, binary_path):
    samples = {}
    for lease in args.leases:
        with tempfile.TemporaryDirectory(dir=TMP) as tier2:
            # Every takeover counts as a failure of the item (a poison-pill guard):
            # allow enough for the repeated kills.
            extra = (f"[[filesystems]]\npath = \"{tier2}\"\ntier = 2\n"
                     f"[workqueue.kinds.migrate_study]\nmax_failures = {args.kills + 5}\n")
            with Cluster(3, lease=lease, extra=extra,
                         env={"IMAGESERVER_FAULT_PAUSE_MIGRATION_AT": "copied"}) as cluster:
                host, port = cluster.balancer
                run(["/usr/bin/storescu", "-aet", BENCH_AE, "-aec", cluster.values["AE"],
                     host, str(port), files[0]])
                study = cluster.psql("SELECT study_uid FROM study LIMIT 1")
                run([binary_path, "study", "migrate", "--queue", "--config", cluster.config(0), study, "--to", tier2])
                restarted = []
                times = []
                try:
                    for kill in range(args.kills):
                        holder = wait_for_holder(cluster, exclude=None, bound=3 * lease + 30)
                        victim = cluster.pids.index(holder)
                        os.kill(holder, signal.SIGKILL)
                        killed_at = time.monotonic()
                        new_holder = wait_for_holder(cluster, exclude=holder, bound=3 * lease + 30)
                        times.append(time.monotonic() - killed_at)
                        print(f"  lease {lease} s: kill {kill + 1}: node{victim + 1} -> "
                              f"node{cluster.pids.index(new_holder) + 1} in {times[-1]:.2f} s", flush=True)
                        restarted.append(restart_node(cluster, victim, binary_path))
                        time.sleep(1)
                finally:
                    # The restarted nodes are this script's own children.
                    for proc in restarted:
                        if proc.poll() is None:
                            proc.kill()
                            proc.wait()
                samples[lease] = times
    print("\ntakeover: kill -9 of the node running a work item until another node runs it:")
    print("| lease_secs | kills | min s | median s | max s |")
    print("|---|---|---|---|---|")
    for lease, xs in samples.items():
        print(f"| {lease} | {len(xs)} | {min(xs):.2f} | {statistics.median(xs):.2f} | {max(xs):.2f} |")
    return samples


def wait_for_holder(cluster, exclude, bound):
    """The pid of the node whose engine holds the migrate_study item."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        holder = cluster.psql("SELECT processor_id FROM work_queue WHERE type = 'migrate_study' "
                              "AND status = 'in_progress'")
        if holder:
            pid = int(holder.split(":")[1])
            if pid != exclude and pid in cluster.pids:
                return pid
        time.sleep(0.05)
    rows = cluster.psql("SELECT id, type, status, processor_id, failure_count, failure_description "
                        "FROM work_queue")
    nodes = cluster.psql("SELECT * FROM node")
    logs = "".join(f"--- {p.name}\n" + p.read_text()[-1500:] for p in sorted((cluster.dir / "c").glob("node*.log")))
    sys.exit(f"no node took the work item within {bound} s (node pids {cluster.pids})\n"
             f"work_queue:\n{rows}\nnode:\n{nodes}\n{logs}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--corpus")
    parser.add_argument("--finds", type=int, default=200)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--leases", default="5,10")
    parser.add_argument("--only", default="ingest,find,takeover")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    args.leases = [int(x) for x in args.leases.split(",")]
    if args.smoke:
        args.runs, args.finds, args.kills, args.leases = 1, 10, 1, [3]
    binary_path = binary()
    os.environ["IMAGESERVER_BIN"] = binary_path
    files = corpus_files(args.corpus or ensure_corpus(args.smoke))
    print(f"imageserver {binary_path}; corpus {len(files)} files; {os.cpu_count()} cores")
    results = {}
    only = args.only.split(",")
    if "ingest" in only:
        results["ingest"] = bench_ingest(args, files)
    if "find" in only:
        results["find"] = bench_find(args, files)
    if "takeover" in only:
        results["takeover"] = bench_takeover(args, files, binary_path)
    out = TMP / f"cluster_bench_{int(time.time())}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
