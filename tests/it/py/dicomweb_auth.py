"""DICOMweb access for non-browser clients (tests/it/web_admin.rs):
dicomweb-client with and without HTTP Basic credentials against a server
whose DICOMweb is `authenticated`.

Reads a JSON request (argv[1]): {"base": URL root, "admin": [name, pw],
"viewer": [name, pw] (read-only), "study_uid": a stored study, "stow": a
Part 10 file to store}. Checks, in order (the failure throttle last: it
locks out this address for a minute):
- without credentials: 401 with a Basic `WWW-Authenticate` challenge;
- the read-only user's Basic credentials: searches and retrieves (200),
  STOW refused (403);
- the admin's: STOW stores (and a search then finds it);
- `Authorization: Bearer` with the token /api/login answers: reads;
- a wrong password: 401; repeated failures: 429 with Retry-After, while
  the read-only user's credentials (verified just before) still read.
Prints one JSON line {"ok": true} at the end; any failed check raises.
"""

import json
import sys

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError

TIMEOUT = 60  # seconds: only stops a check that would hang


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def client(url, auth=None, headers=None):
    session = requests.Session()
    session.auth = auth
    if headers:
        session.headers.update(headers)
    return DICOMwebClient(url=url, session=session)


def refused(call):
    """The HTTP status of the error `call` raises (None: it succeeded)."""
    try:
        call()
    except HTTPError as error:
        return error.response
    return None


def main():
    request = json.load(open(sys.argv[1]))
    base = request["base"]
    root = f"{base}/dicom-web"
    study = request["study_uid"]
    admin, viewer = tuple(request["admin"]), tuple(request["viewer"])

    # Anonymous: refused with a challenge a client can answer.
    answer = refused(lambda: client(root).search_for_studies())
    check(answer is not None and answer.status_code == 401,
          f"an anonymous search was not refused with 401: {answer and answer.status_code}")
    challenge = answer.headers.get("WWW-Authenticate", "")
    check(challenge.lower().startswith("basic "), f"no Basic challenge: {challenge!r}")

    # The read-only user reads, cannot store.
    reader = client(root, auth=viewer)
    studies = reader.search_for_studies()
    found = {s["0020000D"]["Value"][0] for s in studies}
    check(study in found, f"the read-only user's search misses the study: {found}")
    instances = reader.retrieve_study(study)
    check(len(instances) >= 1, "the read-only user retrieved nothing")
    stow = pydicom.dcmread(request["stow"])
    answer = refused(lambda: reader.store_instances([stow]))
    check(answer is not None and answer.status_code == 403,
          f"the read-only user's STOW was not refused with 403: {answer and answer.status_code}")

    # The admin stores.
    writer = client(root, auth=admin)
    writer.store_instances([stow])
    matches = writer.search_for_studies(search_filters={"StudyInstanceUID": stow.StudyInstanceUID})
    check(len(matches) == 1, f"the admin's STOW is not found: {matches}")

    # A bearer token from /api/login.
    r = requests.post(f"{base}/api/login", json={"name": viewer[0], "password": viewer[1]},
                      timeout=TIMEOUT)
    check(r.status_code == 200 and r.json().get("token"), f"login: {r.status_code} {r.text}")
    bearer = client(root, headers={"Authorization": f"Bearer {r.json()['token']}"})
    check(len(bearer.search_for_studies()) >= 1, "the bearer token reads nothing")
    answer = refused(lambda: client(root, headers={"Authorization": "Bearer x:1:y:z"}).search_for_studies())
    check(answer is not None and answer.status_code == 401, "a forged bearer token was let in")

    # A wrong password, then failures until throttled.
    answer = refused(lambda: client(root, auth=(viewer[0], "wrong")).search_for_studies())
    check(answer is not None and answer.status_code == 401,
          f"a wrong password was not refused with 401: {answer and answer.status_code}")
    statuses = []
    for _ in range(6):
        r = requests.get(f"{root}/studies", auth=("intruder", "guess"), timeout=TIMEOUT)
        statuses.append(r.status_code)
        if r.status_code == 429:
            check(r.headers.get("Retry-After") == "60", f"429 without Retry-After: {r.headers}")
            break
    check(statuses[-1] == 429 and set(statuses[:-1]) <= {401},
          f"repeated failures were not throttled: {statuses}")
    r = requests.post(f"{base}/api/login", json={"name": admin[0], "password": admin[1]},
                      timeout=TIMEOUT)
    check(r.status_code == 429, f"a login from a throttled address answered {r.status_code}")
    # Credentials verified within the minute are remembered: no argon2, no
    # throttle.
    check(len(reader.search_for_studies()) >= 1, "the remembered credentials stopped working")
    print(json.dumps({"ok": True, "throttled_after": statuses}))


if __name__ == "__main__":
    main()
