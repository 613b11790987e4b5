"""The Graylog GELF receiver (tests/graylog) itself: hand-made GELF bytes on plain sockets.

These tests pin what Graylog 6.3.7's own input classes do with what arrives, so the end-to-end tests can trust
the receiver as "what Graylog stores", and they show the receiver is Graylog's code and not a model of it:
behaviour only Graylog's classes have (chunk aggregation, its field rules, its NUL framing, its HTTP bulk
splitting and keep-alive remainder) is asserted here.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import zlib

import pytest

from tests.graylog_receiver import GraylogReceiver, build_receiver, source_hash

HOST = "127.0.0.1"


def gelf(short_message: str = "hello", **fields) -> dict:
    return {"version": "1.1", "host": "sender", "short_message": short_message, **fields}


def encode(message: dict) -> bytes:
    return json.dumps(message).encode()


def udp_send(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, (HOST, port))


def chunks(payload: bytes, count: int, message_id: bytes = b"ABCDEFGH") -> list[bytes]:
    """GELF UDP chunks: magic 0x1e 0x0f, 8-byte message id, sequence number, sequence count, data."""
    size = -(-len(payload) // count)
    parts = [payload[i * size : (i + 1) * size] for i in range(count)]
    return [b"\x1e\x0f" + message_id + bytes([i, count]) + part for i, part in enumerate(parts)]


class HttpConnection:
    """One keep-alive HTTP/1.1 connection on a raw socket, so the tests control exactly what is sent."""

    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port), timeout=10)

    def request(self, body: bytes, method: str = "POST", path: str = "/gelf", headers: str = "") -> int:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        self.sock.sendall(head.encode() + body)
        response = b""
        while b"\r\n\r\n" not in response:
            data = self.sock.recv(4096)
            if not data:
                break
            response += data
        return int(response.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


def messages(receiver: GraylogReceiver) -> list[str]:
    return [document["message"] for document in receiver.stored()]


def test_the_cached_build_is_reused_and_keyed_by_the_sources():
    jar = build_receiver()
    assert jar.parent.name == f"graylog-gelf-receiver-{source_hash()}"
    modified = jar.stat().st_mtime
    assert build_receiver() == jar
    assert jar.stat().st_mtime == modified
    # The receiver runs on Graylog 6.3.7's own server jar, not on classes of this project.
    assert (jar.parent / "lib" / "graylog2-server-6.3.7.jar").is_file()


def test_a_udp_message_in_three_zlib_chunks_arriving_out_of_order_is_stored(graylog_receiver):
    receiver = graylog_receiver("udp")
    payload = zlib.compress(encode(gelf("chunked", _padding="x" * 3000)))
    first, second, third = chunks(payload, 3)
    udp_send(receiver.port, third, first, second)
    records = receiver.wait_for(1)
    assert [r["accepted"] for r in records] == [True]
    assert records[0]["stored"]["message"] == "chunked"
    assert records[0]["stored"]["padding"] == "x" * 3000


def test_a_message_missing_one_chunk_is_reported_when_graylog_expires_it(graylog_receiver):
    receiver = graylog_receiver("udp")
    first, _, third = chunks(encode(gelf("lost")), 3)
    udp_send(receiver.port, first, third)
    # GelfChunkAggregator keeps chunks for 5 s, then its eviction task drops the message.
    records = receiver.wait_for(1, timeout=15)
    assert records == [{"accepted": False, "error": records[0]["error"], "raw": ""}]
    assert "expired" in records[0]["error"]


def test_graylog_drops_booleans_nulls_empty_strings_and_field_names_outside_its_alphabet(graylog_receiver):
    receiver = graylog_receiver("udp")
    sent = gelf(
        "fields",
        _flag=True,
        _nothing=None,
        _empty="",
        _blank="   ",
        **{"_with space": "x", "_ümlaut": "x", "_ok-name@x": "kept"},
        _count=3,
        _ratio=0.5,
        _nested={"a": [1, 2]},
    )
    udp_send(receiver.port, encode(sent))
    [record] = receiver.wait_for(1)
    assert record["accepted"]
    stored = record["stored"]
    assert set(stored) == {"message", "source", "timestamp", "ok-name@x", "count", "ratio", "nested"}
    # Types as Graylog keeps them: integers, floats, and JSON containers turned into strings.
    assert stored["count"] == 3 and isinstance(stored["count"], int)
    assert stored["ratio"] == 0.5 and isinstance(stored["ratio"], float)
    assert stored["nested"] == '{"a":[1,2]}'
    assert stored["source"] == "sender"
    # Graylog's own additions are reported apart from the document.
    assert record["graylog"]["gl2_remote_ip"] == HOST


def test_dots_in_field_names_are_stored_as_underscores_and_strings_are_trimmed(graylog_receiver):
    receiver = graylog_receiver("udp")
    udp_send(receiver.port, encode(gelf("  padded message \n", **{"_http.status": 404, "_path": "  /x  "})))
    [record] = receiver.wait_for(1)
    stored = record["stored"]
    assert "http.status" not in stored
    assert stored["http_status"] == 404
    assert stored["path"] == "/x"
    assert stored["message"] == "padded message"


def test_gelf_timestamp_is_stored_in_graylogs_format(graylog_receiver):
    receiver = graylog_receiver("udp")
    udp_send(receiver.port, encode(gelf("dated", timestamp=1_700_000_000.25)))
    [record] = receiver.wait_for(1)
    assert record["stored"]["timestamp"] == "2023-11-14 22:13:20.250"


def test_nan_makes_graylog_reject_the_message(graylog_receiver):
    receiver = graylog_receiver("udp")
    udp_send(receiver.port, b'{"version":"1.1","host":"h","short_message":"nan","_value":NaN}')
    [record] = receiver.wait_for(1)
    assert not record["accepted"]
    assert "invalid JSON" in record["error"] and "NaN" in record["error"]
    assert record["raw"].startswith('{"version"')


def test_a_message_whose_text_is_blank_after_trimming_is_dropped_as_incomplete(graylog_receiver):
    receiver = graylog_receiver("udp")
    # GelfDecoder accepts it ("message" is not blank) but short_message becomes the empty message field.
    udp_send(receiver.port, encode(gelf("   ", message="not used")))
    [record] = receiver.wait_for(1)
    assert not record["accepted"]
    assert "incomplete" in record["error"]


def test_a_missing_short_message_is_rejected_and_a_one_byte_datagram_is_reported(graylog_receiver):
    receiver = graylog_receiver("udp")
    udp_send(receiver.port, b'{"version":"1.1","host":"h"}', b"x")
    records = receiver.wait_for(2)
    errors = sorted(r["error"] for r in records)
    assert not any(r["accepted"] for r in records)
    assert any("missing mandatory" in e for e in errors)
    assert any("invalid GELF payload" in e for e in errors)


def test_tcp_frames_are_cut_at_nul_bytes_wherever_the_segments_end(graylog_receiver):
    receiver = graylog_receiver("tcp")
    stream = b"".join(encode(gelf(f"m{i}")) + b"\0" for i in range(3))
    with socket.create_connection((HOST, receiver.port)) as sock:
        for start in range(0, len(stream), 7):  # cut into segments that end mid-frame
            sock.sendall(stream[start : start + 7])
            time.sleep(0.002)
        receiver.wait_for(3)
        # A frame without its NUL waits for one: nothing is decoded while the connection stays open...
        sock.sendall(encode(gelf("unterminated")))
        time.sleep(0.5)
        assert messages(receiver) == ["m0", "m1", "m2"]
    # ...and Graylog's LenientDelimiterBasedFrameDecoder still emits it when the connection closes.
    receiver.wait_for(4)
    assert messages(receiver) == ["m0", "m1", "m2", "unterminated"]


def test_a_tcp_frame_longer_than_the_maximum_is_reported_and_the_connection_closed(graylog_receiver):
    receiver = graylog_receiver("tcp", max_frame=1000)
    with socket.create_connection((HOST, receiver.port)) as sock:
        sock.sendall(encode(gelf("x" * 2000)) + b"\0")
        sock.settimeout(5)
        try:
            assert sock.recv(10) == b""  # Graylog closed the connection...
        except ConnectionResetError:
            pass  # ...with unread data in its buffer, so the close is a reset
    records = receiver.wait_for(1)
    assert not records[0]["accepted"]
    assert "TooLongFrameException" in records[0]["error"]
    assert receiver.stored() == []


def test_http_post_to_gelf_gets_202_and_other_requests_are_refused(graylog_receiver):
    receiver = graylog_receiver("http")
    connection = HttpConnection(receiver.port)
    assert connection.request(encode(gelf("posted"))) == 202
    assert connection.request(encode(gelf("wrong path")), path="/other") == 404
    assert connection.request(b"", method="GET") == 405
    connection.close()
    records = receiver.wait_for(3)
    assert messages(receiver) == ["posted"]
    assert sorted(r["error"] for r in receiver.rejected()) == [
        "HTTP response 404 Not Found",
        "HTTP response 405 Method Not Allowed",
    ]
    assert len(records) == 3


def test_http_body_over_the_maximum_is_refused_with_413(graylog_receiver):
    receiver = graylog_receiver("http", max_body=1000)
    connection = HttpConnection(receiver.port)
    assert connection.request(encode(gelf("y" * 2000))) == 413
    connection.close()
    [record] = receiver.wait_for(1)
    assert record == {"accepted": False, "error": "HTTP response 413 Request Entity Too Large", "raw": ""}


def test_http_without_bulk_stores_one_message_per_post_and_drops_the_rest_of_a_body(graylog_receiver):
    receiver = graylog_receiver("http")
    connection = HttpConnection(receiver.port)
    for i in range(3):
        assert connection.request(encode(gelf(f"post{i}")) + b"\n") == 202  # a trailing newline is ignored
    assert connection.request(encode(gelf("first")) + b"\n" + encode(gelf("second"))) == 202
    receiver.wait_for(5)
    assert messages(receiver) == ["post0", "post1", "post2", "first"]
    [dropped] = receiver.rejected()
    assert "dropped additional JSON" in dropped["error"]
    connection.close()


def test_http_bulk_keeps_the_bytes_after_a_bodys_last_newline_for_the_next_request(graylog_receiver):
    """Graylog 6.3's bulk decoder lives on the connection: a body's unterminated tail joins the next body."""
    receiver = graylog_receiver("http", bulk=True)
    connection = HttpConnection(receiver.port)
    a, b, c, d = (encode(gelf(name)) for name in "abcd")
    assert connection.request(a + b"\n" + b) == 202
    receiver.wait_for(1)
    time.sleep(0.5)
    assert messages(receiver) == ["a"]  # "b" waits for a newline that this body never sends
    assert connection.request(c + b"\n" + d) == 202
    receiver.wait_for(3)
    time.sleep(0.5)
    # "b" and "c" became one frame: GelfDecoder keeps the first document and drops the second.
    assert messages(receiver) == ["a", "b"]
    [dropped] = receiver.rejected()
    assert "dropped additional JSON" in dropped["error"]
    assert dropped["raw"].startswith(b.decode() + c.decode()[:20])
    # "d" is only decoded when the connection closes.
    connection.close()
    receiver.wait_for(4)
    assert messages(receiver) == ["a", "b", "d"]


def test_http_bulk_stores_every_message_of_bodies_whose_messages_all_end_with_a_newline(graylog_receiver):
    receiver = graylog_receiver("http", bulk=True)
    connection = HttpConnection(receiver.port)
    names = [f"n{i}" for i in range(10)]
    for start in (0, 5):
        body = b"".join(encode(gelf(name)) + b"\n" for name in names[start : start + 5])
        assert connection.request(body) == 202
    receiver.wait_for(10)
    assert messages(receiver) == names  # all of them, before the connection closes
    assert receiver.rejected() == []
    connection.close()


def test_http_bulk_input_collapses_a_non_bulk_senders_keep_alive_posts_into_one_frame(graylog_receiver):
    receiver = graylog_receiver("http", bulk=True)
    connection = HttpConnection(receiver.port)
    for i in range(3):
        assert connection.request(encode(gelf(f"single{i}"))) == 202
    time.sleep(0.5)
    assert receiver.records() == []  # nothing has a newline yet
    connection.close()
    records = receiver.wait_for(2)
    assert messages(receiver) == ["single0"]
    assert len(records) == 2
    [dropped] = receiver.rejected()
    assert "dropped additional JSON" in dropped["error"]


def test_http_bulk_frame_over_the_maximum_body_is_refused_as_too_long(graylog_receiver):
    receiver = graylog_receiver("http", bulk=True, max_body=1000)
    connection = HttpConnection(receiver.port)
    # Each body is under the limit, but the unterminated frame they build up on the connection is not.
    for i in range(3):
        connection.request(encode(gelf(f"part{i}", _pad="p" * 400)))
    connection.close()
    records = receiver.wait_for(1)
    assert any("TooLongFrameException" in r["error"] for r in records if not r["accepted"])


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("protocol", ["tcp", "http"])
def test_tls_is_terminated_by_graylogs_own_tls_handler(graylog_receiver, certificate, protocol):
    receiver = graylog_receiver(protocol, tls=certificate)
    context = ssl.create_default_context(cafile=str(certificate[0]))
    context.check_hostname = False
    with socket.create_connection((HOST, receiver.port)) as raw, context.wrap_socket(raw) as sock:
        if protocol == "tcp":
            sock.sendall(encode(gelf("over tls")) + b"\0")
        else:
            body = encode(gelf("over tls"))
            sock.sendall(b"POST /gelf HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert sock.recv(100).startswith(b"HTTP/1.1 202")
        receiver.wait_for(1)
    assert messages(receiver) == ["over tls"]
    # A plain-text client is refused by the TLS handler, and the receiver says so.
    with socket.create_connection((HOST, receiver.port)) as sock:
        sock.sendall(encode(gelf("plain")) + b"\0")
        sock.settimeout(5)
        try:
            sock.recv(100)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while not any("NotSslRecordException" in r["error"] for r in receiver.rejected()):
        assert time.monotonic() < deadline, receiver.records()
        time.sleep(0.05)
    assert messages(receiver) == ["over tls"]


def test_sigterm_writes_everything_received_and_exits_cleanly(tmp_path):
    receiver = GraylogReceiver(tmp_path, "tcp")
    with socket.create_connection((HOST, receiver.port)) as sock:
        sock.sendall(b"".join(encode(gelf(f"t{i}")) + b"\0" for i in range(200)))
        time.sleep(0.2)
    receiver.stop()
    assert receiver.process.returncode == 0
    assert len(receiver.stored()) == 200
