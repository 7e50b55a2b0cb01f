#!/usr/bin/env python3
"""A syslog audit record repository for the audit tests.

Listens on 127.0.0.1 for RFC 5426 UDP datagrams and RFC 6587 octet-counted
TCP frames (and, with --tls-port, the same frames over TLS, RFC 5425), checks each message's RFC 5424 header, parses its DICOM audit
message XML (PS3.15 A.5.1) with the standard library, and appends one JSON
line per message to --out (flushed at once, so a killed receiver has
written everything it took). Prints "ready" once both sockets listen.
"""

import argparse
import base64
import json
import re
import socket
import socketserver
import ssl
import sys
import threading
import xml.etree.ElementTree as ET

HEADER = re.compile(
    r"^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (\S+) (\S+) (\S+) (\S+) - \ufeff"
)
LOCK = threading.Lock()
OUT = None


def summarize(raw, transport):
    record = {"transport": transport}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        record["error"] = f"not UTF-8: {e}"
        return record
    m = HEADER.match(text)
    if not m:
        record["error"] = "bad RFC 5424 header: " + text[:120]
        return record
    record["pri"] = int(m.group(1))
    record["app"] = m.group(4)
    record["procid"] = m.group(5)
    record["msgid"] = m.group(6)
    try:
        root = ET.fromstring(text[m.end():].encode("utf-8"))
    except ET.ParseError as e:
        record["error"] = f"XML: {e}"
        return record
    if root.tag != "AuditMessage":
        record["error"] = f"root element {root.tag}"
        return record
    ident = root.find("EventIdentification")
    event_id = ident.find("EventID") if ident is not None else None
    if ident is None or event_id is None:
        record["error"] = "no EventIdentification/EventID"
        return record
    record["event_id"] = event_id.get("csd-code")
    record["event_scheme"] = event_id.get("codeSystemName")
    record["action"] = ident.get("EventActionCode")
    record["outcome"] = ident.get("EventOutcomeIndicator")
    record["datetime"] = ident.get("EventDateTime")
    type_code = ident.find("EventTypeCode")
    record["event_type"] = type_code.get("csd-code") if type_code is not None else None
    record["participants"] = []
    for p in root.findall("ActiveParticipant"):
        role = p.find("RoleIDCode")
        record["participants"].append({
            "user_id": p.get("UserID"),
            "user_name": p.get("UserName"),
            "requestor": p.get("UserIsRequestor"),
            "address": p.get("NetworkAccessPointID"),
            "role": role.get("csd-code") if role is not None else None,
        })
    source = root.find("AuditSourceIdentification")
    record["source_id"] = source.get("AuditSourceID") if source is not None else None
    record["objects"] = []
    for o in root.findall("ParticipantObjectIdentification"):
        id_type = o.find("ParticipantObjectIDTypeCode")
        query = o.find("ParticipantObjectQuery")
        record["objects"].append({
            "id": o.get("ParticipantObjectID"),
            "type": o.get("ParticipantObjectTypeCode"),
            "role": o.get("ParticipantObjectTypeCodeRole"),
            "id_type": id_type.get("csd-code") if id_type is not None else None,
            "sop_classes": {
                c.get("UID"): int(c.get("NumberOfInstances"))
                for c in o.findall("SOPClass")
            },
            "query_bytes": len(base64.b64decode(query.text)) if query is not None else None,
        })
    return record


def emit(raw, transport):
    record = summarize(raw, transport)
    with LOCK:
        OUT.write(json.dumps(record) + "\n")
        OUT.flush()


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        emit(self.request[0], "udp")


class Tcp(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            length = b""
            while True:
                c = self.rfile.read(1)
                if not c:
                    return
                if c == b" ":
                    break
                if not c.isdigit() or len(length) > 9:
                    emit(b"", "tcp-bad-frame")
                    return
                length += c
            body = self.rfile.read(int(length))
            if len(body) < int(length):
                return
            emit(body, self.server.transport)


class ReusableUdp(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True


class ReusableTcp(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    transport = "tcp"


class TlsTcp(ReusableTcp):
    transport = "tls"
    context = None

    def get_request(self):
        sock, address = self.socket.accept()
        try:
            return self.context.wrap_socket(sock, server_side=True), address
        except (ssl.SSLError, OSError):
            sock.close()
            raise


def main():
    global OUT
    parser = argparse.ArgumentParser()
    parser.add_argument("--udp-port", type=int, required=True)
    parser.add_argument("--tcp-port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tls-port", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    OUT = open(args.out, "a", encoding="utf-8")
    udp = ReusableUdp(("127.0.0.1", args.udp_port), Udp)
    tcp = ReusableTcp(("127.0.0.1", args.tcp_port), Tcp)
    servers = [udp, tcp]
    if args.tls_port:
        TlsTcp.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        TlsTcp.context.load_cert_chain(args.cert, args.key)
        servers.append(TlsTcp(("127.0.0.1", args.tls_port), Tcp))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    # Runs until the test kills it (by its pid).
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
