"""DICOMweb client side of tests/it/web.rs: dicomweb-client (and requests
for raw bytes) against the running server.

Reads a JSON request file (argv[1]):
  {"base": URL root, "instances": [{"study", "series", "sop", "path"}],
   "stow": path of a Part 10 file to STOW, "stow_many": paths of Part 10
   files of one study STOWed in one request, "out": folder for raw parts,
   "queries": [{"PatientName": ..., ...}]}
and prints one JSON object of findings on stdout. It asserts nothing
itself: the Rust test does, so that every finding is reported.
"""

import json
import os
import sys

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families


def uid(obj, tag):
    value = obj.get(tag, {}).get("Value")
    return value[0] if value else None


def split_multipart(response):
    """The parts of a multipart/related answer: (headers text, body bytes)."""
    content_type = response.headers["Content-Type"]
    boundary = [p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")][0]
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in response.content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        if body.endswith(b"\r\n"):
            body = body[:-2]
        parts.append((head.decode("latin-1"), body))
    return parts


def metrics(root):
    text = requests.get(root + "/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            gauge = family.type == "gauge"
            if gauge or sample.name.endswith("_total") or sample.name.endswith("_count"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def main():
    request = json.load(open(sys.argv[1]))
    root = request["base"]
    base = root + "/dicom-web"
    client = DICOMwebClient(url=base)
    found = {"metrics_before": metrics(root)}
    instances = request["instances"]

    # QIDO-RS at every level.
    studies = client.search_for_studies()
    found["studies"] = sorted(uid(s, "0020000D") for s in studies)
    found["series"] = {}
    found["instances"] = {}
    for study in sorted({i["study"] for i in instances}):
        series = client.search_for_series(study)
        found["series"][study] = sorted(uid(s, "0020000E") for s in series)
        for s in found["series"][study]:
            found["instances"][s] = sorted(uid(i, "00080018") for i in client.search_for_instances(study, s))
    found["all_series"] = len(client.search_for_series())
    found["all_instances"] = len(client.search_for_instances())
    found["study_instances"] = len(client.search_for_instances(instances[0]["study"]))
    pages = [client.search_for_studies(limit=1, offset=n) for n in range(len(found["studies"]) + 1)]
    found["pages"] = [[uid(s, "0020000D") for s in page] for page in pages]
    found["queries"] = []
    for query in request["queries"]:
        answer = client.search_for_studies(search_filters=query, fuzzymatching=False)
        found["queries"].append(sorted(uid(s, "0020000D") for s in answer))
    with_fields = client.search_for_studies(fields=["all"], limit=1)
    found["includefield_all_keys"] = sorted(with_fields[0].keys()) if with_fields else []
    found["unknown_key"] = len(client.search_for_studies(search_filters={"NoSuchAttribute": "x"}))

    # WADO-RS: instance, series, metadata, bulk data, frames.
    first = instances[0]
    source = pydicom.dcmread(first["path"])
    ds = client.retrieve_instance(first["study"], first["series"], first["sop"])
    found["retrieved_instance"] = ds.SOPInstanceUID
    series = client.retrieve_series(first["study"], first["series"])
    found["retrieved_series"] = sorted(d.SOPInstanceUID for d in series)
    metadata = client.retrieve_series_metadata(first["study"], first["series"])
    found["metadata_sops"] = sorted(uid(m, "00080018") for m in metadata)
    mine = [m for m in metadata if uid(m, "00080018") == first["sop"]][0]
    bulk_uri = mine["7FE00010"]["BulkDataURI"]
    found["bulk_uri"] = bulk_uri
    bulk = client.retrieve_bulkdata(base + "/" + bulk_uri)
    found["bulk_equals_pixel_data"] = len(bulk) == 1 and bulk[0] == source.PixelData
    frames = client.retrieve_instance_frames(first["study"], first["series"], first["sop"], [1])
    found["frame_equals_pixel_data"] = len(frames) == 1 and frames[0] == source.PixelData
    study_metadata = client.retrieve_study_metadata(first["study"])
    found["study_metadata_count"] = len(study_metadata)

    # Raw bytes of a study retrieve, for the byte comparison.
    response = requests.get(
        f"{base}/studies/{first['study']}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=60,
    )
    found["study_status"] = response.status_code
    os.makedirs(request["out"], exist_ok=True)
    written = []
    for n, (_, body) in enumerate(split_multipart(response)):
        path = os.path.join(request["out"], f"part{n}.dcm")
        with open(path, "wb") as f:
            f.write(body)
        written.append(path)
    found["study_parts"] = written
    found["wado_uri_status"] = requests.get(
        f"{root}/wado",
        params={"requestType": "WADO", "studyUID": first["study"], "seriesUID": first["series"],
                "objectUID": first["sop"], "contentType": "application/dicom"},
        timeout=60,
    ).status_code
    found["missing_status"] = requests.get(f"{base}/studies/1.2.3.4.5.6.7.8.9", timeout=30).status_code

    # STOW-RS: one good instance; then a body whose one part is no DICOM.
    stowed = pydicom.dcmread(request["stow"])
    answer = client.store_instances([stowed])
    found["stow_referenced"] = [item.ReferencedSOPInstanceUID for item in answer.get("ReferencedSOPSequence", [])]
    found["stow_failed"] = len(answer.get("FailedSOPSequence", []))
    boundary = "stowtestboundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode() + b"not a dicom file" * 20 + f"\r\n--{boundary}--\r\n".encode()
    bad = requests.post(
        f"{base}/studies", data=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )
    found["stow_bad_status"] = bad.status_code
    failed = bad.json().get("00081198", {}).get("Value", [])
    found["stow_bad_reasons"] = [f["00081197"]["Value"][0] for f in failed]

    # One request of many parts, the 8th no DICOM file; then a search for
    # the study's instances.
    parts = [open(p, "rb").read() for p in request["stow_many"]]
    parts.insert(7, b"not a dicom file" * 20)
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
                    for part in parts) + f"--{boundary}--\r\n".encode()
    many = requests.post(
        f"{base}/studies", data=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=120,
    )
    found["stow_many_status"] = many.status_code
    answer = many.json()
    found["stow_many_referenced"] = [uid(item, "00081155") for item in answer.get("00081199", {}).get("Value", [])]
    found["stow_many_reasons"] = [f["00081197"]["Value"][0] for f in answer.get("00081198", {}).get("Value", [])]
    many_study = pydicom.dcmread(request["stow_many"][0], stop_before_pixels=True).StudyInstanceUID
    found["stow_many_found"] = len(requests.get(f"{base}/studies/{many_study}/instances", timeout=60).json())

    found["metrics_after"] = metrics(root)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
