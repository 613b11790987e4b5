"""A small HTTP proxy in front of an AWS emulator that injects the real AWS error responses.

moto and kinesalite never throttle and moto never expires iterators, so the reader's back-off and
iterator renewal are exercised by answering some GetRecords calls the way AWS does
(HTTP 400 with an `__type` error). It also records when each shard was polled, to check the
per-shard GetRecords rate. While `fail_describe` is set, the query-API Describe calls of the entity
lookups (EC2, ELB, RDS) get EC2's throttling answer (HTTP 503 `RequestLimitExceeded`). It notes
which credentials signed each AssumeRole call, to check role chains.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

THROTTLED_QUERY_CALL = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>RequestLimitExceeded</Code>'
    b"<Message>Request limit exceeded (injected by the test proxy).</Message></Error></Errors>"
    b"<RequestID>test</RequestID></Response>"
)


class FaultPolicy:
    """Which GetRecords calls fail: every `throttle_every`-th call, and one expiry per shard after
    `expire_after` successful calls on it."""

    def __init__(
        self,
        throttle_every: int = 0,
        expire_after: int = 0,
        throttle_first: int = 0,
        fail_describe=False,
        trimmed_through: int = 0,
    ):
        self.throttle_every = throttle_every
        self.expire_after = expire_after
        self.throttle_first = throttle_first
        self.fail_describe = fail_describe  # may be switched while the proxy runs
        # Records up to this sequence number count as trimmed (past retention), which neither moto nor
        # kinesalite ever answers: an AFTER_SEQUENCE_NUMBER iterator on one is refused as AWS does.
        self.trimmed_through = trimmed_through


class KinesisFaultProxy:
    def __init__(self, upstream: str, policy: FaultPolicy):
        self.upstream = urllib.parse.urlparse(upstream)
        self.policy = policy
        self.lock = threading.Lock()
        self.iterator_shard: dict[str, str] = {}
        self.polls: dict[str, list[float]] = defaultdict(list)  # shard -> times of GetRecords calls
        self.ok_calls: dict[str, int] = defaultdict(int)
        self.expired: set[str] = set()
        self.calls = 0
        self.describe_calls = 0
        self.assumed: list[tuple[str, str]] = []  # (role ARN, access key id that signed AssumeRole)
        self.injected: dict[str, int] = defaultdict(int)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _decide(self, target: str, body: dict) -> str | None:
        if target.endswith(".GetShardIterator"):
            sequence = body.get("StartingSequenceNumber", "")
            if sequence.isdigit() and int(sequence) <= self.policy.trimmed_through:
                return "InvalidArgumentException"
            return None
        if not target.endswith(".GetRecords"):
            return None
        with self.lock:
            shard = self.iterator_shard.get(body.get("ShardIterator", ""), "?")
            self.polls[shard].append(time.monotonic())
            self.calls += 1
            p = self.policy
            if self.calls <= p.throttle_first or (p.throttle_every and self.calls % p.throttle_every == 0):
                return "ProvisionedThroughputExceededException"
            if p.expire_after and shard not in self.expired and self.ok_calls[shard] >= p.expire_after:
                self.expired.add(shard)
                return "ExpiredIteratorException"
            self.ok_calls[shard] += 1
        return None

    def _learn(self, target: str, request: dict, response: dict) -> None:
        with self.lock:
            if target.endswith(".GetShardIterator") and "ShardIterator" in response:
                self.iterator_shard[response["ShardIterator"]] = request.get("ShardId", "?")
            elif target.endswith(".GetRecords") and response.get("NextShardIterator"):
                shard = self.iterator_shard.get(request.get("ShardIterator", ""), "?")
                self.iterator_shard[response["NextShardIterator"]] = shard

    def _handler(proxy):  # noqa: N805 - the handler closes over the proxy
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                target = self.headers.get("X-Amz-Target", "")
                try:
                    request = json.loads(raw) if raw else {}
                except ValueError:
                    request = {}
                if raw.startswith(b"Action=AssumeRole&"):
                    role = urllib.parse.parse_qs(raw.decode()).get("RoleArn", ["?"])[0]
                    signer = self.headers.get("Authorization", "").partition("Credential=")[2].split("/")[0]
                    with proxy.lock:
                        proxy.assumed.append((role, signer))
                if b"Action=Describe" in raw[:200]:
                    with proxy.lock:
                        proxy.describe_calls += 1
                        failing = proxy.policy.fail_describe
                        proxy.injected["RequestLimitExceeded"] += failing
                    if failing:
                        self._reply(503, THROTTLED_QUERY_CALL, {"Content-Type": "text/xml"})
                        return
                fault = proxy._decide(target, request)
                if fault:
                    with proxy.lock:
                        proxy.injected[fault] += 1
                    message = f"{fault} (injected by the test proxy)"
                    if fault == "InvalidArgumentException":
                        message = (
                            f"StartingSequenceNumber {request.get('StartingSequenceNumber')} used in "
                            f"GetShardIterator on shard {request.get('ShardId')} is no longer available: "
                            "it is past the stream's retention (injected by the test proxy)"
                        )
                    body = json.dumps({"__type": fault, "message": message})
                    self._reply(400, body.encode(), {"Content-Type": "application/x-amz-json-1.1"})
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "connection"}}
                conn.request("POST", self.path, body=raw, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                if answer.status == 200 and target.startswith("Kinesis_"):
                    try:
                        proxy._learn(target, request, json.loads(data))
                    except ValueError:
                        pass
                passthrough = {
                    k: v
                    for k, v in answer.getheaders()
                    if k.lower() not in {"content-length", "connection", "transfer-encoding"}
                }
                conn.close()
                self._reply(answer.status, data, passthrough)

            def _reply(self, status: int, data: bytes, headers: dict):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def max_polls_per_second(self) -> dict[str, int]:
        """Per shard, the most GetRecords calls seen in any 1-second window."""
        result = {}
        with self.lock:
            for shard, times in self.polls.items():
                best = 0
                j = 0
                for i, t in enumerate(times):
                    while times[j] <= t - 1.0:
                        j += 1
                    best = max(best, i - j + 1)
                result[shard] = best
        return result
