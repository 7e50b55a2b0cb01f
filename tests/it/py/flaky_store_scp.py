#!/usr/bin/env python3
"""A Storage SCP that refuses chosen instances, for the imageserver
integration tests (pynetdicom 3.x).

    flaky_store_scp.py --port N --aet AE --out DIR --log FILE
                       [--refuse FILE] [--refuse-mode first|always]
                       [--warn FILE] [--delay SECONDS] [--conn-log FILE]

--refuse names a file of SOP Instance UIDs (one a line) answered 0xA700
(Out of Resources), only the first time each arrives (`first`, the default)
or every time (`always`); --warn names UIDs stored but answered 0xB000
(Coercion of Data Elements). Every other instance is stored with 0x0000.

Accepted data sets are written to DIR/<SOP Instance UID>.dcm: a preamble, a
meta group and the data set bytes exactly as received (not decoded), via a
temporary file renamed into place. Every C-STORE is appended to the log,
one line each, written and flushed before the response is sent:

    STORE <n> <SOP Instance UID> <status, 4 hex digits>

<n> counts C-STOREs from 1 in arrival order. --delay holds every C-STORE
that long before answering (a slow destination). --conn-log gets one line
per TCP connection opened or closed, with the number open after it:

    OPEN <open now>
    CLOSE <open now>

"READY" is printed on stdout once the server listens. Runs until killed.
"""

import argparse
import os
import sys
import threading
import time

from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

REFUSED = 0xA700
WARNING = 0xB000
SUCCESS = 0x0000


def read_uids(path):
    if not path:
        return set()
    with open(path, encoding="ascii") as f:
        return {line.strip() for line in f if line.strip()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--refuse")
    parser.add_argument("--refuse-mode", choices=["first", "always"], default="first")
    parser.add_argument("--warn")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--conn-log")
    args = parser.parse_args()

    refuse = read_uids(args.refuse)
    warn = read_uids(args.warn)
    os.makedirs(args.out, exist_ok=True)
    log = open(args.log, "a", encoding="ascii")
    lock = threading.Lock()
    seen = {}
    counter = [0]

    conn_log = open(args.conn_log, "a", encoding="ascii") if args.conn_log else None
    connections = [0]

    def handle_connection(event, opened):
        with lock:
            connections[0] += 1 if opened else -1
            if conn_log:
                conn_log.write(f"{'OPEN' if opened else 'CLOSE'} {connections[0]}\n")
                conn_log.flush()

    def handle_store(event):
        if args.delay > 0:
            time.sleep(args.delay)
        uid = str(event.request.AffectedSOPInstanceUID)
        with lock:
            seen[uid] = seen.get(uid, 0) + 1
            first = seen[uid] == 1
        if uid in refuse and (first or args.refuse_mode == "always"):
            status = REFUSED
        elif uid in warn:
            status = WARNING
        else:
            status = SUCCESS
        if status != REFUSED:
            final = os.path.join(args.out, uid + ".dcm")
            partial = final + ".part"
            with open(partial, "wb") as f:
                f.write(b"\x00" * 128)
                f.write(b"DICM")
                write_file_meta_info(f, event.file_meta, enforce_standard=True)
                f.write(event.request.DataSet.getvalue())
            os.replace(partial, final)
        with lock:
            counter[0] += 1
            log.write(f"STORE {counter[0]} {uid} {status:04X}\n")
            log.flush()
        response = Dataset()
        response.Status = status
        if status == REFUSED:
            response.ErrorComment = f"refused on purpose ({args.refuse_mode})"
        return response

    ae = AE(ae_title=args.aet)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.start_server(
        ("127.0.0.1", args.port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, handle_store),
            (evt.EVT_CONN_OPEN, lambda event: handle_connection(event, True)),
            (evt.EVT_CONN_CLOSE, lambda event: handle_connection(event, False)),
        ],
    )
    print("READY", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
