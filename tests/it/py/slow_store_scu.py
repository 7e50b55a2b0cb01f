"""One association that stores files slowly: a pause between C-STOREs.

usage: slow_store_scu.py HOST PORT CALLED_AE PAUSE_SECS FILE...

Exits 0 only when every file was stored with status 0000 and the
association was released normally; 1 otherwise (an abort, a refusal, a
failure status), printing why. The cluster test holds it open on a node
while the node drains: a drain must let it finish.
"""
import sys
import time

from pydicom import dcmread
from pynetdicom import AE

host, port, called, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
files = sys.argv[5:]
datasets = [dcmread(path) for path in files]
ae = AE(ae_title="SLOWSCU")
ae.acse_timeout = 10
ae.dimse_timeout = 60
ae.network_timeout = 60
for sop_class in sorted({ds.SOPClassUID for ds in datasets}):
    ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1"])
assoc = ae.associate(host, port, ae_title=called)
if not assoc.is_established:
    print("association not established")
    sys.exit(1)
for n, ds in enumerate(datasets):
    status = assoc.send_c_store(ds)
    if not status or status.Status != 0:
        print(f"store {n} failed: {status}")
        assoc.abort()
        sys.exit(1)
    time.sleep(pause)
assoc.release()
if assoc.is_aborted or not assoc.is_released:
    print("association not released normally")
    sys.exit(1)
print(f"stored {len(datasets)}")
