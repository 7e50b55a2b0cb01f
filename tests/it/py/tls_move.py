#!/usr/bin/env python3
"""C-MOVE (Study Root) over TLS with pynetdicom: DCMTK's movescu has no TLS.

usage: tls_move.py HOST PORT CALLED_AE CALLING_AE DESTINATION STUDY_UID CA CERT KEY
Prints each response's status; exits 0 when the final status is Success.
"""

import ssl
import sys

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove


def main():
    host, port, called, calling, destination, study, ca, cert, key = sys.argv[1:10]
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(host, int(port), ae_title=called, tls_args=(context, host))
    if not assoc.is_established:
        print("association not established")
        return 2
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    final = None
    for status, _ in assoc.send_c_move(
        identifier, destination, StudyRootQueryRetrieveInformationModelMove
    ):
        if status is not None and "Status" in status:
            print(f"status 0x{status.Status:04X}")
            final = status.Status
    assoc.release()
    return 0 if final == 0x0000 else 1


if __name__ == "__main__":
    sys.exit(main())
