#!/usr/bin/env python3
"""DICOMweb benchmark (issue 14): imageserver against Orthanc's DICOMweb
plugin (Debian `orthanc` + `orthanc-dicomweb`), same machine, same data,
both in one run.

Both servers are loaded with the same generated corpus by DCMTK storescu
(every instance must be acknowledged, or no figure is printed). Then, the
requests alternating between the servers:
- QIDO-RS study list (`GET /dicom-web/studies?limit=100`): p50/p99;
- WADO-RS series retrieve (`multipart/related; type="application/dicom"`,
  the whole answer read): MB/s over the large series.
Each answer is checked (study count, instance parts and bytes) before it is
timed: a server answering nothing cannot look fast.

usage: benches/web_orthanc.py [--studies N] [--large-series N] [--queries N]
       [--retrieves N] [--imageserver BIN] [--keep]
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


def instance(path, study, series, number, rows, columns, patient):
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
    ds.PixelData = bytes((number + i) % 251 for i in range(256)) * (rows * columns * 2 // 256)
    ds.save_as(path, enforce_file_format=True)


def corpus(root, studies, large):
    """`studies` one-instance studies (64x64) and one study whose series
    holds `large` 512x512 instances; returns (count, large study, series)."""
    os.makedirs(root, exist_ok=True)
    for n in range(studies):
        instance(os.path.join(root, f"s{n}.dcm"), generate_uid(), generate_uid(), 1, 64, 64, n)
    study, series = generate_uid(), generate_uid()
    for n in range(large):
        instance(os.path.join(root, f"large{n}.dcm"), study, series, n + 1, 512, 512, "LARGE")
    return studies + large, study, series


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
    parser.add_argument("--imageserver", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target")),
        "release", "imageserver"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    for tool in (ORTHANC, PLUGIN, STORESCU, args.imageserver):
        if not os.path.exists(tool):
            sys.exit(f"missing {tool}")
    work = tempfile.mkdtemp(prefix="imageserver-web-orthanc-")
    procs = []
    try:
        folder = os.path.join(work, "corpus")
        expected, large_study, large_series = corpus(folder, args.studies, args.large_series)
        total_studies = args.studies + 1

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
        print(f"corpus: {args.studies} one-instance 64x64 studies + a series of {args.large_series} 512x512; "
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
                if answer.status_code != 200 or len(answer.json()) != 100:
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
