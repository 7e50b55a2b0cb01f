#!/usr/bin/env python3
"""Checks a series metadata file (DICOM JSON, PS3.18 F.2) with pydicom.

    check_metadata.py METADATA.json STORED.dcm...

Every object of the JSON array is read with pydicom's
`Dataset.from_json` (a bulk data handler records the URIs it is given) and
compared with `pydicom.dcmread` of the stored file of the same SOP
Instance UID: every attribute of the stored data set but Pixel Data must
be in the JSON with an equal value (numbers compared as numbers, names and
strings as text, sequences item by item), and Pixel Data must be there
only as a BulkDataURI ending in /7FE00010, never inline.

Prints one JSON line: {"instances": n, "bulk_uris": [...], "errors": [...]}
and exits 1 when there are errors.
"""

import json
import sys

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

PIXEL_DATA = 0x7FE00010


def scalar(value):
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value)


def normal(elem):
    """A comparable form of an element's value; None when empty."""
    value = elem.value
    if elem.VR == "SQ":
        items = [dataset_map(item) for item in value]
        return items or None
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        values = [scalar(v) for v in value]
        return values or None
    return scalar(value)


def dataset_map(ds):
    return {
        int(elem.tag): normal(elem)
        for elem in ds
        if elem.tag.group != 0x0002 and elem.tag.element != 0x0000
        and int(elem.tag) != PIXEL_DATA
    }


def main():
    metadata_path, stored_paths = sys.argv[1], sys.argv[2:]
    stored = {}
    for path in stored_paths:
        ds = pydicom.dcmread(path)
        stored[str(ds.SOPInstanceUID)] = ds
    with open(metadata_path, encoding="utf-8") as f:
        objects = json.load(f)
    errors, uris = [], []
    if not isinstance(objects, list):
        errors.append("the metadata is not a JSON array")
        objects = []
    for obj in objects:
        pixel = obj.get("7FE00010")
        if pixel is None or set(pixel) != {"vr", "BulkDataURI"}:
            errors.append(f"Pixel Data is not a BulkDataURI alone: {pixel}")
        elif not pixel["BulkDataURI"].endswith("/7FE00010"):
            errors.append(f"unexpected Pixel Data URI {pixel['BulkDataURI']}")
        for key in obj:
            if key.startswith("0002"):
                errors.append(f"file meta attribute {key} in the metadata")
        seen = []

        def handler(tag, vr, uri):
            seen.append((tag, uri))
            return b""

        ds = Dataset.from_json(obj, bulk_data_uri_handler=handler)
        uris.extend(uri for _, uri in seen)
        sop = str(ds.get("SOPInstanceUID", ""))
        if sop not in stored:
            errors.append(f"{sop}: no stored file given for it")
            continue
        want = dataset_map(stored[sop])
        got = dataset_map(ds)
        for tag, value in want.items():
            if tag not in got:
                errors.append(f"{sop}: ({tag:08X}) missing from the metadata")
            elif got[tag] != value:
                errors.append(
                    f"{sop}: ({tag:08X}) is {got[tag]!r} in the metadata, "
                    f"{value!r} in the file"
                )
        for tag in got:
            if tag not in want:
                errors.append(f"{sop}: ({tag:08X}) is not in the file")
        if PIXEL_DATA in stored[sop] and "PixelData" not in ds:
            errors.append(f"{sop}: Pixel Data missing from the metadata")
    print(json.dumps({"instances": len(objects), "bulk_uris": uris, "errors": errors}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
