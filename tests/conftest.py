"""Shared fixtures: a real moto_server on 127.0.0.1, reset between tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from tests.graylog_receiver import (  # noqa: F401 (the `graylog_receiver` fixture)
    ReceiverProcess,
    graylog_receiver_fixture,
)

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def no_stop_request():
    """A stop requested by one test (shutdown of the Kinesis reader) must not leak into the next."""
    from transforms import stopping

    stopping.clear_stop()
    yield
    stopping.clear_stop()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    """A moto_server process on a free loopback port, for the whole session."""
    from pipelines.demo import MotoServer

    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def moto(moto_endpoint, monkeypatch) -> str:
    """The moto endpoint, wiped clean, with test credentials in the environment."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).read()
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return moto_endpoint


def aws_client(service: str, endpoint: str, region: str = REGION):
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def subprocess_env(moto) -> dict[str, str]:
    """Environment for a pipeline run as a subprocess against the moto endpoint."""
    env = dict(os.environ)
    env.update(CREDENTIALS)
    env["AWS_DEFAULT_REGION"] = REGION
    env["PYTHONPATH"] = str(REPO)
    return env


NODE_DIR = REPO / "tests" / "node"


def start_node(script: str, *args: str, cwd: Path = NODE_DIR) -> tuple[subprocess.Popen, int]:
    """Starts a Node.js helper that prints `READY <port>` once it listens."""
    if not (NODE_DIR / "node_modules").is_dir():
        raise RuntimeError("tests/node/node_modules is missing: run `make test` (it runs npm ci there).")
    proc = subprocess.Popen(
        ["node", script, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"{script} did not start: {line!r} {proc.stderr.read()}")
    return proc, int(line.split()[1])


@pytest.fixture
def kinesalite() -> str:
    """kinesalite on 127.0.0.1: a Kinesis emulator that routes writes to child shards after a split."""
    proc, port = start_node("kinesalite_local.js")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


RECEIVER_JS = REPO / "tests" / "gelf_receiver.js"


class NodeReceiver(ReceiverProcess):
    """tests/gelf_receiver.js as a subprocess."""

    name = "gelf_receiver.js"

    def __init__(self, directory: Path, protocol: str, *extra: str, port: int = 0):
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed: the GELF end-to-end tests need Node.js (see tests/node)")
        if not (NODE_DIR / "node_modules" / "graygelf" / "server.js").is_file():
            pytest.fail("graygelf is missing: run `npm install` in tests/node (make test does)")
        self.out = directory / f"received-{protocol}-{time.monotonic_ns()}.jsonl"
        self.requests_log = self.out.with_suffix(".requests.jsonl")
        command = [
            node,
            str(RECEIVER_JS),
            "--protocol",
            protocol,
            "--port",
            str(port),
            "--out",
            str(self.out),
        ]
        if protocol == "http":
            command += ["--requests", str(self.requests_log)]
        self._launch(command + list(extra), self.out.with_suffix(".stderr"), ready_timeout=15.0)

    def messages(self) -> list[dict]:
        return self.records()

    def requests(self) -> list[dict]:
        return self.json_lines(self.requests_log)


@pytest.fixture
def gelf_udp(tmp_path):
    receiver = NodeReceiver(tmp_path, "udp")
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost made with the openssl CLI."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
