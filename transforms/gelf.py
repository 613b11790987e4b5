"""GELF 1.1 encoding and the `WriteToGelf` sink.

The encoding half (`build_message`, `encode_message`, `compress`, `chunk`, `oversize_reason`) is plain
typed functions with no Beam in them, written against the rules Graylog actually enforces (see
shared/reference/gelf.md). The sending half is one small class per protocol with the shape
`open()`, `send(payloads)`, `flush()`, `close()`; `WriteToGelf` wraps one of them in a DoFn that adds
metrics and dead-lettering, and flushes in `finish_bundle` so a bundle only completes once its messages
were written (TCP) or answered (HTTP). TCP and HTTP failures are retried with back-off for
`--gelf_retry_seconds` and then fail the bundle: failing the bundle is how nothing gets lost.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from isal import isal_zlib

from transforms import metrics
from transforms.elements import DeadLetter

_LOG = logging.getLogger(__name__)

PROTOCOLS = ("udp", "tcp", "http")
COMPRESSIONS = ("gzip", "zlib", "none")

#: Graylog discards a chunked message with more than this many chunks.
MAX_CHUNKS = 128
#: Bytes of a chunk header: magic (2), message id (8), sequence number (1), sequence count (1).
CHUNK_HEADER_BYTES = 12
#: `--gelf_chunk_size` bounds. Below 512 the 128-chunk limit caps messages at 64 KiB; above 65495 the
#: datagram (data + 12-byte header) no longer fits the 65507-byte IPv4 UDP payload.
MIN_CHUNK_SIZE = 512
MAX_CHUNK_SIZE = 65507 - CHUNK_HEADER_BYTES
#: Graylog's GELF TCP `max_message_size` default (a longer frame is discarded and the connection closed).
TCP_MAX_FRAME_BYTES = 2 * 1024 * 1024
#: Graylog's GELF HTTP `max_chunk_size` default: the largest decoded request body (413 beyond it).
HTTP_MAX_BODY_BYTES = 65536
# What closes each message in a GELF HTTP body (see HttpSender).
HTTP_MESSAGE_END = b"\n"
#: The search backend refuses a document holding a string term longer than this (Graylog #873).
MAX_FIELD_BYTES = 32766
#: zlib compression level: 6 is zlib's own default; ratio matters for the 128-chunk UDP limit.
COMPRESSION_LEVEL = 1  # ISA-L's levels are 0-3; 1 compresses small messages as well as zlib's 6


# --------------------------------------------------------------------------------------------------------
# Options and configuration
# --------------------------------------------------------------------------------------------------------


class GelfOptions(PipelineOptions):
    """Where and how to send GELF. Validated by `gelf_config_from_options` when the pipeline starts."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--gelf_host",
            default=None,
            help="Graylog host running a GELF input (required), e.g. graylog.example.com.",
        )
        parser.add_argument(
            "--gelf_port", type=int, default=12201, help="Port of the GELF input (default 12201)."
        )
        parser.add_argument(
            "--gelf_protocol",
            choices=PROTOCOLS,
            default="udp",
            help="GELF input type: udp (no delivery feedback), tcp (written to the socket, no ack) or "
            "http (each POST answered; the reliable choice). Default udp.",
        )
        parser.add_argument(
            "--gelf_compression",
            choices=COMPRESSIONS,
            default=None,
            help="Payload compression. Default gzip for udp and http, none for tcp. TCP must use none: "
            "GELF TCP frames messages with 0x00, which compressed data contains.",
        )
        parser.add_argument(
            "--gelf_chunk_size",
            type=int,
            default=1420,
            help=f"UDP only: bytes of chunk data per datagram (plus a 12-byte header), default 1420 "
            f"(fits a 1500-byte MTU). Allowed {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}; Graylog advises at "
            f"most 8192. A message needing more than {MAX_CHUNKS} chunks cannot be sent over UDP.",
        )
        parser.add_argument(
            "--gelf_tls", action="store_true", default=False, help="Use TLS (tcp and http only)."
        )
        parser.add_argument(
            "--gelf_tls_ca_file",
            default=None,
            help="PEM CA bundle to verify Graylog's certificate (default: the system CAs).",
        )
        parser.add_argument(
            "--gelf_tls_cert_file",
            default=None,
            help="PEM client certificate, for inputs with tls_client_auth (needs --gelf_tls_key_file).",
        )
        parser.add_argument(
            "--gelf_tls_key_file", default=None, help="PEM private key of --gelf_tls_cert_file."
        )
        parser.add_argument(
            "--gelf_http_path",
            default="/gelf",
            help="HTTP only: request path. Graylog accepts exactly /gelf (default).",
        )
        parser.add_argument(
            "--gelf_http_bulk",
            action="store_true",
            default=False,
            help="HTTP only: send many newline-separated messages per POST. Needs 'Enable Bulk "
            "Receiving' on the Graylog GELF HTTP input.",
        )
        parser.add_argument(
            "--gelf_timeout_seconds",
            type=float,
            default=10.0,
            help="Connect, write and HTTP answer timeout in seconds (default 10).",
        )
        parser.add_argument(
            "--gelf_retry_seconds",
            type=float,
            default=300.0,
            help="How long a failing TCP/HTTP send keeps retrying with exponential back-off before the "
            "bundle fails (and is retried by the runner, so nothing is lost). Default 300.",
        )
        parser.add_argument(
            "--gelf_max_message_bytes",
            type=int,
            default=0,
            help="Largest message to send; larger ones become dead letters. 0 (default) = Graylog's "
            "defaults per protocol: udp 128 chunks x --gelf_chunk_size of compressed payload, "
            "tcp 2 MiB frame, http 65536 bytes of uncompressed body.",
        )
        parser.add_argument(
            "--gelf_source",
            default=None,
            help="Value of the GELF 'host' field, which Graylog shows as 'source'. Default: each "
            "pipeline's own choice.",
        )


@dataclass(frozen=True)
class GelfConfig:
    """Validated, picklable GELF sink settings.

    Construction validates and resolves the per-protocol defaults (`compression=None`,
    `max_message_bytes=0`), so a `GelfConfig` that exists is one that can be used. Error messages name the
    command-line option to change.
    """

    host: str
    port: int = 12201
    protocol: str = "udp"
    compression: str | None = None
    chunk_size: int = 1420
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    http_path: str = "/gelf"
    http_bulk: bool = False
    timeout_seconds: float = 10.0
    retry_seconds: float = 300.0
    max_message_bytes: int = 0

    def __post_init__(self) -> None:
        if not self.host or not str(self.host).strip():
            raise ValueError(
                "--gelf_host is required: the Graylog host running a GELF input, "
                "e.g. --gelf_host=graylog.example.com"
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"--gelf_port={self.port} is not a port number: use 1..65535 (Graylog: 12201)")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--gelf_protocol={self.protocol} is not supported: use one of udp, tcp, http")
        compression = self.compression
        if compression is None:
            compression = "none" if self.protocol == "tcp" else "gzip"
            object.__setattr__(self, "compression", compression)
        if compression not in COMPRESSIONS:
            raise ValueError(f"--gelf_compression={compression} is not supported: use gzip, zlib or none")
        if self.protocol == "tcp" and compression != "none":
            raise ValueError(
                f"--gelf_compression={compression} cannot be used with --gelf_protocol=tcp: GELF TCP "
                "frames messages with a 0x00 byte, which compressed data contains. Drop "
                "--gelf_compression (or set none), or use --gelf_protocol=http for compressed transfer"
            )
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(
                f"--gelf_chunk_size={self.chunk_size} is out of range: use "
                f"{MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes of chunk data per UDP datagram "
                "(1420 for WAN, 8154 for LAN)"
            )
        if self.tls and self.protocol == "udp":
            raise ValueError(
                "--gelf_tls cannot be used with --gelf_protocol=udp: Graylog offers TLS on GELF TCP and "
                "GELF HTTP inputs only; use --gelf_protocol=tcp or http"
            )
        for option, value in (
            ("--gelf_tls_ca_file", self.tls_ca_file),
            ("--gelf_tls_cert_file", self.tls_cert_file),
            ("--gelf_tls_key_file", self.tls_key_file),
        ):
            if value is None:
                continue
            if not self.tls:
                raise ValueError(f"{option} is set but --gelf_tls is not: add --gelf_tls to send over TLS")
            if not os.path.isfile(value):
                raise ValueError(f"{option}={value}: no such file; give the path of a PEM file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "--gelf_tls_cert_file and --gelf_tls_key_file go together: a client certificate needs its "
                "private key (give both, or neither)"
            )
        if not self.http_path.startswith("/"):
            raise ValueError(f"--gelf_http_path={self.http_path} must start with '/': Graylog uses /gelf")
        if self.http_bulk and self.protocol != "http":
            raise ValueError("--gelf_http_bulk needs --gelf_protocol=http")
        if not self.timeout_seconds > 0:
            raise ValueError(f"--gelf_timeout_seconds={self.timeout_seconds} must be > 0 (default 10)")
        if not self.retry_seconds >= 0:
            raise ValueError(f"--gelf_retry_seconds={self.retry_seconds} must be >= 0 (default 300)")
        udp_limit = MAX_CHUNKS * self.chunk_size
        if self.max_message_bytes < 0:
            raise ValueError(
                f"--gelf_max_message_bytes={self.max_message_bytes} must be >= 0 (0 = Graylog's defaults)"
            )
        if self.max_message_bytes == 0:
            default = {"udp": udp_limit, "tcp": TCP_MAX_FRAME_BYTES, "http": HTTP_MAX_BODY_BYTES}
            object.__setattr__(self, "max_message_bytes", default[self.protocol])
        elif self.protocol == "udp" and self.max_message_bytes > udp_limit:
            raise ValueError(
                f"--gelf_max_message_bytes={self.max_message_bytes} exceeds what GELF UDP can carry: "
                f"{MAX_CHUNKS} chunks x --gelf_chunk_size={self.chunk_size} = {udp_limit} bytes; lower "
                "it, raise --gelf_chunk_size, or use --gelf_protocol=tcp/http"
            )


def gelf_config_from_options(options: PipelineOptions) -> GelfConfig:
    """Read and validate the GELF options; raises ValueError naming the option to fix."""
    o = options.view_as(GelfOptions)
    return GelfConfig(
        host=o.gelf_host,
        port=o.gelf_port,
        protocol=o.gelf_protocol,
        compression=o.gelf_compression,
        chunk_size=o.gelf_chunk_size,
        tls=bool(o.gelf_tls),
        tls_ca_file=o.gelf_tls_ca_file,
        tls_cert_file=o.gelf_tls_cert_file,
        tls_key_file=o.gelf_tls_key_file,
        http_path=o.gelf_http_path,
        http_bulk=bool(o.gelf_http_bulk),
        timeout_seconds=o.gelf_timeout_seconds,
        retry_seconds=o.gelf_retry_seconds,
        max_message_bytes=o.gelf_max_message_bytes,
    )


# --------------------------------------------------------------------------------------------------------
# Building and encoding messages
# --------------------------------------------------------------------------------------------------------

# Graylog also takes `.` and `@`, but stores a `.` as `_` (Message.toElasticSearchObject), dropping one of
# two fields that then share a name; we send the stored name, so what we send is what is stored.
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
#: Names Graylog would skip (already set from a standard field, or the backend's own), plus the ones it
#: overwrites (`streams`) and `id` (the spec forbids `_id`; Graylog stores it as `id`).
# Names Graylog takes for its own fields (an additional field of that name is ignored or shadowed),
# plus `id`, which the GELF spec forbids. `_version` and `_type` are stored as plain `version` and
# `type` by Graylog, so they stay as they are.
RESERVED_FIELD_NAMES = frozenset(
    {
        "id",
        "message",
        "source",
        "timestamp",
        "full_message",
        "level",
        "facility",
        "file",
        "line",
        "host",
        "short_message",
        "streams",
    }
)
_KEY_CACHE: dict[object, str] = {}
_KEY_CACHE_MAX = 8192
_MAX_LONG = 2**63 - 1
_MIN_LONG = -(2**63)
#: A string of at most this many code points is at most MAX_FIELD_BYTES in UTF-8, so needs no check.
_SAFE_CHARS = MAX_FIELD_BYTES // 4
_NESTED_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_MESSAGE_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def field_key(name: object) -> str:
    """The GELF key (with its `_` prefix) under which Graylog stores `name` as given.

    Rules, in order: surrounding whitespace is trimmed; characters outside `A-Za-z0-9_-` become `_`;
    leading underscores are removed (so `_id`/`__x` cannot reach Graylog's and the backend's own names);
    an empty result becomes `unnamed`; a name Graylog would ignore or that clashes with a standard field
    (RESERVED_FIELD_NAMES, e.g. `id`, `message`, `source`) gets a `_` suffix (`id` -> `id_`), and a name in
    Graylog's own `gl2_` namespace gets an `x_` prefix (`gl2_x` -> `x_gl2_x`). Cached: the hot path sees
    the same few names over and over.
    """
    key = _KEY_CACHE.get(name)
    if key is None:
        text = name if isinstance(name, str) else str(name)
        clean = "".join(c if c in _NAME_CHARS else "_" for c in text.strip()).lstrip("_") or "unnamed"
        if clean in RESERVED_FIELD_NAMES:
            clean += "_"
        elif clean.startswith("gl2_"):
            clean = "x_" + clean
        key = "_" + clean
        if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
            _KEY_CACHE.clear()  # unbounded name sets (keys made of data) must not grow memory
        _KEY_CACHE[name] = key
    return key


def compact_json(value: object) -> str:
    """Compact JSON text of `value` (UTF-8, not escaped), other objects as their `str()`: for nested
    values carried as text fields, and whole records as full_message."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:  # orjson's JSONEncodeError: a lone surrogate, an int beyond 64 bits, a non-str key
        return _NESTED_JSON.encode(value)


# Graylog trims string field values as Java's String.trim() does (every character up to U+0020) and drops
# those left empty: we send them trimmed, so what is stored is what we sent.
_JAVA_TRIMMED = "".join(map(chr, range(0x21)))


def _truncate(text: str) -> str:
    """`text` cut to MAX_FIELD_BYTES of UTF-8 on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_FIELD_BYTES:
        return text
    return data[:MAX_FIELD_BYTES].decode("utf-8", "ignore")


def _other_value(value: object) -> object:
    """Converts the rarer value types; returns None to drop the field."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        value = int(value)
        return value if _MIN_LONG <= value <= _MAX_LONG else str(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        text = compact_json(list(value) if isinstance(value, set | frozenset) else value)
    elif isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "replace")
    else:
        text = str(value)
    text = text.strip(_JAVA_TRIMMED)
    if not text:
        return None
    return _truncate(text) if len(text) > _SAFE_CHARS else text


def build_message(
    short_message: str,
    host: str,
    timestamp: float,
    fields: Mapping[str, object],
    full_message: str | None = None,
    level: int | None = None,
) -> dict:
    """A GELF 1.1 message that Graylog stores completely, from one log event.

    Graylog silently drops what breaks its rules, so this applies them up front:
    - `host`: blank becomes `unknown` (Graylog rejects a blank host); `short_message`: blank becomes `-`
      (Graylog drops messages with an empty message);
    - `timestamp`: float seconds rounded to milliseconds; a non-finite or non-positive value is replaced
      by the current time (Graylog would do the same, silently);
    - `level`: clamped to the syslog range 0..7;
    - additional fields: keys from `field_key`; strings trimmed as Graylog trims them (characters up to
      U+0020); None, NaN/Infinity and empty strings dropped; booleans
      become "true"/"false" (Graylog drops booleans); ints beyond 64 bits become strings; dicts, lists and
      tuples become compact JSON text; other objects become `str(value)`; strings longer than 32766 UTF-8
      bytes are truncated (the search backend refuses longer terms). `short_message` and
      `full_message` are never truncated (they are analysed text, not terms).
    Two field names that map to the same key: the later one wins.
    """
    if type(short_message) is not str:
        short_message = "" if short_message is None else str(short_message)
    if not short_message or short_message.isspace():
        short_message = "-"
    if type(host) is not str:
        host = "" if host is None else str(host)
    if not host or host.isspace():
        host = "unknown"
    elif len(host) > _SAFE_CHARS:
        host = _truncate(host)
    try:
        ts = float(timestamp)
    except (TypeError, ValueError):
        ts = math.nan
    if not (ts > 0 and ts != math.inf):  # also catches NaN
        ts = time.time()
    message: dict = {
        "version": "1.1",
        "host": host,
        "short_message": short_message,
        "timestamp": round(ts, 3),
    }
    if full_message is not None:
        if type(full_message) is not str:
            full_message = str(full_message)
        if full_message and not full_message.isspace():
            message["full_message"] = full_message
    if level is not None:
        message["level"] = min(max(int(level), 0), 7)
    message.update(additional_fields(fields))
    return message


def additional_fields(fields: Mapping[str, object]) -> dict:
    """`fields` as GELF additional fields, by `build_message`'s rules: for fields shared by many
    messages (checked once, then added to each message as they are)."""
    checked: dict = {}
    cache = _KEY_CACHE
    for name, value in fields.items():
        kind = type(value)
        if kind is str:
            if not value:
                continue
            if value[0] <= " " or value[-1] <= " ":
                value = value.strip(_JAVA_TRIMMED)
                if not value:
                    continue
            if len(value) > _SAFE_CHARS:
                value = _truncate(value)
        elif kind is int:
            if not _MIN_LONG <= value <= _MAX_LONG:
                value = str(value)
        elif kind is float:
            if value != value or value == math.inf or value == -math.inf:
                continue
        elif value is None:
            continue
        else:
            value = _other_value(value)
            if value is None:
                continue
        key = cache.get(name)
        checked[key if key is not None else field_key(name)] = value
    return checked


def encode_message(message: Mapping, encoded_fields: bytes = b"") -> bytes:
    """Compact strict JSON in UTF-8, no ASCII escaping (smaller), by orjson. NaN and Infinity, which
    Graylog would reject the whole message for (`build_message` drops them), are written as null: a
    field Graylog skips. Lone surrogates, which UTF-8 cannot carry, become `?`.

    `encoded_fields`: more fields from `encode_fields`, added as they are (encoded once, used often)."""
    try:
        data = orjson.dumps(message)
    except TypeError:  # orjson's JSONEncodeError: a lone surrogate, an int beyond 64 bits, a non-dict
        data = _strict_json(message)
    return data[:-1] + encoded_fields + b"}" if encoded_fields else data


def _strict_json(message: Mapping) -> bytes:
    """What orjson refuses, by the standard library (ints beyond 64 bits are written as they are)."""
    text = _MESSAGE_JSON.encode(message)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def encode_fields(fields: Mapping[str, str]) -> bytes:
    """GELF-keyed fields encoded as `,"_key":value,…`, for `encode_message(message, encoded_fields)`:
    fields repeated across many messages (what an address is) are then encoded once, not per message.
    The keys must already be GELF keys (`field_key`) and not clash with the message's own."""
    return b"," + encode_message(fields)[1:-1] if fields else b""


def compress(payload: bytes, method: str) -> bytes:
    """gzip, zlib or no compression, as Graylog detects them by their first two bytes (gzip 1f 8b;
    zlib 78, i.e. a 32 KiB window).

    With Intel's ISA-L (python-isal) at level 1: a GELF message of 600 bytes compresses in about 6 µs
    to what zlib's level 6 makes of it, where zlib itself takes 13-25 µs, mostly to set up its state.
    Compression is per message over UDP, so this cost is paid for every event."""
    if method == "none":
        return payload
    if method == "gzip":
        return isal_zlib.compress(payload, COMPRESSION_LEVEL, 16 + 15)
    if method == "zlib":
        return isal_zlib.compress(payload, COMPRESSION_LEVEL, 15)
    raise ValueError(f"unknown GELF compression {method!r}: use gzip, zlib or none")


class GelfTooLarge(ValueError):
    """A message GELF cannot carry (more than 128 UDP chunks, or over the input's size limit)."""


def chunk(payload: bytes, chunk_size: int, message_id: bytes | None = None) -> list[bytes]:
    """The UDP datagrams of one (compressed) payload.

    A payload of at most `chunk_size` bytes is sent as it is. Otherwise it is cut into chunks of
    `chunk_size` bytes, each behind a 12-byte header: magic 0x1e 0x0f, an 8-byte message id, sequence
    number, sequence count. The id is random because Graylog groups chunks by id alone, across all
    senders. Raises GelfTooLarge above 128 chunks (Graylog would discard the whole set).
    """
    size = len(payload)
    if size <= chunk_size:
        return [payload]
    if chunk_size <= 0:
        raise ValueError(f"chunk size must be positive, not {chunk_size}")
    count = -(-size // chunk_size)
    if count > MAX_CHUNKS:
        raise GelfTooLarge(
            f"a GELF payload of {size} bytes needs {count} UDP chunks of {chunk_size} bytes; "
            f"Graylog accepts at most {MAX_CHUNKS}"
        )
    if message_id is None:
        message_id = os.urandom(8)
    elif len(message_id) != 8:
        raise ValueError(f"a GELF chunk message id has 8 bytes, not {len(message_id)}")
    prefix = b"\x1e\x0f" + message_id
    view = memoryview(payload)
    return [
        prefix + bytes((seq, count)) + view[seq * chunk_size : (seq + 1) * chunk_size] for seq in range(count)
    ]


def oversize_reason(payload: bytes, config: GelfConfig) -> str | None:
    """Why Graylog would drop `payload` for its size with this config, or None when it fits.

    UDP limits the compressed payload (chunk count); TCP the frame; HTTP the decoded body. Compression is
    only run when the payload could possibly exceed the limit (deflate never grows data by more than
    ~0.03 % plus a few header bytes).
    """
    size = len(payload)
    limit = config.max_message_bytes
    if config.protocol == "udp":
        if config.compression == "none":
            wire = size
        elif size + (size >> 12) + (size >> 14) + 64 <= limit:
            return None
        else:
            wire = len(compress(payload, config.compression))
        if wire <= limit:
            return None
        chunks = -(-wire // config.chunk_size)
        how = "uncompressed" if config.compression == "none" else f"{config.compression}-compressed"
        return (
            f"GELF UDP message of {size} bytes is {wire} bytes {how}, needing {chunks} chunks of "
            f"{config.chunk_size} bytes; the limit is {limit} bytes ({MAX_CHUNKS} chunks max in Graylog). "
            "Use --gelf_protocol=tcp or http for large messages"
        )
    if size + (len(HTTP_MESSAGE_END) if config.protocol == "http" else 0) <= limit:
        return None
    if config.protocol == "tcp":
        return (
            f"GELF TCP message of {size} bytes exceeds the {limit}-byte frame limit (Graylog's "
            "max_message_size; a longer frame is discarded and the connection closed)"
        )
    return (
        f"GELF HTTP message of {size} bytes exceeds the {limit}-byte body limit with its closing newline "
        "(Graylog's max_chunk_size, applied to the decoded body; it answers 413)"
    )


def reject_reason(payload: bytes, config: GelfConfig) -> tuple[str, str] | None:
    """(metric, reason) when Graylog could not take `payload` as it is, else None.

    Besides size: a payload under 2 bytes makes Graylog error out (on TCP it closes the connection), a 0x00
    inside a TCP message cuts the frame, a newline inside a bulk HTTP message splits it. `encode_message`
    never produces these, but payloads may come from elsewhere.
    """
    if len(payload) < 2:
        return "invalid", f"GELF payload of {len(payload)} bytes: Graylog needs at least 2"
    if config.protocol == "tcp" and b"\x00" in payload:
        return "invalid", "GELF TCP payload contains a 0x00 byte, which would cut its frame"
    if config.http_bulk and b"\n" in payload:
        return "invalid", "GELF HTTP bulk payload contains a newline, which would split the message"
    reason = oversize_reason(payload, config)
    return None if reason is None else ("too_large", reason)


# --------------------------------------------------------------------------------------------------------
# Senders
# --------------------------------------------------------------------------------------------------------


class GelfSendError(ConnectionError):
    """A TCP/HTTP send that kept failing for --gelf_retry_seconds. Raised to fail the bundle."""


class GelfHttpStatusError(OSError):
    """Graylog answered a GELF HTTP POST with a non-2xx status."""

    def __init__(self, status: int, reason: str, body: bytes):
        super().__init__(f"HTTP {status} {reason}: {body[:200]!r}")
        self.status, self.reason, self.body = status, reason, body[:200]

    def __reduce__(self):
        return type(self), (self.status, self.reason, self.body)


class GelfSender(Protocol):
    """The common shape of the protocol senders."""

    def open(self) -> None: ...

    def send(self, payloads: Sequence[bytes]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _noop() -> None:
    return None


def ssl_context(config: GelfConfig) -> ssl.SSLContext:
    """Client TLS context: verifies Graylog's certificate and host name (TLS 1.2+, as Graylog offers)."""
    context = ssl.create_default_context(cafile=config.tls_ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_cert_file:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


def _close_gracefully(sock: socket.socket, timeout: float = 2.0) -> None:
    """Closes a TLS connection with close_notify, reading what the server sent (TLS 1.3 session tickets)
    on the way: a socket closed with unread bytes is reset, and Graylog logs each reset as an error."""
    if isinstance(sock, ssl.SSLSocket):
        try:
            sock.settimeout(timeout)
            sock = sock.unwrap()
        except (OSError, ValueError):
            pass
    try:
        sock.close()
    except OSError:
        pass


def _peer_closed(sock: socket.socket) -> bool:
    """True when the server closed an idle connection. A GELF server never sends data, so a readable
    socket means EOF or an error; a TLS socket may also have read only session tickets (not closed)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        return sock.recv(1) == b""
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except OSError:
        return True
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass


def _delivered(target: str) -> None:
    metrics.HEALTH.succeeded(f"GELF {target}")
    metrics.timestamp("gelf", "last_success")


class _RetryingSender:
    """Exponential back-off with jitter for connection-oriented senders, bounded by retry_seconds."""

    FIRST_DELAY = 0.1
    MAX_DELAY = 10.0

    def __init__(
        self,
        config: GelfConfig,
        on_retry: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ):
        self.config = config
        self._on_retry = on_retry or _noop
        self._on_error = on_error or _noop
        self._ssl: ssl.SSLContext | None = None

    @property
    def _target(self) -> str:
        scheme = self.config.protocol + ("+tls" if self.config.tls else "")
        return f"{scheme}://{self.config.host}:{self.config.port}"

    def open(self) -> None:
        """Prepares TLS; the connection itself is made on first use, inside the retry loop."""
        self._ssl = ssl_context(self.config) if self.config.tls else None

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _retrying(self, action: Callable[[], None], what: str) -> None:
        deadline: float | None = None
        delay = self.FIRST_DELAY
        while True:
            try:
                action()
                _delivered(self._target)
                return
            except ssl.SSLCertVerificationError as error:
                metrics.HEALTH.failed(f"GELF {self._target}", f"certificate not accepted: {error}")
                self._on_error()
                self._disconnect()
                raise GelfSendError(
                    f"{what} to {self._target}: the server certificate was not accepted ({error}); check "
                    "--gelf_tls_ca_file and --gelf_host"
                ) from error
            except (OSError, http.client.HTTPException) as error:
                metrics.HEALTH.failed(f"GELF {self._target}", repr(error))
                self._on_error()
                self._disconnect()
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.config.retry_seconds
                if now >= deadline:
                    raise GelfSendError(
                        f"{what} to {self._target} failed for {self.config.retry_seconds:g} s "
                        f"(--gelf_retry_seconds); last error: {error!r}"
                    ) from error
                pause = min(delay, deadline - now) * random.uniform(0.5, 1.0)
                _LOG.warning("%s to %s failed (%r); retrying in %.2f s", what, self._target, error, pause)
                time.sleep(pause)
                delay = min(delay * 2, self.MAX_DELAY)
                self._on_retry()


class UdpSender:
    """GELF UDP: compress, chunk, sendto. UDP gives no delivery feedback; local send errors are counted
    (`on_error`) and the message is lost, which is what choosing UDP means."""

    def __init__(
        self,
        config: GelfConfig,
        on_retry: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ):
        self.config = config
        self._on_error = on_error or _noop
        self._target = f"udp://{config.host}:{config.port}"
        self._sock: socket.socket | None = None
        self._address: tuple | None = None

    def open(self) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            self.config.host, self.config.port, type=socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        # Connected: the kernel resolves the route once, not per datagram (a third less per send).
        # An ICMP "port unreachable" then fails a later send, counted like any other send error.
        sock.connect(address)
        self._sock, self._address = sock, address

    def send(self, payloads: Sequence[bytes]) -> None:
        if self._sock is None:
            self.open()
        send, address = self._sock.send, self._address
        method, chunk_size = self.config.compression, self.config.chunk_size
        failure = None
        for payload in payloads:
            data = compress(payload, method)
            for datagram in (data,) if len(data) <= chunk_size else chunk(data, chunk_size):
                try:
                    send(datagram)
                except OSError as error:
                    failure = error
                    self._on_error()
                    _LOG.debug("GELF UDP send to %s failed: %r", address, error)
        if failure is None:
            _delivered(self._target)
        else:
            metrics.HEALTH.failed(f"GELF {self._target}", repr(failure))

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class TcpSender(_RetryingSender):
    """GELF TCP: each message followed by one 0x00, written in large buffers with sendall.

    A failed write reconnects and writes the whole buffer again (at-least-once: frames that had already
    gone out are sent twice). Graylog never answers on GELF TCP, so "flushed" means written to the socket.
    `close` drops what was not flushed: that bundle failed and will be retried by the runner.
    """

    BUFFER_BYTES = 1 << 20

    def __init__(
        self,
        config: GelfConfig,
        on_retry: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ):
        super().__init__(config, on_retry, on_error)
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._count = 0

    def send(self, payloads: Sequence[bytes]) -> None:
        buffer = self._buffer
        for payload in payloads:
            buffer += payload
            buffer += b"\x00"
        self._count += len(payloads)
        if len(buffer) >= self.BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        data = bytes(self._buffer)
        what = f"Writing {self._count} GELF messages ({len(data)} bytes)"
        try:
            self._retrying(lambda: self._write(data), what)
        finally:
            self._buffer.clear()
            self._count = 0

    def _write(self, data: bytes) -> None:
        if self._sock is not None and _peer_closed(self._sock):
            self._disconnect()
        if self._sock is None:
            self._sock = self._connect()
        self._sock.sendall(data)

    def _connect(self) -> socket.socket:
        config = self.config
        sock = socket.create_connection((config.host, config.port), timeout=config.timeout_seconds)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=config.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            _close_gracefully(self._sock)
            self._sock = None

    def close(self) -> None:
        self._buffer.clear()
        self._count = 0
        self._disconnect()


class HttpSender(_RetryingSender):
    """GELF HTTP over one keep-alive connection: a POST per message, or with `http_bulk` as many messages
    per POST as fit the body limit. Only a 2xx answer counts as delivered; anything else is retried with
    back-off. Graylog answers 202 before decoding, so a 2xx means "received", not "valid".

    Every message ends with a newline, the last one too. An input with bulk receiving on splits bodies at
    newlines and keeps what follows the last one for the next request on the connection: a body without a
    closing newline would have its last message merged into the next body (lost), and one message per POST
    would pile up until the frame is too long. Without bulk receiving Graylog ignores the trailing newline.
    """

    def __init__(
        self,
        config: GelfConfig,
        on_retry: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ):
        super().__init__(config, on_retry, on_error)
        self._connection: http.client.HTTPConnection | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._headers = {"Content-Type": "application/json"}
        encoding = {"gzip": "gzip", "zlib": "deflate"}.get(config.compression or "none")
        if encoding:
            self._headers["Content-Encoding"] = encoding

    def send(self, payloads: Sequence[bytes]) -> None:
        if not self.config.http_bulk:
            for payload in payloads:
                self._post(payload + HTTP_MESSAGE_END, 1)
            return
        limit = self.config.max_message_bytes
        try:
            for payload in payloads:
                size = len(payload) + len(HTTP_MESSAGE_END)
                if self._pending and self._pending_bytes + size > limit:
                    self._post_pending()
                self._pending.append(payload)
                self._pending_bytes += size
        except BaseException:
            self._drop_pending()
            raise

    def flush(self) -> None:
        if self._pending:
            try:
                self._post_pending()
            finally:
                self._drop_pending()

    def _post_pending(self) -> None:
        body = HTTP_MESSAGE_END.join(self._pending) + HTTP_MESSAGE_END
        count = len(self._pending)
        self._drop_pending()
        self._post(body, count)

    def _drop_pending(self) -> None:
        self._pending = []
        self._pending_bytes = 0

    def _post(self, body: bytes, count: int) -> None:
        data = compress(body, self.config.compression or "none")
        what = f"POST of {count} GELF message(s) ({len(body)} bytes)"
        self._retrying(lambda: self._request(data), what)

    def _request(self, data: bytes) -> None:
        connection = self._connection
        if connection is not None and connection.sock is not None and _peer_closed(connection.sock):
            self._disconnect()
            connection = None
        if connection is None:
            config = self.config
            if self._ssl is not None:
                connection = http.client.HTTPSConnection(
                    config.host, config.port, timeout=config.timeout_seconds, context=self._ssl
                )
            else:
                connection = http.client.HTTPConnection(
                    config.host, config.port, timeout=config.timeout_seconds
                )
            self._connection = connection
        connection.request("POST", self.config.http_path, body=data, headers=self._headers)
        response = connection.getresponse()
        answer = response.read()
        if response.will_close:
            self._disconnect()
        if not 200 <= response.status < 300:
            raise GelfHttpStatusError(response.status, response.reason, answer)

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        self._drop_pending()
        self._disconnect()


def make_sender(
    config: GelfConfig,
    on_retry: Callable[[], None] | None = None,
    on_error: Callable[[], None] | None = None,
) -> GelfSender:
    """The sender for `config.protocol` (not yet opened)."""
    kind = {"udp": UdpSender, "tcp": TcpSender, "http": HttpSender}[config.protocol]
    return kind(config, on_retry=on_retry, on_error=on_error)


# --------------------------------------------------------------------------------------------------------
# Beam
# --------------------------------------------------------------------------------------------------------


class _WriteToGelfFn(beam.DoFn):
    """Sends GelfBatch elements; yields a DeadLetter for each payload Graylog could not take."""

    def __init__(self, config: GelfConfig, pipeline_name: str):
        self._config = config
        self._pipeline_name = pipeline_name
        self._messages = metrics.counter("gelf", "messages")
        self._bytes = metrics.counter("gelf", "bytes")
        self._errors = metrics.counter("gelf", "errors")
        self._retries = metrics.counter("gelf", "retries")
        self._too_large = metrics.counter("gelf", "too_large")
        self._invalid = metrics.counter("gelf", "invalid")
        self._sender: GelfSender | None = None

    def display_data(self) -> dict:
        c = self._config
        return {"pipeline": self._pipeline_name, "gelf": f"{c.protocol}://{c.host}:{c.port}"}

    def setup(self) -> None:
        self._sender = make_sender(
            self._config, on_retry=lambda: self._retries.inc(), on_error=lambda: self._errors.inc()
        )
        self._sender.open()

    def process(self, element: bytes | Sequence[bytes]) -> Iterator[DeadLetter]:
        payloads: Iterable[bytes] = (element,) if isinstance(element, bytes | bytearray) else element
        config = self._config
        accepted = []
        size = 0
        for payload in payloads:
            rejected = reject_reason(payload, config)
            if rejected is None:
                accepted.append(payload)
                size += len(payload)
                continue
            metric, reason = rejected
            (self._too_large if metric == "too_large" else self._invalid).inc()
            yield DeadLetter(stage="gelf", reason=reason, raw=bytes(payload))
        if accepted:
            self._sender.send(accepted)
            self._messages.inc(len(accepted))
            self._bytes.inc(size)

    def finish_bundle(self) -> None:
        self._sender.flush()

    def teardown(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None


class WriteToGelf(beam.PTransform):
    """Sends GELF payloads (GelfBatch or single bytes) to Graylog.

    Returns the PCollection of DeadLetter for payloads Graylog would drop for their size (stage "gelf",
    raw = the JSON payload). Metrics in namespace "gelf": messages, bytes (JSON bytes handed to the
    sender), errors (failed send attempts, including UDP send errors), retries, too_large, invalid.
    Keep this fused with the source (no GroupByKey/Reshuffle in between) so a bundle's completion means
    its messages were delivered.
    """

    def __init__(self, config: GelfConfig, pipeline_name: str):
        super().__init__()
        self._config = config
        self._pipeline_name = pipeline_name

    def expand(self, pcoll):
        return pcoll | "SendGelf" >> beam.ParDo(_WriteToGelfFn(self._config, self._pipeline_name))
