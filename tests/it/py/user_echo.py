#!/usr/bin/env python3
"""C-ECHO over TLS (server authentication only) with a User Identity
(PS3.7 D.3.3.7, username and passcode, positive response requested), with
pynetdicom: Debian's echoscu has no user identity options.

usage: user_echo.py HOST PORT CALLED_AE CA [USERNAME PASSCODE]
Exits 0 when the association is accepted and C-ECHO succeeds; prints
"server response" when the A-ASSOCIATE-AC carried the User Identity
server response, "rejected" when the association was rejected.
"""

import ssl
import sys

from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification


def main():
    host, port, called, ca = sys.argv[1:5]
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ext_neg = []
    if len(sys.argv) > 6:
        user = UserIdentityNegotiation()
        user.user_identity_type = 2
        user.primary_field = sys.argv[5].encode()
        user.secondary_field = sys.argv[6].encode()
        user.positive_response_requested = True
        ext_neg.append(user)
    ae = AE(ae_title="ITSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        host, int(port), ae_title=called, ext_neg=ext_neg, tls_args=(context, host)
    )
    if assoc.is_rejected:
        print("rejected")
        return 1
    if not assoc.is_established:
        print("not established")
        return 2
    if assoc.acceptor.user_identity is not None:
        print("server response")
    status = assoc.send_c_echo()
    assoc.release()
    return 0 if status and status.Status == 0x0000 else 3


if __name__ == "__main__":
    sys.exit(main())
