"""A minimal Alertmanager webhook receiver: prints one line per alert it is notified about.

The docker-compose service ``alert-log`` runs it so that routed alerts are visible with
``docker compose logs -f alert-log``; point Alertmanager's receivers elsewhere for real paging.
Standard library only, so it runs in any Python 3 image.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            doc = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_error(400, "body is not JSON")
            return
        for alert in doc.get("alerts", []):
            labels = alert.get("labels", {})
            line = {
                "receiver": self.path.strip("/") or doc.get("receiver", ""),
                "status": alert.get("status", doc.get("status")),
                "alertname": labels.get("alertname"),
                "severity": labels.get("severity"),
                "topology": labels.get("topology"),
                "site": labels.get("site"),
                "summary": alert.get("annotations", {}).get("summary"),
                "startsAt": alert.get("startsAt"),
            }
            print(json.dumps(line, sort_keys=True), flush=True)
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:  # health check
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    # As PID 1 in a container SIGTERM would be ignored without a handler.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    print(f"alert-log listening on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
