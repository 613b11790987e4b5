"""GELF encoding and the WriteToGelf sink, checked against Graylog's rules and independent decoders.

The end-to-end tests send through `WriteToGelf` in a real Beam pipeline (FnApiRunner) over real sockets
to `tests/gelf_receiver.js`, a Node.js receiver that decodes UDP with graygelf's own server. Node is
required: without it these tests fail, they are never skipped.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.gelf_receiver import GelfReceiver
from pipelines.runners import LOCAL_RUNNER
from tests.conftest import NODE_DIR, NodeReceiver, free_port
from tests.graylog_receiver import differences
from transforms.elements import DeadLetter
from transforms.gelf import (
    MAX_FIELD_BYTES,
    GelfConfig,
    GelfOptions,
    GelfSendError,
    GelfTooLarge,
    HttpSender,
    TcpSender,
    UdpSender,
    WriteToGelf,
    build_message,
    chunk,
    compress,
    encode_fields,
    encode_message,
    field_key,
    gelf_config_from_options,
    make_sender,
    oversize_reason,
)

ERROR_KEY = "__receiver_error__"


# --------------------------------------------------------------------------------------------------------
# A model of what Graylog stores (shared/reference/gelf.md, "Additional fields"), independent of the code
# --------------------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------------------
# build_message
# --------------------------------------------------------------------------------------------------------


def test_message_has_the_gelf_1_1_standard_fields():
    message = build_message("hello", "web-1", 1700000000.123456, {}, full_message="trace", level=3)
    assert message == {
        "version": "1.1",
        "host": "web-1",
        "short_message": "hello",
        "timestamp": 1700000000.123,
        "full_message": "trace",
        "level": 3,
    }


def test_timestamp_is_float_seconds_with_millisecond_precision():
    assert build_message("m", "h", 1700000000, {})["timestamp"] == 1700000000
    assert isinstance(build_message("m", "h", 1700000000, {})["timestamp"], float)
    assert build_message("m", "h", 1700000000.9996, {})["timestamp"] == 1700000001.0
    before = time.time()
    for bad in (math.nan, math.inf, 0, -5, "not a time", None):
        stamp = build_message("m", "h", bad, {})["timestamp"]  # type: ignore[arg-type]
        assert before - 1 <= stamp <= time.time() + 1, bad


def test_blank_short_message_and_host_are_replaced_so_graylog_does_not_reject_them():
    message = build_message("  \n\t", "   ", 1.0, {})
    assert message["short_message"] == "-"
    assert message["host"] == "unknown"
    assert build_message("", "", 1.0, {})["short_message"] == "-"


def test_blank_full_message_is_left_out_and_level_is_clamped_to_syslog():
    assert "full_message" not in build_message("m", "h", 1.0, {}, full_message=" ")
    assert build_message("m", "h", 1.0, {}, level=12)["level"] == 7
    assert build_message("m", "h", 1.0, {}, level=-1)["level"] == 0


def test_additional_fields_get_an_underscore_prefix_and_keep_numbers():
    message = build_message("m", "h", 1.0, {"user": "bob", "status": 200, "ratio": 0.25, "big": 2**70})
    assert message["_user"] == "bob"
    assert message["_status"] == 200 and isinstance(message["_status"], int)
    assert message["_ratio"] == 0.25
    assert message["_big"] == str(2**70), "Graylog wraps integers beyond 64 bits"


def test_booleans_become_strings_because_graylog_drops_booleans():
    message = build_message("m", "h", 1.0, {"ok": True, "bad": False})
    assert message["_ok"] == "true" and message["_bad"] == "false"


def test_none_nan_infinity_and_blank_strings_are_dropped():
    fields = {"n": None, "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "e": "", "ws": " \t\n", "x": 1}
    message = build_message("m", "h", 1.0, fields)
    assert [k for k in message if k.startswith("_")] == ["_x"]


def test_nested_values_become_compact_json_text():
    message = build_message("m", "h", 1.0, {"obj": {"a": [1, "é"], "b": None}, "list": [1, 2], "tup": (3,)})
    assert message["_obj"] == '{"a":[1,"é"],"b":null}'
    assert message["_list"] == "[1,2]"
    assert message["_tup"] == "[3]"
    # JSON has no NaN: the text stays valid JSON (for Graylog's JSON extractor), NaN written as null.
    assert build_message("m", "h", 1.0, {"o": {"x": math.nan}})["_o"] == '{"x":null}'
    assert build_message("m", "h", 1.0, {"o": {"big": 2**70, "s": "a\ud800"}})["_o"] == (
        '{"big":1180591620717411303424,"s":"a\ud800"}'
    ), "what orjson refuses is written by the standard library"


def test_other_values_become_text():
    message = build_message("m", "h", 1.0, {"raw": b"bytes \xff", "when": Path("/a/b")})
    assert message["_raw"] == "bytes \ufffd"
    assert message["_when"] == "/a/b"


def test_field_names_are_sanitized_to_the_names_graylog_stores():
    """Graylog drops names outside [A-Za-z0-9._@-] and stores `.` as `_`: we send the stored name."""
    message = build_message(
        "m", "h", 1.0, {"http.status": 1, "user name": 2, "a/b:c": 3, "naïve": 4, "x-y_z": 5, "mail@x": 6}
    )
    keys = [k for k in message if k.startswith("_")]
    assert keys == ["_http_status", "_user_name", "_a_b_c", "_na_ve", "_x-y_z", "_mail_x"]


def key_of(name: str) -> str:
    """The key under which build_message sends a field called `name`."""
    (key,) = [k for k in build_message("m", "h", 1.0, {name: 1}) if k.startswith("_")]
    return key


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("id", "_id_"),  # Graylog would store `_id` as `id`; the spec forbids it
        ("_id", "_id_"),  # leading underscores go, then `id` clashes
        ("__ttl", "_ttl"),  # Graylog strips one underscore: stored as `ttl`, not the backend's `_ttl`
        ("message", "_message_"),
        ("source", "_source_"),
        ("timestamp", "_timestamp_"),
        ("full_message", "_full_message_"),
        ("level", "_level_"),
        ("facility", "_facility_"),
        ("file", "_file_"),
        ("line", "_line_"),
        ("version", "_version"),  # Graylog stores `_version` as `version` (flow logs keep theirs)
        ("type", "_type"),  # stored as `type`, as the flow log field is named
        ("host", "_host_"),
        ("short_message", "_short_message_"),
        ("streams", "_streams_"),
        ("gl2_source_input", "_x_gl2_source_input"),
        ("__x", "_x"),
        ("@timestamp", "_timestamp_"),
        ("", "_unnamed"),
        ("???", "_unnamed"),
        (" padded ", "_padded"),
    ],
)
def test_names_are_sanitized_and_those_graylog_would_ignore_are_renamed(name, key):
    assert key_of(name) == key


def test_graylog_stores_every_field_we_emit_under_its_name_and_type(graylog_receiver):
    """Names Graylog would skip, shadow, rename or keep for itself, values it would drop: sent through
    Graylog's own GELF input, every field we emit is stored as we sent it."""
    fields = {
        "id": "1",
        "_id": "2",
        "message": "shadowed?",
        "source": "x",
        "__ttl": "t",
        "_source": "s",
        "gl2_remote_ip": "1.2.3.4",
        "streams": "s",
        "ok": False,
        "n": None,
        "nan": math.nan,
        "naïve key": "v",
        "": "empty name",
        "???": "only invalid characters",
        "http.status": 200,
        "mail@x": "a",
        "nested": {"a": 1, "b": [True, None]},
        "count": 7,
        "ratio": 0.25,
        "big": 2**70,
        "level": "INFO",
        "host": "other",
        "padded": "  kept as sent?  ",
    }
    messages = [
        build_message("short", "web-1", 1700000000.5, fields, full_message="full", level=6),
        build_message("  \n\t", "   ", 1700000001.0, {}),  # blank message and host, replaced
    ]
    receiver = graylog_receiver("udp")
    sender = make_sender(GelfConfig(host="127.0.0.1", port=receiver.port, protocol="udp"))
    sender.open()
    try:
        sender.send([encode_message(m) for m in messages])
    finally:
        sender.close()
    receiver.wait_for(2)
    assert receiver.rejected() == []
    deliveries = receiver.deliveries()
    assert [sent for sent, _ in deliveries] == messages
    for sent, stored in deliveries:
        assert differences(sent, stored) == [], sent
    kept = {field_key(name) for name, value in fields.items() if value is not None and value == value}
    assert {k for k in deliveries[0][0] if k.startswith("_")} == kept, "only null and NaN were left out"


def test_long_strings_are_truncated_to_the_indexers_term_limit_on_a_character_boundary():
    long_ascii = "a" * (MAX_FIELD_BYTES + 10)
    long_multibyte = "é" * MAX_FIELD_BYTES  # 2 bytes each
    message = build_message(
        "s" * 100_000, "h", 1.0, {"a": long_ascii, "b": long_multibyte}, full_message="f" * 99_999
    )
    assert len(message["_a"].encode()) == MAX_FIELD_BYTES
    assert len(message["_b"].encode()) == MAX_FIELD_BYTES and set(message["_b"]) == {"é"}
    odd = build_message("m", "h", 1.0, {"c": "a" + long_multibyte})["_c"]
    assert len(odd.encode()) == MAX_FIELD_BYTES - 1, "a character is never cut in half"
    assert len(message["short_message"]) == 100_000, "message is analysed text, never truncated"
    assert len(message["full_message"]) == 99_999
    short = "é" * (MAX_FIELD_BYTES // 2)
    assert build_message("m", "h", 1.0, {"c": short})["_c"] == short


def test_later_field_wins_when_two_names_sanitize_alike():
    message = build_message("m", "h", 1.0, {"a b": 1, "a_b": 2})
    assert message["_a_b"] == 2


# --------------------------------------------------------------------------------------------------------
# encode_message, compress, chunk, oversize_reason
# --------------------------------------------------------------------------------------------------------


def _refuse_constant(name: str):
    raise AssertionError(f"non-standard JSON constant {name}")


def test_encoding_is_compact_strict_utf8_json():
    message = build_message("héllo ✓\n\t\x00", "h", 1.5, {"v": 1.5, "nan": math.nan})
    payload = encode_message(message)
    assert payload.startswith(b'{"version":"1.1","host":"h"')
    assert b": " not in payload and b", " not in payload
    assert "héllo ✓".encode() in payload, "UTF-8, not \\u escapes"
    assert b"\x00" not in payload and b"\n" not in payload, "control characters are escaped"
    assert json.loads(payload, parse_constant=_refuse_constant) == message


def test_encoding_writes_nan_as_null_a_field_graylog_skips_rather_than_rejecting_the_message():
    payload = encode_message({"version": "1.1", "host": "h", "short_message": "m", "_x": math.nan})
    assert json.loads(payload, parse_constant=_refuse_constant)["_x"] is None


def test_encoding_replaces_lone_surrogates():
    payload = encode_message({"short_message": "a\ud800b"})
    assert json.loads(payload) == {"short_message": "a?b"}


def test_compression_is_what_graylog_detects_by_magic_bytes():
    payload = encode_message(build_message("m" * 3000, "h", 1.0, {"x": "y" * 50_000}))
    gz = compress(payload, "gzip")
    zl = compress(payload, "zlib")
    assert gz[:2] == b"\x1f\x8b"
    assert zl[0] == 0x78 and ((zl[0] << 8) | zl[1]) % 31 == 0
    assert compress(payload, "none") is payload
    import gzip
    import zlib

    assert gzip.decompress(gz) == payload and zlib.decompress(zl) == payload
    small = b'{"short_message":"x"}'
    assert gzip.decompress(compress(small, "gzip")) == small
    assert compress(small, "zlib")[0] == 0x78
    with pytest.raises(ValueError):
        compress(small, "brotli")


def test_a_payload_that_fits_one_datagram_is_sent_unchunked():
    payload = os.urandom(1420)
    assert chunk(payload, 1420) == [payload]


def test_chunks_have_magic_one_random_id_sequence_and_count():
    payload = os.urandom(1420 * 3 + 1)
    datagrams = chunk(payload, 1420)
    assert len(datagrams) == 4
    ids = {d[2:10] for d in datagrams}
    assert len(ids) == 1
    for seq, datagram in enumerate(datagrams):
        assert datagram[:2] == b"\x1e\x0f"
        assert (datagram[10], datagram[11]) == (seq, 4)
        assert len(datagram) <= 12 + 1420
    assert b"".join(d[12:] for d in datagrams) == payload
    assert chunk(payload, 1420)[0][2:10] != datagrams[0][2:10], "ids are random per message"
    assert chunk(payload, 1420, b"12345678")[3][:12] == b"\x1e\x0f12345678\x03\x04"


def test_at_most_128_chunks():
    assert len(chunk(b"x" * (128 * 600), 600)) == 128
    with pytest.raises(GelfTooLarge, match="129 UDP chunks"):
        chunk(b"x" * (128 * 600 + 1), 600)


def test_oversize_reason_uses_each_protocols_graylog_limit():
    udp = GelfConfig(host="h", protocol="udp", compression="none", chunk_size=1000)
    assert oversize_reason(b"x" * 128_000, udp) is None
    assert "129 chunks" in oversize_reason(b"x" * 128_001, udp)
    gz = GelfConfig(host="h", chunk_size=1000)
    assert oversize_reason(b"x" * 1_000_000, gz) is None, "measured after compression"
    incompressible = base64.b64encode(os.urandom(200_000))
    assert "gzip-compressed" in oversize_reason(incompressible, gz)
    tcp = GelfConfig(host="h", protocol="tcp")
    assert oversize_reason(b"x" * 2 * 1024 * 1024, tcp) is None
    assert "frame limit" in oversize_reason(b"x" * (2 * 1024 * 1024 + 1), tcp)
    http = GelfConfig(host="h", protocol="http")
    assert oversize_reason(b"x" * 65535, http) is None, "65,535 bytes and the closing newline fit"
    assert "65536 bytes exceeds the 65536-byte body limit with its closing newline" in oversize_reason(
        b"x" * 65536, http
    )


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------


def config_from(*args: str) -> GelfConfig:
    return gelf_config_from_options(PipelineOptions(list(args)))


def test_defaults_follow_graylogs_defaults_per_protocol():
    udp = config_from("--gelf_host=graylog")
    assert (udp.port, udp.protocol, udp.compression, udp.chunk_size) == (12201, "udp", "gzip", 1420)
    assert udp.max_message_bytes == 128 * 1420
    assert (udp.timeout_seconds, udp.retry_seconds, udp.http_path) == (10.0, 300.0, "/gelf")
    tcp = config_from("--gelf_host=graylog", "--gelf_protocol=tcp")
    assert (tcp.compression, tcp.max_message_bytes) == ("none", 2 * 1024 * 1024)
    http = config_from("--gelf_host=graylog", "--gelf_protocol=http", "--gelf_http_bulk")
    assert (http.compression, http.max_message_bytes, http.http_bulk) == ("gzip", 65536, True)
    assert PipelineOptions(["--gelf_source=aws"]).view_as(GelfOptions).gelf_source == "aws"


def test_every_option_has_help():
    import argparse

    parser = argparse.ArgumentParser()
    GelfOptions._add_argparse_args(parser)
    options = {a.dest: a for a in parser._actions if a.dest.startswith("gelf_")}
    assert len(options) == 15
    assert all(a.help for a in options.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--gelf_host is required: the Graylog host running a GELF input, e.g. --gelf_host="),
        (("--gelf_protocol=tcp", "--gelf_compression=gzip"), "--gelf_compression=gzip cannot be used with"),
        (("--gelf_tls",), "--gelf_tls cannot be used with --gelf_protocol=udp"),
        (("--gelf_chunk_size=12",), "--gelf_chunk_size=12 is out of range: use 512..65495"),
        (("--gelf_chunk_size=65496",), "--gelf_chunk_size=65496 is out of range"),
        (("--gelf_port=0",), "--gelf_port=0"),
        (("--gelf_protocol=http", "--gelf_http_path=gelf"), "--gelf_http_path=gelf must start with '/'"),
        (("--gelf_http_bulk",), "--gelf_http_bulk needs --gelf_protocol=http"),
        (("--gelf_timeout_seconds=0",), "--gelf_timeout_seconds=0.0 must be > 0"),
        (("--gelf_retry_seconds=-1",), "--gelf_retry_seconds=-1.0 must be >= 0"),
        (("--gelf_max_message_bytes=-1",), "--gelf_max_message_bytes=-1 must be >= 0"),
        (("--gelf_max_message_bytes=200000",), "exceeds what GELF UDP can carry: 128 chunks"),
        (("--gelf_protocol=tcp", "--gelf_tls_ca_file=/x"), "--gelf_tls_ca_file is set but --gelf_tls is not"),
        (
            ("--gelf_protocol=tcp", "--gelf_tls", "--gelf_tls_ca_file=/nope.pem"),
            "--gelf_tls_ca_file=/nope.pem: no",
        ),
    ],
)
def test_invalid_configuration_names_the_option_and_the_fix(args, message):
    if args:
        args = ("--gelf_host=graylog", *args)
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from(*args)


def test_client_certificate_needs_its_key(tls_files):
    cert, key = tls_files
    with pytest.raises(ValueError, match="--gelf_tls_cert_file and --gelf_tls_key_file go together"):
        config_from("--gelf_host=g", "--gelf_protocol=http", "--gelf_tls", f"--gelf_tls_cert_file={cert}")
    config = config_from(
        "--gelf_host=g", "--gelf_protocol=http", "--gelf_tls", f"--gelf_tls_cert_file={cert}",
        f"--gelf_tls_key_file={key}", f"--gelf_tls_ca_file={cert}",
    )  # fmt: skip
    assert config.tls and config.tls_key_file == str(key)


# --------------------------------------------------------------------------------------------------------
# Fixtures: the Node.js receiver, a self-signed certificate, a Beam runner
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def node_receiver(tmp_path):
    started: list[NodeReceiver] = []

    def start(protocol: str, *extra: str, port: int = 0) -> NodeReceiver:
        receiver = NodeReceiver(tmp_path, protocol, *extra, port=port)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


_COLLECTED: dict[str, list] = {}


def _collect(element, key: str) -> None:
    _COLLECTED.setdefault(key, []).append(element)


def run_write(config: GelfConfig, elements: list) -> tuple[list[DeadLetter], dict[str, int]]:
    """Runs Create(elements) | WriteToGelf on the FnApiRunner; returns dead letters and gelf counters."""
    key = f"run-{time.monotonic_ns()}"
    pipeline = beam.Pipeline(runner=LOCAL_RUNNER)
    dead = pipeline | beam.Create(elements, reshuffle=False) | WriteToGelf(config, "test")
    _ = dead | beam.Map(_collect, key)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("gelf"))["counters"]
    return _COLLECTED.pop(key, []), {c.key.metric.name: c.committed for c in counters}


def make_payloads(count: int, run: str, full_bytes: int = 0) -> list[bytes]:
    """Distinct GELF payloads; `full_bytes` of incompressible text in full_message forces UDP chunks."""
    payloads = []
    for i in range(count):
        fields = {"seq": i, "run": run, "ok": True, "ratio": 0.5, "nested": {"a": [1, 2]}, "text": "héllo ✓"}
        full = base64.b64encode(random.randbytes(full_bytes * 3 // 4)).decode() if full_bytes else None
        message = build_message(f"{run} message {i}", "gelf-test", 1700000000.25 + i, fields, full, level=6)
        payloads.append(encode_message(message))
    return payloads


def as_batches(payloads: list[bytes], size: int = 3) -> list:
    """GelfBatch elements, plus the last payload as a single bytes element."""
    head = payloads[:-1]
    batches: list = [head[i : i + size] for i in range(0, len(head), size)]
    return batches + [payloads[-1]]


def assert_received(received: Iterable[dict], payloads: list[bytes]) -> None:
    received = list(received)
    errors = [m[ERROR_KEY] for m in received if ERROR_KEY in m]
    assert errors == []

    def order(m: dict) -> tuple:
        return m["_run"], m["_seq"]

    assert sorted(received, key=order) == sorted((json.loads(p) for p in payloads), key=order)


# --------------------------------------------------------------------------------------------------------
# End to end: WriteToGelf -> the Node.js receiver
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zlib", "none"])
def test_udp_to_graygelf(node_receiver, compression):
    receiver = node_receiver("udp")
    config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol="udp", compression=compression)
    payloads = make_payloads(6, f"udp-{compression}") + make_payloads(4, f"udp-{compression}-big", 16_000)
    big = payloads[-1]
    assert len(chunk(compress(big, compression), config.chunk_size)) >= 8, "big messages are chunked"
    dead, counters = run_write(config, as_batches(payloads))
    assert dead == []
    assert_received(receiver.wait_for(len(payloads)), payloads)
    assert counters["messages"] == len(payloads)
    assert counters["bytes"] == sum(map(len, payloads))


def test_udp_message_over_128_chunks_is_a_dead_letter(node_receiver):
    receiver = node_receiver("udp")
    config = GelfConfig(host="127.0.0.1", port=receiver.port, compression="none", chunk_size=512)
    small = make_payloads(3, "udp-ok")
    huge = make_payloads(1, "udp-huge", 70_000)[0]
    dead, counters = run_write(config, [[small[0], huge, small[1]], small[2]])
    assert [d.raw for d in dead] == [huge]
    assert dead[0].stage == "gelf" and re.search("needing 1[3-4][0-9] chunks of 512 bytes", dead[0].reason)
    assert counters["too_large"] == 1 and counters["messages"] == 3
    assert_received(receiver.wait_for(3), small)


def test_tcp(node_receiver):
    receiver = node_receiver("tcp")
    config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol="tcp")
    payloads = make_payloads(20, "tcp") + make_payloads(2, "tcp-big", 100_000)
    dead, counters = run_write(config, as_batches(payloads, 5))
    assert dead == []
    assert counters["messages"] == len(payloads) and counters.get("errors", 0) == 0
    assert_received(receiver.wait_for(len(payloads)), payloads)


def test_tcp_with_tls(node_receiver, tls_files):
    cert, key = tls_files
    receiver = node_receiver("tcp", "--tls", "--cert", str(cert), "--key", str(key))
    config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol="tcp", tls=True, tls_ca_file=str(cert))
    payloads = make_payloads(10, "tls")
    dead, _ = run_write(config, as_batches(payloads))
    assert dead == []
    assert_received(receiver.wait_for(len(payloads)), payloads)


def test_tls_refuses_a_server_it_cannot_verify(node_receiver, tls_files):
    cert, key = tls_files
    receiver = node_receiver("tcp", "--tls", "--cert", str(cert), "--key", str(key))
    config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol="tcp", tls=True, retry_seconds=30)
    sender = TcpSender(config)
    sender.open()  # system CAs only: the self-signed certificate is not trusted
    sender.send(make_payloads(1, "untrusted"))
    started = time.monotonic()
    with pytest.raises(GelfSendError, match="certificate was not accepted"):
        sender.flush()
    assert time.monotonic() - started < 5, "a verification failure is not retried"
    assert receiver.messages() == []


def test_tcp_reconnects_when_graylog_restarts(node_receiver):
    port = free_port()
    first = node_receiver("tcp", port=port)
    config = GelfConfig(host="127.0.0.1", port=port, protocol="tcp", retry_seconds=20)
    sender = TcpSender(config)
    sender.open()
    before = make_payloads(3, "before")
    sender.send(before)
    sender.flush()
    assert_received(first.wait_for(3), before)
    first.stop()
    second = node_receiver("tcp", port=port)
    after = make_payloads(3, "after")
    sender.send(after)
    sender.flush()
    sender.close()
    assert_received(second.wait_for(3), after)


def test_tcp_gives_up_after_retry_seconds():
    config = GelfConfig(host="127.0.0.1", port=free_port(), protocol="tcp", retry_seconds=0.6)
    counts = {"retry": 0, "error": 0}
    sender = TcpSender(
        config,
        on_retry=lambda: counts.__setitem__("retry", counts["retry"] + 1),
        on_error=lambda: counts.__setitem__("error", counts["error"] + 1),
    )
    sender.open()
    sender.send([b'{"short_message":"x","host":"h"}'])
    started = time.monotonic()
    with pytest.raises(GelfSendError, match="failed for 0.6 s"):
        sender.flush()
    assert 0.5 <= time.monotonic() - started < 3
    assert counts["retry"] >= 2 and counts["error"] == counts["retry"] + 1
    sender.flush()  # the failed buffer was dropped: its bundle is retried by the runner instead


def test_http_gzip(node_receiver):
    receiver = node_receiver("http")
    config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol="http")
    payloads = make_payloads(8, "http")
    dead, counters = run_write(config, as_batches(payloads))
    assert dead == []
    assert_received(receiver.messages(), payloads)  # answered, so already written down
    requests = receiver.requests()
    assert len(requests) == len(payloads)
    assert {(r["method"], r["url"], r["status"], r["content_encoding"]) for r in requests} == {
        ("POST", "/gelf", 202, "gzip")
    }
    assert {r["content_type"] for r in requests} == {"application/json"}
    assert len({r["remote_port"] for r in requests}) == 1, "one keep-alive connection"
    assert counters.get("retries", 0) == 0


def test_http_gives_up_after_retry_seconds(node_receiver):
    receiver = node_receiver("http", "--fail-first", "1000")
    config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol="http", retry_seconds=0.5)
    sender = HttpSender(config)
    sender.open()
    with pytest.raises(GelfSendError, match="HTTP 500"):
        sender.send(make_payloads(1, "never"))
    assert len(receiver.requests()) >= 3 and receiver.messages() == []


def test_a_send_that_keeps_failing_fails_the_pipeline():
    config = GelfConfig(host="127.0.0.1", port=free_port(), protocol="tcp", retry_seconds=0.3)
    with pytest.raises(Exception, match="failed for 0.3 s"):
        run_write(config, [make_payloads(2, "lost")])


def test_http_retries_failed_requests_and_loses_nothing(node_receiver):
    receiver = node_receiver("http", "--fail-first", "3")
    config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol="http", retry_seconds=30)
    payloads = make_payloads(5, "http-retry")
    dead, counters = run_write(config, as_batches(payloads))
    assert dead == []
    assert_received(receiver.messages(), payloads)
    assert [r["status"] for r in receiver.requests()] == [500, 500, 500] + [202] * 5
    assert counters["retries"] == 3 and counters["errors"] == 3


def test_http_bulk_sends_newline_separated_messages_within_the_body_limit(node_receiver):
    receiver = node_receiver("http", "--bulk", "--max-body", "4000")
    config = GelfConfig(
        host="127.0.0.1", port=receiver.port, protocol="http", http_bulk=True, max_message_bytes=4000
    )
    payloads = make_payloads(40, "bulk")
    dead, _ = run_write(config, as_batches(payloads, 7))
    assert dead == []
    assert_received(receiver.messages(), payloads)
    requests = receiver.requests()
    assert 1 < len(requests) < len(payloads) / 4
    assert {r["status"] for r in requests} == {202}


def test_http_message_over_the_body_limit_is_a_dead_letter(node_receiver):
    receiver = node_receiver("http")
    config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol="http", compression="none")
    ok = make_payloads(2, "http-ok")
    huge = make_payloads(1, "http-huge", 70_000)[0]
    dead, counters = run_write(config, [[ok[0], huge], ok[1]])
    assert [d.raw for d in dead] == [huge]
    assert f"GELF HTTP message of {len(huge)} bytes exceeds the 65536-byte body limit" in dead[0].reason
    assert counters["too_large"] == 1
    assert_received(receiver.messages(), ok)
    assert {r["content_encoding"] for r in receiver.requests()} == {None}


def test_http_deflate_and_tls(node_receiver, tls_files):
    cert, key = tls_files
    receiver = node_receiver("http", "--tls", "--cert", str(cert), "--key", str(key))
    config = GelfConfig(
        host="127.0.0.1", port=receiver.port, protocol="http", compression="zlib", tls=True,
        tls_ca_file=str(cert), tls_cert_file=str(cert), tls_key_file=str(key),
    )  # fmt: skip
    sender = HttpSender(config)
    sender.open()
    payloads = make_payloads(3, "https")
    sender.send(payloads)
    sender.flush()
    sender.close()
    assert_received(receiver.messages(), payloads)
    assert {r["content_encoding"] for r in receiver.requests()} == {"deflate"}


# --------------------------------------------------------------------------------------------------------
# The Python receiver (pipelines/gelf_receiver.py)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zlib", "none"])
def test_python_receiver_decodes_udp(compression):
    with GelfReceiver("udp") as receiver:
        config = GelfConfig(host="127.0.0.1", port=receiver.port, compression=compression, chunk_size=600)
        sender = UdpSender(config)
        sender.open()
        payloads = make_payloads(5, "py-udp") + make_payloads(3, "py-udp-big", 20_000)
        sender.send(payloads)
        sender.close()
        assert receiver.wait_for(len(payloads), timeout=5)
        assert_received(receiver.messages, payloads)
        assert receiver.errors == 0 and receiver.datagrams > len(payloads)


@pytest.mark.parametrize("protocol", ["tcp", "http"])
def test_python_receiver_decodes_tcp_and_http(protocol):
    with GelfReceiver(protocol) as receiver:
        config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol=protocol)
        sender = TcpSender(config) if protocol == "tcp" else HttpSender(config)
        sender.open()
        payloads = make_payloads(6, f"py-{protocol}")
        sender.send(payloads)
        sender.flush()
        sender.close()
        assert receiver.wait_for(len(payloads), timeout=5)
        assert_received(receiver.messages, payloads)


def test_python_receiver_decodes_http_bulk():
    with GelfReceiver("http") as receiver:
        config = GelfConfig(host="127.0.0.1", port=receiver.port, protocol="http", http_bulk=True)
        sender = HttpSender(config)
        payloads = make_payloads(10, "py-bulk")
        sender.open()
        sender.send(payloads)
        sender.flush()
        sender.close()
        assert receiver.wait_for(len(payloads), timeout=5)
        assert_received(receiver.messages, payloads)
        assert receiver.requests == 1


GRAYGELF_CLIENT = """
const gelf = require(process.argv[1])({host: '127.0.0.1', port: Number(process.argv[2]), chunkSize: 500})
gelf.raw({short_message: 'from graygelf', host: 'node', _text: process.argv[3], _n: 1})
gelf.raw({short_message: 'small', host: 'node', _n: 2})
setTimeout(() => {}, 300)
"""


def test_python_receiver_decodes_what_graygelfs_client_sends():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed")
    text = base64.b64encode(os.urandom(6000)).decode()
    with GelfReceiver("udp") as receiver:
        client = str(NODE_DIR / "node_modules" / "graygelf")
        subprocess.run(
            [node, "-e", GRAYGELF_CLIENT, client, str(receiver.port), text], check=True, timeout=20
        )
        assert receiver.wait_for(2, timeout=5)
        by_n = {m["_n"]: m for m in receiver.messages}
        assert by_n[1]["short_message"] == "from graygelf" and by_n[1]["_text"] == text
        assert by_n[2]["short_message"] == "small"
        assert receiver.datagrams > 2, "the big message came in chunks"


def test_python_receiver_counts_garbage_as_errors():
    with GelfReceiver("udp") as receiver:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"not json", ("127.0.0.1", receiver.port))
            sock.sendto(b'{"short_message":"ok","host":"h"}', ("127.0.0.1", receiver.port))
        assert receiver.wait_for(1, timeout=5)
        deadline = time.monotonic() + 2
        while receiver.errors < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.errors == 1 and receiver.messages == [{"short_message": "ok", "host": "h"}]


def test_fields_encoded_once_join_a_message_as_if_it_had_them():
    extra = {"_src_addr_entity": "ec2:i-1", "_src_addr_entity_name": "wëb"}
    message = build_message("hello", "h", 1.5, {"a": 1})
    joined = encode_message(message, encode_fields(extra))
    assert json.loads(joined) == message | extra
    assert encode_fields({}) == b"" and encode_message(message, b"") == encode_message(message)
