"""Resumable bundle downloads against a real HTTP server that breaks connections on purpose."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgedl.agent.fleet.download import download
from edgedl.errors import FleetError

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


@dataclass
class Server:
    """Serves DATA at /b.tar; cuts the first response after ``cut_at`` bytes when set."""

    cut_at: int | None = None
    ranges: bool = True
    seen: list[str | None] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != "/b.tar":
                self.send_error(404)
                return
            asked = self.headers.get("Range")
            state.seen.append(asked)
            start = int(asked[6:].rstrip("-")) if asked and state.ranges else 0
            body = DATA[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_at is not None and len(state.seen) == 1:
                self.wfile.write(body[: state.cut_at])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_a_download_cut_half_way_resumes_from_there(server: Server, tmp_path: Path) -> None:
    server.cut_at = len(DATA) // 2
    path = download(f"{server.url}/b.tar", tmp_path / "b.tar", SHA, len(DATA), retry_min_s=0.01)
    assert path.read_bytes() == DATA
    assert server.seen == [None, f"bytes={len(DATA) // 2}-"]
    assert not (tmp_path / "b.tar.part").exists()


def test_a_server_without_ranges_means_starting_over(server: Server, tmp_path: Path) -> None:
    server.cut_at, server.ranges = 100_000, False
    path = download(f"{server.url}/b.tar", tmp_path / "b.tar", SHA, len(DATA), retry_min_s=0.01)
    assert path.read_bytes() == DATA  # the 200 replaced the part instead of being appended
    assert len(server.seen) == 2


def test_a_wrong_sha256_or_a_refusal_leaves_nothing(server: Server, tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="altered on the way"):
        download(f"{server.url}/b.tar", tmp_path / "b.tar", "0" * 64, len(DATA))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FleetError, match="HTTP 404"):
        download(f"{server.url}/missing.tar", tmp_path / "m.tar", SHA, len(DATA))
