#!/usr/bin/env python3
"""C-FIND SCU for the imageserver integration tests (pynetdicom 3.x).

Sends one C-FIND and prints one JSON line on stdout:

    {"associated": bool, "statuses": [int, ...], "error_comment": str|null,
     "offending": [int, ...], "responses": [{"Keyword": "value", ...}, ...],
     "extended_negotiation": {"SOP Class UID": "hex", ...}}

With --combined-datetime the association asks for combined date-time
matching (SOP class extended negotiation); "extended_negotiation" is what
the acceptor answered.

`statuses` holds every response's status in order (pendings, then the final
one); `error_comment` and `offending` are those of the final response.
Each response maps keywords (or "gggg,eeee" for tags without one) to
values: multiple values joined with a backslash, "" for an empty element or
an empty sequence, and "raw:Keyword" to the hex of the value bytes as they
arrived (before character set decoding) for PatientName.

Keys are given as --key NAME=VALUE (repeatable), NAME a keyword or
"gggg,eeee" with an optional ":VR" suffix (default: the dictionary VR, LO
for unknown tags); "SQ" gives an empty sequence.
"""

import argparse
import json
import sys
from io import BytesIO

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

MODELS = {
    "patient": PatientRootQueryRetrieveInformationModelFind,
    "study": StudyRootQueryRetrieveInformationModelFind,
}
MESSAGE_ID = 7
RAW_KEYWORDS = ("PatientName",)


def parse_key(text):
    name, _, value = text.partition("=")
    name, _, vr = name.partition(":")
    if "," in name:
        group, element = name.split(",")
        tag = Tag(int(group, 16), int(element, 16))
    else:
        number = tag_for_keyword(name)
        if number is None:
            raise SystemExit(f"unknown keyword {name}")
        tag = Tag(number)
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "LO"
    return tag, vr, value


def build_identifier(keys, charset):
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset.split("\\")
    for text in keys:
        tag, vr, value = parse_key(text)
        if vr == "SQ":
            ds.add_new(tag, "SQ", [])
        elif value == "":
            ds.add_new(tag, vr, None)
        else:
            ds.add_new(tag, vr, value)
    return ds


def text_of(element):
    if element.VR == "SQ":
        return "" if len(element.value) == 0 else f"<{len(element.value)} items>"
    value = element.value
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join("" if v is None else str(v) for v in value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def raw_values(encoded, transfer_syntax):
    """The value bytes of RAW_KEYWORDS in an encoded identifier, as hex."""
    ts = UID(transfer_syntax)
    dataset = decode(
        BytesIO(encoded), ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated
    )
    raw = {}
    for keyword in RAW_KEYWORDS:
        tag = tag_for_keyword(keyword)
        if tag in dataset:
            value = dataset.get_item(tag).value
            if isinstance(value, bytes):
                raw[f"raw:{keyword}"] = value.hex()
    return raw


def describe(identifier, raw):
    out = {}
    identifier.decode()
    for element in identifier:
        name = element.keyword or keyword_for_tag(element.tag) or (
            f"{element.tag.group:04X},{element.tag.element:04X}"
        )
        out[name] = text_of(element)
    out.update(raw)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="ITSCU")
    parser.add_argument("--aec", required=True)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--key", action="append", default=[])
    parser.add_argument("--charset")
    parser.add_argument("--cancel-after", type=int)
    parser.add_argument("--transfer-syntax", default="1.2.840.10008.1.2")
    parser.add_argument(
        "--combined-datetime",
        action="store_true",
        help="ask for combined date-time matching (SOP class extended negotiation)",
    )
    args = parser.parse_args()

    model = MODELS[args.model]
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = 10
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    ae.add_requested_context(model, [args.transfer_syntax])
    result = {
        "associated": False,
        "statuses": [],
        "error_comment": None,
        "offending": [],
        "responses": [],
    }
    # The identifiers as they arrived, before pynetdicom decodes them.
    received = []

    def on_receive(event):
        message = event.message
        if isinstance(message, C_FIND_RSP) and message.data_set is not None:
            encoded = message.data_set.getvalue()
            if encoded:
                received.append(encoded)

    ext_neg = []
    if args.combined_datetime:
        # PS3.4 Table C.5-1: byte 1 relational queries, byte 2 combined
        # date-time matching.
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = model
        item.service_class_application_information = b"\x00\x01"
        ext_neg.append(item)
    assoc = ae.associate(
        args.host,
        args.port,
        ae_title=args.aec,
        ext_neg=ext_neg or None,
        evt_handlers=[(evt.EVT_DIMSE_RECV, on_receive)],
    )
    if not assoc.is_established:
        print(json.dumps(result))
        return
    result["associated"] = True
    # What the acceptor answered to the extended negotiation, per SOP class.
    result["extended_negotiation"] = {
        str(uid): info.hex() for uid, info in assoc.acceptor.sop_class_extended.items()
    }
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == model)
    context_id = context.context_id
    transfer_syntax = context.transfer_syntax[0]
    identifier = build_identifier(args.key, args.charset)
    pending = 0
    try:
        for status, found in assoc.send_c_find(identifier, model, msg_id=MESSAGE_ID):
            if status is None or "Status" not in status:
                # Timeout or aborted association: no (further) status.
                break
            code = int(status.Status)
            result["statuses"].append(code)
            if code in (0xFF00, 0xFF01):
                pending += 1
                raw = raw_values(received[pending - 1], transfer_syntax)
                result["responses"].append(describe(found, raw) if found is not None else {})
                if args.cancel_after is not None and pending == args.cancel_after:
                    assoc.send_c_cancel(MESSAGE_ID, context_id)
            else:
                comment = status.get("ErrorComment")
                result["error_comment"] = None if comment is None else str(comment)
                offending = status.get("OffendingElement")
                if offending is not None:
                    values = offending if isinstance(offending, (list, tuple)) or type(
                        offending
                    ).__name__ == "MultiValue" else [offending]
                    result["offending"] = [int(v) for v in values]
    finally:
        if assoc.is_established:
            assoc.release()
    sys.stdout.reconfigure(encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
