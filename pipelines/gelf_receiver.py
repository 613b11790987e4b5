"""A small GELF receiver, for the demo and for debugging what a pipeline sends.

It listens on one local port (UDP, TCP or HTTP), decodes GELF the way Graylog's inputs do (UDP chunks,
gzip/zlib/plain payloads, 0x00-framed TCP, POST /gelf with Content-Encoding and newline bulk bodies) and
keeps the decoded messages. It is deliberately a separate decoder from `transforms.gelf`, so it does not
share that module's mistakes.

    python -m pipelines.gelf_receiver --protocol udp --port 12201
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import socket
import socketserver
import sys
import threading
import time
import zlib
from collections.abc import Callable

#: Graylog drops a chunk set that is not complete this long after its first chunk.
CHUNK_TIMEOUT_SECONDS = 5.0
MAX_CHUNKS = 128


def decode_payload(data: bytes) -> list[dict]:
    """The GELF messages in one complete (reassembled) payload: gzip, zlib or plain JSON, possibly
    several newline-separated documents (bulk). Raises ValueError for anything else."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif len(data) >= 2 and data[0] == 0x78 and ((data[0] << 8) | data[1]) % 31 == 0:
        data = zlib.decompress(data)
    text = data.decode("utf-8")
    try:
        documents = [json.loads(text)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    for document in documents:
        if not isinstance(document, dict):
            raise ValueError(f"a GELF message is a JSON object, not {type(document).__name__}")
    return documents


class GelfReceiver:
    """Receives GELF on 127.0.0.1 in background threads; `messages` holds what arrived, in order.

    `port=0` picks a free port (read it from `.port` after `start()`).
    """

    def __init__(
        self,
        protocol: str = "udp",
        port: int = 0,
        host: str = "127.0.0.1",
        on_message: Callable[[dict], None] | None = None,
    ):
        if protocol not in ("udp", "tcp", "http"):
            raise ValueError(f"protocol must be udp, tcp or http, not {protocol!r}")
        self.protocol = protocol
        self.host = host
        self.port = port
        self._on_message = on_message
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._messages: list[dict] = []
        self.errors = 0
        self.datagrams = 0
        self.requests = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: socketserver.BaseServer | None = None
        self._sock: socket.socket | None = None
        self._chunks: dict[bytes, tuple[float, list[bytes | None]]] = {}

    # ---- results -------------------------------------------------------------------------------------

    @property
    def messages(self) -> list[dict]:
        with self._lock:
            return list(self._messages)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Waits until at least `count` messages arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
            return True

    def _accept(self, data: bytes) -> None:
        try:
            documents = decode_payload(data)
        except (ValueError, OSError, EOFError, zlib.error, UnicodeDecodeError):
            with self._lock:
                self.errors += 1
            return
        with self._arrived:
            self._messages.extend(documents)
            self._arrived.notify_all()
        if self._on_message is not None:
            for document in documents:
                self._on_message(document)

    def _error(self) -> None:
        with self._lock:
            self.errors += 1

    # ---- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> GelfReceiver:
        if self.protocol == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for size in (32 << 20, 8 << 20, 4 << 20, 1 << 20):  # bursts on loopback must not be dropped
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                    break
                except OSError:
                    continue
            sock.bind((self.host, self.port))
            sock.settimeout(0.2)
            self._sock = sock
            self.port = sock.getsockname()[1]
            self._spawn(self._serve_udp)
        else:
            handler = _TcpHandler if self.protocol == "tcp" else _HttpHandler
            server = _Server((self.host, self.port), handler)
            server.receiver = self
            self._server = server
            self.port = server.server_address[1]
            self._spawn(lambda: server.serve_forever(poll_interval=0.2))
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> GelfReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"gelf-receiver-{self.protocol}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # ---- UDP -----------------------------------------------------------------------------------------

    def _serve_udp(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            try:
                data = sock.recv(65535)
            except TimeoutError:
                self._expire_chunks()
                continue
            except OSError:
                return
            with self._lock:
                self.datagrams += 1
            if data[:2] == b"\x1e\x0f":
                data = self._reassemble(data)
                if data is None:
                    continue
            self._accept(data)

    def _reassemble(self, datagram: bytes) -> bytes | None:
        """Adds one chunk; returns the whole payload once every chunk of its message arrived."""
        if len(datagram) < 12:
            self._error()
            return None
        message_id, seq, count = datagram[2:10], datagram[10], datagram[11]
        now = time.monotonic()
        started, parts = self._chunks.setdefault(message_id, (now, [None] * max(count, 1)))
        if count == 0 or count > MAX_CHUNKS or seq >= len(parts) or now - started > CHUNK_TIMEOUT_SECONDS:
            self._chunks.pop(message_id, None)
            self._error()
            return None
        if parts[seq] is None:
            parts[seq] = datagram[12:]
        if any(part is None for part in parts):
            return None
        del self._chunks[message_id]
        return b"".join(parts)

    def _expire_chunks(self) -> None:
        now = time.monotonic()
        for message_id, (started, _) in list(self._chunks.items()):
            if now - started > CHUNK_TIMEOUT_SECONDS:
                del self._chunks[message_id]
                self._error()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: GelfReceiver

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the host; plain TCPServer binding suffices.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _TcpHandler(socketserver.BaseRequestHandler):
    """0x00-framed GELF on one connection."""

    def handle(self) -> None:
        receiver: GelfReceiver = self.server.receiver
        pending = b""
        while True:
            data = self.request.recv(1 << 16)
            if not data:
                break
            pending += data
            *frames, pending = pending.split(b"\x00")
            for frame in frames:
                if len(frame) < 2:  # Graylog logs an error and closes the connection
                    receiver._error()
                    return
                receiver._accept(frame)
        if pending.strip():
            receiver._accept(pending)  # Graylog processes an unterminated last frame on close


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    """POST /gelf, answered 202 like Graylog."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        receiver: GelfReceiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with receiver._lock:
            receiver.requests += 1
        if self.path != "/gelf":
            self._answer(404)
            return
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        try:
            if encoding in ("gzip", "x-gzip"):
                body = gzip.decompress(body)
            elif encoding in ("deflate", "x-deflate"):
                body = zlib.decompress(body)
        except (OSError, EOFError, zlib.error):
            receiver._error()
            self._answer(400)
            return
        self._answer(202)
        receiver._accept(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(405)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Receive GELF on 127.0.0.1 and print each message.")
    parser.add_argument("--protocol", choices=("udp", "tcp", "http"), default="udp")
    parser.add_argument("--port", type=int, default=12201)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    args = parser.parse_args(argv)

    def show(message: dict) -> None:
        print(json.dumps(message, ensure_ascii=False), flush=True)

    receiver = GelfReceiver(args.protocol, args.port, args.host, on_message=show).start()
    print(f"listening for GELF {args.protocol} on {args.host}:{receiver.port}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
        print(f"{receiver.count} messages, {receiver.errors} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
