#!/usr/bin/env python3
"""DICOMweb benchmark (issue 14): imageserver against Orthanc's DICOMweb
plugin (Debian `orthanc` + `orthanc-dicomweb`), same machine, same data,
both in one run.

Both servers are loaded with the same generated corpus by DCMTK storescu
(every instance must be acknowledged, or no figure is printed). Then, the
requests alternating between the servers:
- QIDO-RS study list (`GET /dicom-web/studies?limit=100`): p50/p99;
- WADO-RS series retrieve (`multipart/related; type="application/dicom"`,
  the whole answer read): MB/s over the large series;
- series metadata (`/studies/X/series/Y/metadata`) of a series of
  --metadata-series instances (default 1,000): p50/p99;
- frame retrieval (`/frames/1`, `multipart/related;
  type="application/octet-stream"`): p50/p99 on a single-frame 512x512 CT
  and on frame 1 and the middle frame of a --frames-frame instance;
- STOW-RS: --stow instances per batch size (--stow-batches, default 1 and
  20 instances a request) to each server, the batches alternating between
  them: instances/s; against C-STORE of as many (other) instances into
  imageserver by storescu over one association.
Each answer is checked (study count, instance parts and bytes, metadata
entries, frame bytes, the STOW answer's referenced instances and a search
finding them all) before it is timed: a server answering nothing cannot
look fast. Any wrong answer ends the run without figures.

usage: benches/web_orthanc.py [--studies N] [--large-series N] [--queries N]
       [--retrieves N] [--metadata-series N] [--frames N] [--stow N]
       [--stow-batches 1,20] [--imageserver BIN] [--keep] [--smoke]
--smoke: tiny sizes, every check made (a minute; the figures mean nothing).
Needs: DCMTK, orthanc, orthanc-dicomweb, python3 with pydicom, requests.
Binds only 127.0.0.1.
"""

import argparse
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
CT = "1.2.840.10008.5.1.4.1.1.2"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def instance(path, study, series, number, rows, columns, patient, frames=1):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = f"BENCH^{patient}"
    ds.PatientID = f"P{patient}"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyDate = "20240101"
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


def corpus(root, studies, large, metadata, frames):
    """`studies` one-instance studies (64x64), one study whose series holds
    `large` 512x512 instances, one whose series holds `metadata` 64x64
    instances and one multi-frame instance of `frames` 256x256 frames;
    returns (count, {name: (study, series[, instance])})."""
    os.makedirs(root, exist_ok=True)
    for n in range(studies):
        instance(os.path.join(root, f"s{n}.dcm"), generate_uid(), generate_uid(), 1, 64, 64, n)
    uids = {}
    study, series = generate_uid(), generate_uid()
    for n in range(large):
        instance(os.path.join(root, f"large{n}.dcm"), study, series, n + 1, 512, 512, "LARGE")
    uids["large"] = (study, series, pydicom.dcmread(os.path.join(root, "large0.dcm")).SOPInstanceUID)
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


def store(name, aet, port, folder, expected, log):
    started = time.time()
    with open(log, "w") as out:
        rc = subprocess.run([STORESCU, "-v", "-xe", "+sd", "+r", "-aet", "BENCH", "-aec", aet,
                             "127.0.0.1", str(port), folder], stdout=out, stderr=out, timeout=3600).returncode
    took = time.time() - started
    acknowledged = open(log).read().count("Received Store Response (Success)")
    if rc != 0 or acknowledged != expected:
        sys.exit(f"{name}: storescu exit {rc}, {acknowledged} of {expected} acknowledged: no figures ({log})")
    print(f"load {name:<12} {expected} instances in {took:.1f} s: {expected / took:.0f} instances/s")


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
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--imageserver", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target")),
        "release", "imageserver"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.studies, args.large_series, args.queries, args.retrieves = 20, 3, 5, 1
        args.metadata_series, args.frames, args.frame_requests, args.stow = 12, 4, 5, 10
        args.stow_batches = "1,5"
    batches = [int(b) for b in args.stow_batches.split(",")]
    for tool in (ORTHANC, PLUGIN, STORESCU, args.imageserver):
        if not os.path.exists(tool):
            sys.exit(f"missing {tool}")
    work = tempfile.mkdtemp(prefix="imageserver-web-orthanc-")
    procs = []
    try:
        folder = os.path.join(work, "corpus")
        expected, uids = corpus(folder, args.studies, args.large_series, args.metadata_series, args.frames)
        large_study, large_series, large_instance = uids["large"]
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
        i_dicom, i_http = free_port(), free_port()
        procs.append(subprocess.Popen(
            [args.imageserver, "serve", "--data", os.path.join(work, "imageserver"), "--bind", "127.0.0.1",
             "--port", str(i_dicom), "--http-port", str(i_http)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "imageserver.log"), "w"),
            env={**os.environ, "RUST_LOG": "warn"}))
        servers = {"orthanc": f"http://127.0.0.1:{o_http}/dicom-web",
                   "imageserver": f"http://127.0.0.1:{i_http}/dicom-web"}
        wait_http(f"http://127.0.0.1:{o_http}/system")
        wait_http(servers["imageserver"] + "/studies?limit=1")
        print(f"corpus: {args.studies} one-instance 64x64 studies + a series of {args.large_series} 512x512 "
              f"+ a series of {args.metadata_series} 64x64 + a {args.frames}-frame 256x256 instance; "
              f"{subprocess.run([ORTHANC, '--version'], capture_output=True, text=True).stdout.splitlines()[0]}"
              f" + DICOMweb plugin 1.7 (Debian)")
        store("orthanc", "ORTHANC", o_dicom, folder, expected, os.path.join(work, "store_orthanc.log"))
        store("imageserver", "IMAGESERVER", i_dicom, folder, expected, os.path.join(work, "store_imageserver.log"))

        # Correctness before timing.
        for name, base in servers.items():
            everything = requests.get(f"{base}/studies", params={"limit": total_studies + 10}, timeout=600).json()
            if len(everything) != total_studies:
                sys.exit(f"{name} lists {len(everything)} studies, not {total_studies}: no figures")
            size, parts = series_bytes(f"{base}/studies/{large_study}/series/{large_series}")
            if parts != args.large_series:
                sys.exit(f"{name} answered {parts} parts, not {args.large_series}: no figures")

        latencies = {name: [] for name in servers}
        session = {name: requests.Session() for name in servers}
        for n in range(args.queries + 10):
            order = list(servers) if n % 2 == 0 else list(reversed(list(servers)))
            for name in order:
                t0 = time.perf_counter()
                answer = session[name].get(f"{servers[name]}/studies", params={"limit": 100}, timeout=60)
                took = time.perf_counter() - t0
                if answer.status_code != 200 or len(answer.json()) != min(100, total_studies):
                    sys.exit(f"{name}: QIDO answered {answer.status_code} with the wrong count: no figures")
                if n >= 10:
                    latencies[name].append(took * 1000)
        for name, values in latencies.items():
            print(f"QIDO studies?limit=100 {name:<12} p50 {percentile(values, 50):7.2f} ms  "
                  f"p99 {percentile(values, 99):7.2f} ms  ({len(values)} queries)")
        ratio = percentile(latencies["orthanc"], 50) / percentile(latencies["imageserver"], 50)
        print(f"QIDO p50 ratio orthanc/imageserver: {ratio:.2f}")

        rates = {name: [] for name in servers}
        for n in range(args.retrieves + 1):
            order = list(servers) if n % 2 == 0 else list(reversed(list(servers)))
            for name in order:
                t0 = time.perf_counter()
                size, parts = series_bytes(f"{servers[name]}/studies/{large_study}/series/{large_series}")
                took = time.perf_counter() - t0
                if parts != args.large_series:
                    sys.exit(f"{name}: {parts} parts: no figures")
                if n >= 1:
                    rates[name].append(size / took / 1e6)
        for name, values in rates.items():
            print(f"WADO-RS series {name:<12} median {statistics.median(values):7.1f} MB/s "
                  f"({args.large_series} instances, {args.retrieves} retrieves)")
        print(f"WADO-RS MB/s ratio imageserver/orthanc: "
              f"{statistics.median(rates['imageserver']) / statistics.median(rates['orthanc']):.2f}")

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
            order = list(servers) if n % 2 == 0 else list(reversed(list(servers)))
            for name in order:
                t0 = time.perf_counter()
                r = session[name].get(meta_url[name], headers={"Accept": "application/dicom+json"}, timeout=120)
                entries = len(r.json()) if r.status_code == 200 else -1
                took = time.perf_counter() - t0
                if entries != args.metadata_series:
                    sys.exit(f"{name}: series metadata answered {r.status_code}, {entries} entries: no figures")
                if n >= 2:
                    latencies[name].append(took * 1000)
        for name, values in latencies.items():
            print(f"series metadata ({args.metadata_series} instances) {name:<12} p50 "
                  f"{percentile(values, 50):8.2f} ms  p99 {percentile(values, 99):8.2f} ms  ({len(values)} requests)")
        print(f"series metadata p50 ratio orthanc/imageserver: "
              f"{percentile(latencies['orthanc'], 50) / percentile(latencies['imageserver'], 50):.2f}")

        # Frames: single-frame CT, and the first and middle frame of the
        # multi-frame instance.
        mf_study, mf_series, mf_instance = uids["multiframe"]
        middle = args.frames // 2 + 1
        frame_cases = [
            ("CT 512x512 frame 1", f"/studies/{large_study}/series/{large_series}/instances/{large_instance}/frames/1",
             512 * 512 * 2),
            (f"{args.frames}-frame 256x256 frame 1",
             f"/studies/{mf_study}/series/{mf_series}/instances/{mf_instance}/frames/1", 256 * 256 * 2),
            (f"{args.frames}-frame 256x256 frame {middle}",
             f"/studies/{mf_study}/series/{mf_series}/instances/{mf_instance}/frames/{middle}", 256 * 256 * 2),
        ]
        frame_accept = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
        for label, path, size in frame_cases:
            latencies = {name: [] for name in servers}
            for n in range(args.frame_requests + 5):
                order = list(servers) if n % 2 == 0 else list(reversed(list(servers)))
                for name in order:
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
            print(f"frame {label} p50 ratio orthanc/imageserver: "
                  f"{percentile(latencies['orthanc'], 50) / percentile(latencies['imageserver'], 50):.2f}")

        # STOW-RS, the batches alternating between the servers, against
        # C-STORE of as many other instances into imageserver.
        for batch in batches:
            paths = stow_corpus(os.path.join(work, f"stow{batch}"), args.stow, f"STOW{batch}_")
            bodies = [stow_body(paths[i:i + batch]) for i in range(0, len(paths), batch)]
            took = {name: 0.0 for name in servers}
            for n, (body, content_type) in enumerate(bodies):
                order = list(servers) if n % 2 == 0 else list(reversed(list(servers)))
                count = min(batch, len(paths) - n * batch)
                for name in order:
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
                for study in sorted({pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in paths}):
                    found += len(requests.get(f"{base}/studies/{study}/instances", timeout=60).json())
                if found != len(paths):
                    sys.exit(f"{name}: {found} of {len(paths)} STOW'd instances found: no figures")
                print(f"STOW-RS {batch:>3} a request {name:<12} {len(paths) / took[name]:7.1f} instances/s "
                      f"({len(paths)} 256x256 instances, {len(bodies)} requests)")
            print(f"STOW-RS {batch} a request ratio imageserver/orthanc: {took['orthanc'] / took['imageserver']:.2f}")
            cstore = stow_corpus(os.path.join(work, f"cstore{batch}"), args.stow, f"CSTORE{batch}_")
            log = os.path.join(work, f"cstore{batch}.log")
            t0 = time.perf_counter()
            with open(log, "w") as out:
                rc = subprocess.run([STORESCU, "-v", "-xe", "+sd", "-aet", "BENCH", "-aec", "IMAGESERVER",
                                     "127.0.0.1", str(i_dicom), os.path.dirname(cstore[0])],
                                    stdout=out, stderr=out, timeout=3600).returncode
            elapsed = time.perf_counter() - t0
            acknowledged = open(log).read().count("Received Store Response (Success)")
            if rc != 0 or acknowledged != len(cstore):
                sys.exit(f"C-STORE: storescu exit {rc}, {acknowledged} of {len(cstore)} acknowledged: no figures")
            print(f"C-STORE (storescu, 1 association) imageserver {len(cstore) / elapsed:7.1f} instances/s "
                  f"({len(cstore)} 256x256 instances); STOW-RS {batch} a request / C-STORE: "
                  f"{(len(paths) / took['imageserver']) / (len(cstore) / elapsed):.2f}")
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
