"""The admin API against a running server (tests/it/web_admin.rs).

Reads a JSON request (base URL, users, the stored study, an unreachable
and a reachable device), checks every path and method of the server's
/api/openapi.json against the server itself, then access control and the
audit log, and makes a send fail for real. Prints one JSON line at the
end: {"failed_item": ID}. Any failed check raises (exit status 1).
"""

import json
import re
import socket
import sys
import time
from urllib.parse import urlsplit

import jsonschema
import requests
from openapi_spec_validator import validate as validate_spec

BOUND = 60  # seconds: only stops a check that would hang


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def login(base, name, password):
    session = requests.Session()
    r = session.post(f"{base}/api/login", json={"name": name, "password": password}, timeout=30)
    check(r.status_code == 200, f"login {name}: {r.status_code} {r.text}")
    token = r.json()["csrf"]
    check(session.get(f"{base}/api/session", timeout=30).json()["csrf"] == token, "session token")
    return session, token


def head_of(sock):
    """The status line and headers of the next answer on `sock` (lower case)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        check(chunk, f"the connection closed without an answer after {data!r}")
        data += chunk
    return data.split(b"\r\n\r\n")[0].decode().lower()


def refusals_before_the_body(base):
    """An answer given before the request's body arrived (a refusal) leaves
    the connection usable, or says `Connection: close`. The body is sent
    after a pause, as clients that send headers and body apart do."""
    address = urlsplit(base)
    request = (f"POST /api/studies/1.2.3/reprocess HTTP/1.1\r\nHost: {address.netloc}\r\n"
               "Content-Type: application/json\r\n")
    with socket.create_connection((address.hostname, address.port), timeout=BOUND) as sock:
        sock.sendall((request + "Content-Length: 2\r\n\r\n").encode())
        time.sleep(0.2)
        sock.sendall(b"{}")
        head = head_of(sock)
        check(head.startswith("http/1.1 401"), f"an anonymous change answered {head}")
        check("connection: close" not in head, f"a small body closed the connection: {head}")
        time.sleep(0.2)
        sock.sendall(f"GET /api/openapi.json HTTP/1.1\r\nHost: {address.netloc}\r\n\r\n".encode())
        head = head_of(sock)
        check(head.startswith("http/1.1 200"), f"the next request on the connection: {head}")
    with socket.create_connection((address.hostname, address.port), timeout=BOUND) as sock:
        sock.sendall((request + "Transfer-Encoding: chunked\r\n\r\n").encode())
        head = head_of(sock)
        check(head.startswith("http/1.1 401") and "connection: close" in head,
              f"a refusal leaving a chunked body unread does not say it closes: {head}")


def schema_of(spec, schema):
    """A response schema resolvable on its own (the components beside it)."""
    return {**schema, "components": spec["components"]}


def main():
    request = json.load(open(sys.argv[1]))
    base = request["base"]
    study = request["study_uid"]

    # Unauthenticated: reads and changes refused; the description is open.
    check(requests.get(f"{base}/api/studies", timeout=30).status_code == 401, "anonymous read")
    r = requests.delete(f"{base}/api/studies/{study}", json={"reason": "x"}, timeout=30)
    check(r.status_code == 401, f"anonymous delete answered {r.status_code}")
    r = requests.post(f"{base}/api/login", json={"name": "admin", "password": "wrong"}, timeout=30)
    check(r.status_code == 401, f"a wrong password answered {r.status_code}")
    r = requests.get(f"{base}/", allow_redirects=False, timeout=30)
    check(r.status_code in (302, 303, 307) and "/login" in r.headers.get("location", ""),
          f"an anonymous page view is not sent to /login: {r.status_code}")
    spec = requests.get(f"{base}/api/openapi.json", timeout=30).json()
    validate_spec(spec)
    refusals_before_the_body(base)

    admin, token = login(base, *request["admin"])
    viewer, viewer_token = login(base, *request["viewer"])
    changed = {"X-CSRF-Token": token}

    # Devices the scenario needs: ourselves (C-ECHO answers) and one whose
    # port nothing listens on (a send fails for real).
    for device in (request["self"], request["unreachable"]):
        r = admin.put(f"{base}/api/devices/{device['ae']}", headers=changed,
                      json={"host": "127.0.0.1", "port": device["port"]}, timeout=30)
        check(r.status_code in (200, 201), f"PUT device: {r.status_code} {r.text}")
    r = admin.post(f"{base}/api/devices/{request['self']['ae']}/echo", headers=changed, timeout=60)
    check(r.status_code == 200 and r.json()["ok"] is True, f"C-ECHO to ourselves: {r.text}")
    r = admin.post(f"{base}/api/devices/{request['unreachable']['ae']}/echo", headers=changed, timeout=60)
    check(r.status_code == 200 and r.json()["ok"] is False and r.json()["error"],
          f"C-ECHO to nowhere: {r.text}")

    # A send that fails for real: the item fails (max_failures = 1).
    r = admin.post(f"{base}/api/studies/{study}/send", headers=changed,
                   json={"destination": request["unreachable"]["ae"]}, timeout=30)
    check(r.status_code == 202, f"send: {r.status_code} {r.text}")
    failed_item = r.json()["work_item"]
    deadline = time.monotonic() + BOUND
    while True:
        item = admin.get(f"{base}/api/work-items/{failed_item}", timeout=30).json()
        if item["status"] == "failed":
            break
        check(time.monotonic() < deadline, f"the send never failed: {item}")
        time.sleep(0.2)
    check(item["failure_description"], f"no failure description: {item}")

    # Every path and method of the description, against the server.
    values = {"study": study, "ae": request["self"]["ae"], "id": str(failed_item)}
    queries = {"/api/rules/dry-run": {"study": study}}
    checked = 0
    for path, methods in spec["paths"].items():
        url = base + re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        for method, operation in methods.items():
            if method == "get":
                r = admin.get(url, params=queries.get(path), timeout=60)
                check(r.status_code == 200, f"GET {path}: {r.status_code} {r.text}")
                schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
                try:
                    jsonschema.validate(r.json(), schema_of(spec, schema))
                except jsonschema.ValidationError as e:
                    raise AssertionError(f"GET {path} does not match its schema: {e.message}")
            elif path == "/api/login":
                continue
            else:
                names = [p["name"] for p in operation.get("parameters", [])]
                check("X-CSRF-Token" in names, f"{method} {path} does not declare X-CSRF-Token")
                # Without the token: refused, and nothing happens.
                r = admin.request(method.upper(), url, json={}, timeout=30)
                check(r.status_code == 403, f"{method.upper()} {path} without CSRF: {r.status_code}")
                check("error" in r.json(), f"{method.upper()} {path}: no error member")
            checked += 1
    check(checked >= 24, f"only {checked} operations described")

    # CSRF: a wrong token is refused.
    r = admin.post(f"{base}/api/studies/{study}/reprocess", headers={"X-CSRF-Token": "0" * 32}, timeout=30)
    check(r.status_code == 403, f"a wrong CSRF token answered {r.status_code}")

    # A read-only user reads but cannot delete (even with its own token).
    check(viewer.get(f"{base}/api/studies/{study}", timeout=30).status_code == 200, "viewer read")
    r = viewer.delete(f"{base}/api/studies/{study}", headers={"X-CSRF-Token": viewer_token},
                      json={"reason": "not allowed"}, timeout=30)
    check(r.status_code == 403, f"a read-only delete answered {r.status_code} {r.text}")

    # Search and details see the stored study, where it is stored.
    found = admin.get(f"{base}/api/studies", params={"PatientID": request["patient_id"]}, timeout=30).json()
    check([s["StudyInstanceUID"] for s in found] == [study], f"search: {found}")
    details = admin.get(f"{base}/api/studies/{study}", timeout=30).json()
    check(len(details["instances"]) == request["instances"], f"instances: {details['instances']}")
    check(details["location"] and details["location"]["filesystem_path"], f"location: {details}")
    check(any(w["id"] == failed_item for w in details["work_items"]), "history lacks the send")

    # Changes are audited, refusals too; the read-only user's delete is.
    audit = admin.get(f"{base}/api/audit", params={"action": "admin.study.send"}, timeout=30).json()
    check(any(e["actor"] == "http:admin" and e["study_uid"] == study for e in audit),
          f"the send is not in the audit log: {audit}")
    refused = admin.get(f"{base}/api/audit", params={"action": "admin.refused"}, timeout=30).json()
    check(any(e["actor"] == "http:viewer" for e in refused), f"the refusal is not audited: {refused}")
    check(admin.get(f"{base}/api/studies/{study}", timeout=30).status_code == 200, "the study is gone")

    print(json.dumps({"failed_item": failed_item, "operations": checked}))


if __name__ == "__main__":
    main()
