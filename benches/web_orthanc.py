#!/usr/bin/env python3
"""DICOMweb benchmark (issue 14): imageserver against Orthanc's DICOMweb
plugin (Debian `orthanc` + `orthanc-dicomweb`), same machine, same data,
both in one run.

Both servers are loaded with the same generated corpus by DCMTK storescu
(--load-jobs associations at once; every instance must be acknowledged, or
no figure is printed). Then, the requests alternating between the servers:
- QIDO-RS study searches: `studies?limit=100`, a PatientName prefix
  (`NAME007*`, one study in 500) and a StudyDate range (7 days of the 10
  years the studies spread over): p50/p99;
- WADO-RS series retrieve (`multipart/related; type="application/dicom"`,
  the whole answer read): MB/s over the large series; and C-GET of the same
  series from imageserver by getscu (received, not stored): MB/s;
- series metadata (`/studies/X/series/Y/metadata`) of a series of
  --metadata-series instances (default 1,000): p50/p99;
- frame retrieval (`/frames/1`, `multipart/related;
  type="application/octet-stream"`): p50/p99 on a single-frame 512x512 CT
  and on frame 1 and the middle frame of a --frames-frame instance;
- STOW-RS: --stow instances per batch size (--stow-batches, default 1 and
  20 instances a request) to each server, the batches alternating between
  them: instances/s; against C-STORE of as many (other) instances into
  imageserver by storescu over one association.
--phases picks some of qido,wado,metadata,frames,stow (stow alone loads
no corpus). --baseline BIN runs a second imageserver (e.g. main's build)
beside the first through every phase, for before/after ratios measured in
one run.
DCMTK's tools run with TCP_NODELAY=1 (Nagle off, as the HTTP client has it).
Each answer is checked (study and match counts, instance parts and bytes,
metadata entries, frame bytes, the STOW answer's referenced instances and a
search finding them all, every C-GET sub-operation received) before it is
timed: a server answering nothing cannot look fast. Any wrong answer ends
the run without figures.

usage: benches/web_orthanc.py [--studies N] [--large-series N] [--queries N]
       [--retrieves N] [--metadata-series N] [--frames N] [--stow N]
       [--stow-batches 1,20] [--phases LIST] [--load-jobs N]
       [--imageserver BIN] [--baseline BIN] [--keep] [--smoke]
--smoke: tiny sizes, every check made (a minute; the figures mean nothing).
Needs: DCMTK, orthanc, orthanc-dicomweb, python3 with pydicom, requests.
Binds only 127.0.0.1.
"""

import argparse
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import pydicom
import requests
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STORESCU = "/usr/bin/storescu"
GETSCU = "/usr/bin/getscu"
CT = "1.2.840.10008.5.1.4.1.1.2"
# DCMTK's tools leave Nagle's algorithm on unless told (the HTTP client,
# urllib3, turns it off): with it, each small write of a request or
# response waits for the peer's delayed ACK, ~40 ms, which made C-GET of a
# 512x512 series ~8x slower and every C-STORE slower than the servers are.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def instance(path, study, series, number, rows, columns, patient, frames=1, name=None, date="20240101"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = name or f"BENCH^{patient}"
    ds.PatientID = f"P{patient}"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyDate = date
    ds.StudyTime = "120000"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = b"".join(bytes((number + f + i) % 251 for i in range(256)) * (rows * columns * 2 // 256)
                                for f in range(frames))
    else:
        ds.PixelData = bytes((number + i) % 251 for i in range(256)) * (rows * columns * 2 // 256)
    ds.save_as(path, enforce_file_format=True)


# The one-instance studies' names and dates, so that a name prefix and a
# date range each select a known few of them: study n is NAMEkkk^n with
# kkk = n mod NAME_GROUPS, dated DATE_BASE + (n mod DATE_DAYS) days.
NAME_GROUPS = 500
DATE_BASE = datetime.date(2014, 1, 1)
DATE_DAYS = 3650
NAME_PREFIX = "NAME007"
DATE_RANGE = (datetime.date(2014, 1, 6), datetime.date(2014, 1, 12))


def study_name_date(n):
    return f"NAME{n % NAME_GROUPS:03d}^{n}", DATE_BASE + datetime.timedelta(days=n % DATE_DAYS)


def expected_matches(studies):
    """How many of the one-instance studies NAME_PREFIX* and DATE_RANGE match."""
    names = dates = 0
    for n in range(studies):
        name, date = study_name_date(n)
        names += name.startswith(NAME_PREFIX)
        dates += DATE_RANGE[0] <= date <= DATE_RANGE[1]
    return names, dates


def corpus(root, studies, large, metadata, frames, shards=1):
    """`studies` one-instance studies (64x64, in `shards` folders), one
    study whose series holds `large` 512x512 instances, one whose series
    holds `metadata` 64x64 instances and one multi-frame instance of
    `frames` 256x256 frames; returns (count, {name: (study, series[, instance])})."""
    for k in range(shards):
        os.makedirs(os.path.join(root, f"shard{k}"), exist_ok=True)
    for n in range(studies):
        name, date = study_name_date(n)
        instance(os.path.join(root, f"shard{n % shards}", f"s{n}.dcm"), generate_uid(), generate_uid(), 1, 64, 64, n,
                 name=name, date=date.strftime("%Y%m%d"))
    root = os.path.join(root, "shard0")
    uids = {}
    study, series = generate_uid(), generate_uid()
    for n in range(large):
        instance(os.path.join(root, f"large{n}.dcm"), study, series, n + 1, 512, 512, "LARGE")
    uids["large"] = (study, series, pydicom.dcmread(os.path.join(root, "large0.dcm")).SOPInstanceUID)
    uids["large_bytes"] = sum(os.path.getsize(os.path.join(root, f"large{n}.dcm")) for n in range(large))
    study, series = generate_uid(), generate_uid()
    for n in range(metadata):
        instance(os.path.join(root, f"meta{n}.dcm"), study, series, n + 1, 64, 64, "META")
    uids["metadata"] = (study, series)
    study, series = generate_uid(), generate_uid()
    path = os.path.join(root, "multiframe.dcm")
    instance(path, study, series, 1, 256, 256, "MULTIFRAME", frames=frames)
    uids["multiframe"] = (study, series, pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return studies + large + metadata + 1, uids


def stow_corpus(root, count, tag):
    """`count` 256x256 instances in studies of 10 (new UIDs); their paths."""
    os.makedirs(root, exist_ok=True)
    paths = []
    for n in range(count):
        if n % 10 == 0:
            study, series = generate_uid(), generate_uid()
        path = os.path.join(root, f"{tag}{n}.dcm")
        instance(path, study, series, n % 10 + 1, 256, 256, tag)
        paths.append(path)
    return paths


def wait_http(url, bound=60):
    deadline = time.time() + bound
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} did not answer within {bound} s")


def store(name, aet, port, folder, expected, log, jobs=1):
    """storescu of `folder` (its shard folders over `jobs` associations at
    once); every instance must be acknowledged."""
    started = time.time()
    shards = sorted(os.path.join(folder, d) for d in os.listdir(folder))
    groups = [shards[k::jobs] for k in range(jobs)] if jobs > 1 else [[folder]]
    running = []
    for k, group in enumerate(groups):
        out = open(f"{log}.{k}", "w")
        running.append((subprocess.Popen([STORESCU, "-v", "-xe", "+sd", "+r", "-aet", "BENCH", "-aec", aet,
                                          "127.0.0.1", str(port), *group], stdout=out, stderr=out, env=DCMTK_ENV), out))
    codes = []
    for proc, out in running:
        codes.append(proc.wait(timeout=3600))
        out.close()
    took = time.time() - started
    acknowledged = sum(open(f"{log}.{k}").read().count("Received Store Response (Success)")
                       for k in range(len(groups)))
    if any(codes) or acknowledged != expected:
        sys.exit(f"{name}: storescu exits {codes}, {acknowledged} of {expected} acknowledged: no figures ({log}.*)")
    print(f"load {name:<12} {expected} instances in {took:.1f} s: {expected / took:.0f} instances/s "
          f"({len(groups)} association(s) at once)")


def cget_series(port, study, series, expected, log):
    """getscu (C-GET, study root) of a series, received and not stored
    (`--ignore`, as the WADO-RS client keeps nothing either); returns the
    seconds it took. Every sub-operation must have completed."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run([GETSCU, "-v", "-S", "-aet", "BENCH", "-aec", "IMAGESERVER", "-pdu", "131072",
                             "--ignore", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
                             "-k", f"SeriesInstanceUID={series}", "127.0.0.1", str(port)],
                            stdout=out, stderr=out, env=DCMTK_ENV, timeout=600).returncode
    took = time.perf_counter() - t0
    text = open(log).read()
    received = text.count("Received C-STORE Request")
    if rc != 0 or received != expected:
        sys.exit(f"C-GET: getscu exit {rc}, {received} of {expected} instances received: no figures ({log})")
    return took


def multipart_parts(response):
    """The bodies of a multipart/related answer read whole."""
    boundary = [p.split("=", 1)[1].strip().strip('"') for p in response.headers["Content-Type"].split(";")
                if p.strip().lower().startswith("boundary=")][0].encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        body = chunk.partition(b"\r\n\r\n")[2]
        parts.append(body[:-2] if body.endswith(b"\r\n") else body)
    return parts


def stow_body(paths):
    boundary = "benchboundary7f3a"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + open(p, "rb").read() + b"\r\n" for p in paths)
    return body + b"--" + boundary.encode() + b"--\r\n", \
        f'multipart/related; type="application/dicom"; boundary={boundary}'


def stored_count(answer):
    """The instances a STOW-RS answer references (and whether any failed)."""
    data = answer.json() if answer.content else {}
    referenced = data.get("00081199", {}).get("Value", [])
    failed = data.get("00081198", {}).get("Value", [])
    return len(referenced), len(failed)


def series_bytes(url):
    """Reads a whole multipart answer; returns (bytes, parts)."""
    with requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'},
                      stream=True, timeout=600) as r:
        r.raise_for_status()
        boundary = [p.split("=", 1)[1].strip().strip('"') for p in r.headers["Content-Type"].split(";")
                    if p.strip().lower().startswith("boundary=")][0].encode()
        total, parts, tail = 0, 0, b""
        for chunk in r.iter_content(1 << 20):
            total += len(chunk)
            data = tail + chunk
            parts += data.count(b"--" + boundary) - tail.count(b"--" + boundary)
            tail = data[-(len(boundary) + 4):]
        return total, parts - 1  # the close delimiter


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def ratios(label, figures, higher_is_better):
    """`label` ratio lines: imageserver against orthanc and, when run,
    against the baseline binary (same run, same data)."""
    ours = figures["imageserver"]
    for other in ("orthanc", "baseline"):
        if other in figures:
            ratio = ours / figures[other] if higher_is_better else figures[other] / ours
            print(f"{label} ratio imageserver vs {other}: {ratio:.2f}"
                  f" ({'imageserver/' + other if higher_is_better else other + '/imageserver'})")


def alternate(servers, n):
    """The servers in an order that rotates with `n` (none always first)."""
    names = list(servers)
    k = n % len(names)
    return names[k:] + names[:k]


PHASES = ("qido", "wado", "metadata", "frames", "stow")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--large-series", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--retrieves", type=int, default=5)
    parser.add_argument("--metadata-series", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--frame-requests", type=int, default=200)
    parser.add_argument("--stow", type=int, default=300)
    parser.add_argument("--stow-batches", default="1,20")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"which of {','.join(PHASES)} to run (the corpus is loaded only for the others than stow)")
    parser.add_argument("--load-jobs", type=int, default=1,
                        help="storescu associations at once loading the corpus into each server")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--imageserver", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target")),
        "release", "imageserver"))
    parser.add_argument("--baseline", help="a second imageserver binary (e.g. main's) run beside the first, "
                                           "interleaved in every phase, for before/after ratios from one run")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.studies, args.large_series, args.queries, args.retrieves = 20, 3, 5, 1
        args.metadata_series, args.frames, args.frame_requests, args.stow = 12, 4, 5, 10
        args.stow_batches = "1,5"
    phases = set(args.phases.split(","))
    if phases - set(PHASES):
        sys.exit(f"unknown phases {phases - set(PHASES)}")
    batches = [int(b) for b in args.stow_batches.split(",")]
    binaries = {"imageserver": args.imageserver}
    if args.baseline:
        binaries["baseline"] = args.baseline
    for tool in (ORTHANC, PLUGIN, STORESCU, GETSCU, *binaries.values()):
        if not os.path.exists(tool):
            sys.exit(f"missing {tool}")
    work = tempfile.mkdtemp(prefix="imageserver-web-orthanc-")
    procs = []
    try:
        folder = os.path.join(work, "corpus")
        load = bool(phases - {"stow"})
        if load:
            expected, uids = corpus(folder, args.studies, args.large_series, args.metadata_series, args.frames,
                                    shards=max(1, args.load_jobs))
        else:
            expected, uids = 0, {}
        total_studies = args.studies + 3

        o_dicom, o_http = free_port(), free_port()
        ostore = os.path.join(work, "orthanc")
        os.makedirs(ostore)
        config = {"Name": "bench", "StorageDirectory": ostore, "IndexDirectory": ostore,
                  "StorageCompression": False, "HttpServerEnabled": True, "HttpPort": o_http,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "DicomServerEnabled": True, "DicomAet": "ORTHANC", "DicomPort": o_dicom,
                  "DicomCheckCalledAet": False, "Plugins": [PLUGIN],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        with open(os.path.join(work, "orthanc.json"), "w") as f:
            json.dump(config, f)
        procs.append(subprocess.Popen([ORTHANC, os.path.join(work, "orthanc.json")],
                                      stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "orthanc.log"), "w")))
        servers = {"orthanc": f"http://127.0.0.1:{o_http}/dicom-web"}
        dicom_ports = {"orthanc": ("ORTHANC", o_dicom)}
        for name, binary in binaries.items():
            i_dicom, i_http = free_port(), free_port()
            procs.append(subprocess.Popen(
                [binary, "serve", "--data", os.path.join(work, name), "--bind", "127.0.0.1",
                 "--port", str(i_dicom), "--http-port", str(i_http),
                 # A known device may retrieve (C-GET); no C-MOVE goes to it.
                 "--device", f"BENCH=127.0.0.1:{free_port()}"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{name}.log"), "w"),
                env={**os.environ, "RUST_LOG": "warn"}))
            servers[name] = f"http://127.0.0.1:{i_http}/dicom-web"
            dicom_ports[name] = ("IMAGESERVER", i_dicom)
        wait_http(f"http://127.0.0.1:{o_http}/system")
        for name in binaries:
            wait_http(servers[name] + "/studies?limit=1")
        print(f"{subprocess.run([ORTHANC, '--version'], capture_output=True, text=True).stdout.splitlines()[0]}"
              f" + DICOMweb plugin 1.7 (Debian); imageserver {args.imageserver}"
              + (f"; baseline {args.baseline}" if args.baseline else ""))
        if load:
            large_study, large_series, large_instance = uids["large"]
            print(f"corpus: {args.studies} one-instance 64x64 studies + a series of {args.large_series} 512x512 "
                  f"+ a series of {args.metadata_series} 64x64 + a {args.frames}-frame 256x256 instance")
            for name, (aet, port) in dicom_ports.items():
                store(name, aet, port, folder, expected, os.path.join(work, f"store_{name}.log"), args.load_jobs)

            # Correctness before timing.
            for name, base in servers.items():
                if total_studies <= 5000:
                    everything = requests.get(f"{base}/studies", params={"limit": total_studies + 10},
                                              timeout=600).json()
                    if len(everything) != total_studies:
                        sys.exit(f"{name} lists {len(everything)} studies, not {total_studies}: no figures")
                else:
                    # More than a search answers (max_query_results): the
                    # first and last studies sent are found instead (and
                    # every timed search's count is checked).
                    for patient in (0, args.studies - 1):
                        found = requests.get(f"{base}/studies", params={"PatientID": f"P{patient}"},
                                             timeout=600).json()
                        if len(found) != 1:
                            sys.exit(f"{name} finds {len(found)} studies of P{patient}, not 1: no figures")
                size, parts = series_bytes(f"{base}/studies/{large_study}/series/{large_series}")
                if parts != args.large_series:
                    sys.exit(f"{name} answered {parts} parts, not {args.large_series}: no figures")

        session = {name: requests.Session() for name in servers}
        if "qido" in phases:
            by_name, by_date = expected_matches(args.studies)
            # The query strings as written (Orthanc does not decode %2A
            # into the wildcard, so requests' escaping is not used).
            searches = [
                ("limit=100", min(100, total_studies)),
                (f"PatientName={NAME_PREFIX}*&limit=1000", by_name),
                (f"StudyDate={DATE_RANGE[0]:%Y%m%d}-{DATE_RANGE[1]:%Y%m%d}&limit=1000", by_date),
            ]
            for query, count in searches:
                label = f"studies?{query}"
                latencies = {name: [] for name in servers}
                for n in range(args.queries + 10):
                    for name in alternate(servers, n):
                        t0 = time.perf_counter()
                        answer = session[name].get(f"{servers[name]}/studies?{query}", timeout=60)
                        took = time.perf_counter() - t0
                        if answer.status_code != 200 or len(answer.json()) != count:
                            sys.exit(f"{name}: QIDO {label} answered {answer.status_code} with "
                                     f"{len(answer.json()) if answer.status_code == 200 else '-'} studies, "
                                     f"not {count}: no figures")
                        if n >= 10:
                            latencies[name].append(took * 1000)
                for name, values in latencies.items():
                    print(f"QIDO {label} ({count} matches of {total_studies} studies) {name:<12} "
                          f"p50 {percentile(values, 50):7.2f} ms  p99 {percentile(values, 99):7.2f} ms  "
                          f"({len(values)} queries)")
                ratios(f"QIDO {label} p50", {n: percentile(v, 50) for n, v in latencies.items()}, False)

        if "wado" in phases:
            # WADO-RS of the large series from every server, and C-GET
            # (getscu) of the same series from each imageserver, alternating.
            rates = {name: [] for name in servers}
            cget = {name: [] for name in binaries}
            for n in range(args.retrieves + 1):
                for name in alternate(servers, n):
                    t0 = time.perf_counter()
                    size, parts = series_bytes(f"{servers[name]}/studies/{large_study}/series/{large_series}")
                    took = time.perf_counter() - t0
                    if parts != args.large_series:
                        sys.exit(f"{name}: {parts} parts: no figures")
                    if n >= 1:
                        rates[name].append(size / took / 1e6)
                    if name in binaries:
                        took = cget_series(dicom_ports[name][1], large_study, large_series, args.large_series,
                                           os.path.join(work, f"cget_{name}.log"))
                        if n >= 1:
                            cget[name].append(uids["large_bytes"] / took / 1e6)
            for name, values in rates.items():
                print(f"WADO-RS series {name:<12} median {statistics.median(values):7.1f} MB/s "
                      f"({args.large_series} 512x512 instances, {args.retrieves} retrieves)")
            for name, values in cget.items():
                print(f"C-GET series (getscu --ignore, 1 association) {name:<12} median "
                      f"{statistics.median(values):7.1f} MB/s (the same series, {args.retrieves} retrieves)")
            medians = {n: statistics.median(v) for n, v in rates.items()}
            ratios("WADO-RS MB/s", medians, True)
            for name in binaries:
                print(f"WADO-RS / C-GET MB/s {name}: {medians[name] / statistics.median(cget[name]):.2f}")

        if "metadata" in phases:
            # Series metadata of the big series: every instance's entry (ours
            # come from StudyProcess's file, written after ingest: wait for it).
            meta_study, meta_series = uids["metadata"]
            meta_url = {name: f"{base}/studies/{meta_study}/series/{meta_series}/metadata"
                        for name, base in servers.items()}
            deadline = time.time() + 600
            for name, url in meta_url.items():
                while True:
                    r = requests.get(url, headers={"Accept": "application/dicom+json"}, timeout=120)
                    if r.status_code == 200 and len(r.json()) == args.metadata_series:
                        break
                    if time.time() > deadline:
                        sys.exit(f"{name}: series metadata answered {r.status_code} without "
                                 f"{args.metadata_series} entries within 600 s: no figures")
                    time.sleep(0.5)
            latencies = {name: [] for name in servers}
            metadata_runs = max(5, args.queries // 4)
            for n in range(metadata_runs + 2):
                for name in alternate(servers, n):
                    t0 = time.perf_counter()
                    r = session[name].get(meta_url[name], headers={"Accept": "application/dicom+json"},
                                          timeout=120)
                    entries = len(r.json()) if r.status_code == 200 else -1
                    took = time.perf_counter() - t0
                    if entries != args.metadata_series:
                        sys.exit(f"{name}: series metadata answered {r.status_code}, {entries} entries: no figures")
                    if n >= 2:
                        latencies[name].append(took * 1000)
            for name, values in latencies.items():
                print(f"series metadata ({args.metadata_series} instances) {name:<12} p50 "
                      f"{percentile(values, 50):8.2f} ms  p99 {percentile(values, 99):8.2f} ms  "
                      f"({len(values)} requests)")
            ratios("series metadata p50", {n: percentile(v, 50) for n, v in latencies.items()}, False)

        if "frames" in phases:
            # Frames: single-frame CT, and the first and middle frame of the
            # multi-frame instance.
            mf_study, mf_series, mf_instance = uids["multiframe"]
            middle = args.frames // 2 + 1
            frame_cases = [
                ("CT 512x512 frame 1",
                 f"/studies/{large_study}/series/{large_series}/instances/{large_instance}/frames/1", 512 * 512 * 2),
                (f"{args.frames}-frame 256x256 frame 1",
                 f"/studies/{mf_study}/series/{mf_series}/instances/{mf_instance}/frames/1", 256 * 256 * 2),
                (f"{args.frames}-frame 256x256 frame {middle}",
                 f"/studies/{mf_study}/series/{mf_series}/instances/{mf_instance}/frames/{middle}", 256 * 256 * 2),
            ]
            frame_accept = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
            for label, path, size in frame_cases:
                latencies = {name: [] for name in servers}
                for n in range(args.frame_requests + 5):
                    for name in alternate(servers, n):
                        t0 = time.perf_counter()
                        r = session[name].get(servers[name] + path, headers=frame_accept, timeout=60)
                        took = time.perf_counter() - t0
                        parts = multipart_parts(r) if r.status_code == 200 else []
                        if len(parts) != 1 or len(parts[0]) != size:
                            sys.exit(f"{name}: {label} answered {r.status_code}, "
                                     f"{[len(p) for p in parts]} bytes, not one part of {size}: no figures")
                        if n >= 5:
                            latencies[name].append(took * 1000)
                for name, values in latencies.items():
                    print(f"frame {label:<26} {name:<12} p50 {percentile(values, 50):7.2f} ms  "
                          f"p99 {percentile(values, 99):7.2f} ms  ({len(values)} requests)")
                ratios(f"frame {label} p50", {n: percentile(v, 50) for n, v in latencies.items()}, False)

        if "stow" in phases:
            # STOW-RS, the batches alternating between the servers, against
            # C-STORE of as many other instances into each imageserver.
            for batch in batches:
                paths = stow_corpus(os.path.join(work, f"stow{batch}"), args.stow, f"STOW{batch}_")
                bodies = [stow_body(paths[i:i + batch]) for i in range(0, len(paths), batch)]
                took = {name: 0.0 for name in servers}
                for n, (body, content_type) in enumerate(bodies):
                    count = min(batch, len(paths) - n * batch)
                    for name in alternate(servers, n):
                        t0 = time.perf_counter()
                        r = session[name].post(f"{servers[name]}/studies", data=body,
                                               headers={"Content-Type": content_type,
                                                        "Accept": "application/dicom+json"}, timeout=600)
                        took[name] += time.perf_counter() - t0
                        referenced, failed = stored_count(r) if r.status_code == 200 else (0, -1)
                        if referenced != count or failed:
                            sys.exit(f"{name}: STOW of {count} answered {r.status_code}, {referenced} referenced, "
                                     f"{failed} failed: no figures")
                for name, base in servers.items():
                    found = 0
                    for study in sorted({pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID
                                         for p in paths}):
                        found += len(requests.get(f"{base}/studies/{study}/instances", timeout=60).json())
                    if found != len(paths):
                        sys.exit(f"{name}: {found} of {len(paths)} STOW'd instances found: no figures")
                    print(f"STOW-RS {batch:>3} a request {name:<12} {len(paths) / took[name]:7.1f} instances/s "
                          f"({len(paths)} 256x256 instances, {len(bodies)} requests)")
                ratios(f"STOW-RS {batch} a request instances/s", {n: len(paths) / t for n, t in took.items()}, True)
                for name in binaries:
                    cstore = stow_corpus(os.path.join(work, f"cstore{batch}_{name}"), args.stow,
                                         f"CSTORE{batch}{name}_")
                    log = os.path.join(work, f"cstore{batch}_{name}.log")
                    t0 = time.perf_counter()
                    with open(log, "w") as out:
                        rc = subprocess.run([STORESCU, "-v", "-xe", "+sd", "-aet", "BENCH", "-aec", "IMAGESERVER",
                                             "127.0.0.1", str(dicom_ports[name][1]), os.path.dirname(cstore[0])],
                                            stdout=out, stderr=out, env=DCMTK_ENV, timeout=3600).returncode
                    elapsed = time.perf_counter() - t0
                    acknowledged = open(log).read().count("Received Store Response (Success)")
                    if rc != 0 or acknowledged != len(cstore):
                        sys.exit(f"C-STORE: storescu exit {rc}, {acknowledged} of {len(cstore)} acknowledged: "
                                 "no figures")
                    print(f"C-STORE (storescu, 1 association) {name:<12} {len(cstore) / elapsed:7.1f} instances/s "
                          f"({len(cstore)} 256x256 instances); STOW-RS {batch} a request / C-STORE: "
                          f"{(len(paths) / took[name]) / (len(cstore) / elapsed):.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
