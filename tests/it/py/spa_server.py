#!/usr/bin/env python3
"""Static file server for a single-page application (the OHIF viewer's
prebuilt dist/) on loopback, for the OHIF integration test.

    spa_server.py --root DIST --config APP_CONFIG_JS --port PORT

Serves files under --root; /app-config.js is --config instead (the test's
configuration, so the shared cached dist/ is never modified); any other
path that names no file is index.html (the SPA's client-side routes, as the
package's own serve.json rewrites them). Prints "ready PORT" once
listening; serves until killed.
"""

import argparse
import http.server
import os
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    root = os.path.realpath(args.root)

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {
            **http.server.SimpleHTTPRequestHandler.extensions_map,
            ".wasm": "application/wasm",
            ".js": "text/javascript",
            ".mjs": "text/javascript",
        }

        def __init__(self, *a, **kw):
            super().__init__(*a, directory=root, **kw)

        def translate_path(self, path):
            clean = path.split("?", 1)[0].split("#", 1)[0]
            if clean == "/app-config.js":
                return os.path.realpath(args.config)
            translated = super().translate_path(path)
            if os.path.isfile(translated):
                return translated
            return os.path.join(root, "index.html")

        def log_message(self, fmt, *values):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"ready {args.port}", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
