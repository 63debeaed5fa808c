"""A local HTTP(S) image server for template sources: the image served honestly, and servers that
misbehave (truncate, stall, lie about length, redirect forever). Listens on 127.0.0.1 only, in a
thread; HTTPS with a self-signed certificate made by ``openssl`` that the test trusts through
``DISKLEDGER_CA_BUNDLE``."""

from __future__ import annotations

import hashlib
import http.server
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ImageServer", "make_certificate", "make_image", "serving"]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (EC P-256: quick to make) and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def make_image(path: Path, size: str = "64M", data: str = "3M") -> bytes:
    """A real qcow2 image made by ``qemu-img create``, with a few MiB of data written into it so
    that a download takes more than one read; returns its bytes."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data}", str(path)],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


class ImageServer:
    """What the handler serves, and how many requests each path had."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.sha256 = hashlib.sha256(image).hexdigest()
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[str | None, str | None]] = []
        """(Range, If-Range) of every request to /resumable."""
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.base = ""

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def _handler(state: ImageServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the connection closes after each answer

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with state.lock:
                state.requests[path] += 1
            image = state.image
            try:
                if path.startswith("/image"):
                    self._answer(200, image, length=len(image))
                elif path == "/redirect":
                    self._redirect("/image.qcow2")
                elif path == "/loop":
                    self._redirect("/loop")
                elif path == "/to-file":
                    self._redirect("file:///etc/passwd")
                elif path == "/truncated":  # announces more than it sends
                    self._answer(200, image[: len(image) // 2], length=len(image))
                elif path == "/stall":  # sends a little, then nothing
                    self._head(200, length=len(image))
                    self.wfile.write(image[:65536])
                    self.wfile.flush()
                    state.stop.wait(10)
                elif path == "/endless":  # no Content-Length, more than any small ceiling
                    self._head(200, length=None)
                    for _ in range(64):
                        self.wfile.write(b"\0" * (1 << 20))
                elif path == "/announces-huge":
                    self._answer(200, image, length=1 << 40)
                elif path == "/resumable":  # cut short the first time; takes ranges
                    self._resumable(image)
                elif path == "/flaky":  # 503 the first time, the image after
                    if state.requests[path] == 1:
                        self._answer(503, b"busy", length=4)
                    else:
                        self._answer(200, image, length=len(image))
                elif path == "/slow.qcow2":  # the image in pieces, slowly (for concurrent callers)
                    self._head(200, length=len(image))
                    step = len(image) // 8 + 1
                    for offset in range(0, len(image), step):
                        self.wfile.write(image[offset : offset + step])
                        self.wfile.flush()
                        time.sleep(0.05)
                else:
                    self._answer(404, b"not found", length=9)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass

        def _resumable(self, image: bytes) -> None:
            asked, condition = self.headers.get("Range"), self.headers.get("If-Range")
            with state.lock:
                state.ranges.append((asked, condition))
                first = len(state.ranges) == 1
            validators = {"ETag": '"v1"', "Accept-Ranges": "bytes"}
            if asked and condition == '"v1"' and asked.startswith("bytes=") and asked.endswith("-"):
                start = int(asked[len("bytes=") : -1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(image) - 1}/{len(image)}")
                for name, value in validators.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(image) - start))
                self.end_headers()
                self.wfile.write(image[start:])
                return
            self.send_response(200)
            for name, value in validators.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image[: len(image) // 3] if first else image)

        def _head(self, status: int, *, length: int | None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()

        def _answer(self, status: int, body: bytes, *, length: int) -> None:
            self._head(status, length=length)
            self.wfile.write(body)

        def _redirect(self, target: str) -> None:
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@contextmanager
def serving(image: bytes, *, cert: tuple[Path, Path] | None) -> Iterator[ImageServer]:
    """Serve ``image`` (and the misbehaving paths) on 127.0.0.1 in a thread, over HTTPS when
    ``cert`` is given; stopped, with every stalled answer released, on exit."""
    state = ImageServer(image)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    scheme = "http"
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert[0]), str(cert[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    state.base = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
