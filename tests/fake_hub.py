"""A stand-in for the Hugging Face hub on 127.0.0.1, speaking the part of its protocol that
`huggingface_hub.hf_hub_download` uses: HEAD and GET on /<org>/<name>/resolve/<revision>/<file>,
answered with the headers the real hub sends (X-Repo-Commit, ETag, Content-Length). Point
HF_ENDPOINT at `FakeHub.url` and the real download code runs against it."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, files: dict[str, Path]):
        """files: {"org/name/filename": local path}."""
        self.files, self.requests = files, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, with_body: bool):
                hub.requests.append((self.command, self.path))
                parts = self.path.split("?")[0].strip("/").split("/")  # org, name, "resolve", revision, file...
                key = "/".join(parts[:2] + parts[4:]) if len(parts) >= 5 and parts[2] == "resolve" else None
                if key not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = hub.files[key].read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self):
                self._answer(with_body=False)

            def do_GET(self):
                self._answer(with_body=True)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
