#!/usr/bin/env python3
"""C-MOVE / C-GET SCU for the imageserver retrieve tests (pynetdicom 3.x).

Prints one line per event on stdout, for the Rust test to read:

    RSP <status> <remaining> <completed> <failed> <warning>
        every C-MOVE/C-GET response in order (status as 4 hex digits,
        counts as integers, "-" for an absent element)
    FAILED <uid>
        each UID of the final response's Failed SOP Instance UID List
    STORED <uid>
        each instance our storage SCP received (C-GET sub-operations, or
        the in-process move destination); its data set bytes, exactly as
        they arrived, are written to OUT/<uid>.ds
    ORIGINATOR <ae> <message id>
        the Move Originator AE Title and Message ID of a received C-STORE
        (printed after its STORED line, when present)
    COMMENT <text>
        the final response's Error Comment, if any
    END
        the last line: the operation finished and the association was
        released

Modes:

    move  --dest AE          C-MOVE to AE. With --scp-port, an in-process
                             storage SCP (AE title --scp-ae) listens there
                             and can be the destination. With
                             --cancel-after N, a C-CANCEL is sent after the
                             N-th pending response; the in-process SCP holds
                             its (N+1)-th C-STORE until the cancel is on its
                             way, so it arrives while sub-operations remain
                             (after N+1 or a few more, never after all).
    get                      C-GET; storage contexts from --context
                             CLASS=TS[,TS...] (one context per class, SCP
                             role requested unless --no-role).
"""

import argparse
import os
import sys
import threading
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

MODELS = {
    ("move", "patient"): PatientRootQueryRetrieveInformationModelMove,
    ("move", "study"): StudyRootQueryRetrieveInformationModelMove,
    ("get", "patient"): PatientRootQueryRetrieveInformationModelGet,
    ("get", "study"): StudyRootQueryRetrieveInformationModelGet,
}
MESSAGE_ID = 9
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"

OUT_LOCK = threading.Lock()


def emit(line):
    with OUT_LOCK:
        print(line, flush=True)


def count(status, keyword):
    value = status.get(keyword)
    return "-" if value is None else str(int(value))


class Receiver:
    """A C-STORE handler writing raw data sets, optionally held for a cancel."""

    def __init__(self, out_dir, hold_at=None):
        self.out_dir = out_dir
        self.hold_at = hold_at
        self.received = 0
        self.cancel_sent = threading.Event()

    def handle(self, event):
        self.received += 1
        if self.hold_at is not None and self.received == self.hold_at:
            self.cancel_sent.wait(timeout=60)
        uid = str(event.request.AffectedSOPInstanceUID)
        raw = event.request.DataSet.getvalue()
        if self.out_dir:
            with open(os.path.join(self.out_dir, uid + ".ds"), "wb") as f:
                f.write(raw)
        emit("STORED " + uid)
        originator = event.request.MoveOriginatorApplicationEntityTitle
        if originator:
            if isinstance(originator, bytes):
                originator = originator.decode()
            message_id = event.request.MoveOriginatorMessageID
            emit("ORIGINATOR %s %s" % (originator.strip(), message_id))
        return 0x0000


def identifier(keys):
    ds = Dataset()
    for key in keys:
        name, _, value = key.partition("=")
        setattr(ds, name, value)
    return ds


def report(responses, on_pending=None):
    pending = 0
    for status, ident in responses:
        if status is None or "Status" not in status:
            emit("RSP none - - - -")
            continue
        code = int(status.Status)
        emit(
            "RSP %04x %s %s %s %s"
            % (
                code,
                count(status, "NumberOfRemainingSuboperations"),
                count(status, "NumberOfCompletedSuboperations"),
                count(status, "NumberOfFailedSuboperations"),
                count(status, "NumberOfWarningSuboperations"),
            )
        )
        if code in (0xFF00, 0xFF01):
            pending += 1
            if on_pending:
                on_pending(pending)
            continue
        if "ErrorComment" in status:
            emit("COMMENT " + str(status.ErrorComment))
        if ident is not None and "FailedSOPInstanceUIDList" in ident:
            value = ident.FailedSOPInstanceUIDList
            uids = [value] if isinstance(value, str) else list(value)
            for uid in uids:
                if uid:
                    emit("FAILED " + str(uid))


def run_move(args):
    receiver = None
    server = None
    if args.scp_port:
        receiver = Receiver(
            args.out, None if args.cancel_after is None else args.cancel_after + 1
        )
        scp = AE(ae_title=args.scp_ae)
        for cls in args.scp_class:
            scp.add_supported_context(cls, [EXPLICIT, IMPLICIT])
        server = scp.start_server(
            ("127.0.0.1", args.scp_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, receiver.handle)],
        )
    model = MODELS[("move", args.model)]
    ae = AE(ae_title=args.aet)
    ae.add_requested_context(model)
    assoc = ae.associate(args.host, args.port, ae_title=args.aec)
    if not assoc.is_established:
        print("association failed", file=sys.stderr)
        return 2

    def on_pending(n):
        if args.cancel_after is not None and n == args.cancel_after:
            assoc.send_c_cancel(MESSAGE_ID, query_model=model)
            # The DUL thread writes queued messages: wait until it took the
            # cancel before letting the held store finish.
            deadline = time.monotonic() + 10
            while not assoc.dul.to_provider_queue.empty() and time.monotonic() < deadline:
                time.sleep(0.001)
            if receiver:
                receiver.cancel_sent.set()

    try:
        report(
            assoc.send_c_move(
                identifier(args.key), args.dest, model, msg_id=MESSAGE_ID
            ),
            on_pending,
        )
    finally:
        if receiver:
            receiver.cancel_sent.set()
        assoc.release()
        if server:
            server.shutdown()
    emit("END")
    return 0


def run_get(args):
    model = MODELS[("get", args.model)]
    receiver = Receiver(args.out)
    ae = AE(ae_title=args.aet)
    ae.add_requested_context(model)
    roles = []
    for spec in args.context:
        cls, _, syntaxes = spec.partition("=")
        ae.add_requested_context(cls, syntaxes.split(","))
        if not args.no_role:
            roles.append(build_role(cls, scp_role=True))
    assoc = ae.associate(
        args.host,
        args.port,
        ae_title=args.aec,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, receiver.handle)],
    )
    if not assoc.is_established:
        print("association failed", file=sys.stderr)
        return 2
    try:
        report(assoc.send_c_get(identifier(args.key), model, msg_id=MESSAGE_ID))
    finally:
        assoc.release()
    emit("END")
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["move", "get"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", required=True)
    parser.add_argument("--aec", required=True)
    parser.add_argument("--model", choices=["patient", "study"], default="study")
    parser.add_argument("--key", action="append", default=[])
    parser.add_argument("--dest")
    parser.add_argument("--cancel-after", type=int)
    parser.add_argument("--scp-port", type=int)
    parser.add_argument("--scp-ae", default="PYDEST")
    parser.add_argument("--scp-class", action="append", default=[])
    parser.add_argument("--context", action="append", default=[])
    parser.add_argument("--no-role", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    if args.mode == "move":
        return run_move(args)
    return run_get(args)


if __name__ == "__main__":
    sys.exit(main())
