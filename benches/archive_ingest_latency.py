"""The C-STORE probe of benches/archive_ingest_latency.rs: stores the
given Part 10 files on one association (pynetdicom, Explicit VR Little
Endian as stored) and prints one JSON object: each C-STORE's latency
(request sent to response received) in milliseconds, and the statuses that
were not success.

Arguments: host port called-AE files...
"""

import json
import sys
import time

from pydicom import dcmread
from pynetdicom import AE

EXPLICIT = "1.2.840.10008.1.2.1"


def main():
    host, port, called = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    datasets = [dcmread(path) for path in sys.argv[4:]]
    ae = AE(ae_title="LATENCYPROBE")
    # A slow response is a figure, not a failure.
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [EXPLICIT])
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        print(json.dumps({"error": "association refused"}))
        sys.exit(1)
    latencies, failures = [], []
    for ds in datasets:
        if not assoc.is_established:
            print(json.dumps({"error": "association lost", "latencies_ms": latencies}))
            sys.exit(1)
        start = time.perf_counter()
        status = assoc.send_c_store(ds)
        latencies.append((time.perf_counter() - start) * 1000.0)
        code = getattr(status, "Status", None)
        if code != 0:
            failures.append(code)
    assoc.release()
    print(json.dumps({"latencies_ms": latencies, "failures": failures}))


if __name__ == "__main__":
    main()
