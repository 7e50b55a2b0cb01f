"""WADO-RS of a compressed (RLE Lossless) series, for tests/it/compress.rs:
instance, series and frames retrieved by dicomweb-client in uncompressed
transfer syntaxes (named, and by default), and the stored bytes with
transfer-syntax=*.

Arguments: base URL (…/dicom-web), study UID, series UID, output folder,
then the SOP Instance UIDs. Writes each answer's pixel bytes to
<out>/<label>-<sop>.raw and prints one JSON object: per label, the transfer
syntax of each answer, and the status of the requests that must fail. It
asserts nothing itself: the Rust test does.
"""

import io
import json
import os
import sys

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def split_multipart(response):
    """The bodies of a multipart/related answer."""
    content_type = response.headers["Content-Type"]
    boundary = [p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")][0]
    bodies = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        body = chunk.partition(b"\r\n\r\n")[2]
        bodies.append(body[:-2] if body.endswith(b"\r\n") else body)
    return bodies


def main():
    base, study, series, out = sys.argv[1:5]
    sops = sys.argv[5:]
    os.makedirs(out, exist_ok=True)
    client = DICOMwebClient(url=base)
    found = {}

    def keep(label, sop, syntax, pixels):
        with open(os.path.join(out, f"{label}-{sop}.raw"), "wb") as f:
            f.write(pixels)
        found.setdefault(label, {})[sop] = syntax

    first = sops[0]
    for label, media_types in [
        ("instance-explicit", (("application/dicom", EXPLICIT),)),
        # No transfer syntax named (dicomweb-client's own default is `*`).
        ("instance-default", ("application/dicom",)),
    ]:
        ds = client.retrieve_instance(study, series, first, media_types=media_types)
        keep(label, first, str(ds.file_meta.TransferSyntaxUID), ds.PixelData)
    # dicomweb-client refuses to ask for Implicit VR LE: requests does.
    response = requests.get(
        f"{base}/studies/{study}/series/{series}/instances/{first}",
        headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={IMPLICIT}'},
        timeout=60,
    )
    response.raise_for_status()
    for body in split_multipart(response):
        ds = pydicom.dcmread(io.BytesIO(body))
        keep("instance-implicit", first, str(ds.file_meta.TransferSyntaxUID), ds.PixelData)
    for ds in client.retrieve_series(study, series):
        keep("series-default", ds.SOPInstanceUID, str(ds.file_meta.TransferSyntaxUID), ds.PixelData)
    for ds in client.retrieve_series(study, series, media_types=(("application/dicom", EXPLICIT),)):
        keep("series-explicit", ds.SOPInstanceUID, str(ds.file_meta.TransferSyntaxUID), ds.PixelData)
    for label, media_types in [
        ("frames-explicit", (("application/octet-stream", EXPLICIT),)),
        ("frames-default", (("application/octet-stream",),)),
    ]:
        frames = client.retrieve_instance_frames(study, series, first, [1], media_types=media_types)
        keep(label, first, None, frames[0])

    # The stored bytes still, when any syntax is accepted.
    stored = client.retrieve_instance(study, series, first, media_types=(("application/dicom", "*"),))
    found["stored_syntax"] = str(stored.file_meta.TransferSyntaxUID)
    # A syntax nothing decodes to: 406.
    found["jpeg_status"] = requests.get(
        f"{base}/studies/{study}/series/{series}/instances/{first}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'},
        timeout=60,
    ).status_code
    print(json.dumps(found))


if __name__ == "__main__":
    main()
