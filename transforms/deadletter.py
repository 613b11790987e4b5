"""The dead-letter output: rejected input, with why and where it came from, kept as Avro files.

Each bundle's dead letters are written as one Avro container file before the bundle completes, so
a rejected record is durable by the time its input is checkpointed, and nothing is lost silently
(the Graylog plugin only logged such records). Run `python -m transforms.deadletter DIR` to see
what a directory holds.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apache_beam as beam
import fastavro
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import metrics
from transforms.elements import DeadLetter

log = logging.getLogger(__name__)

DEFAULT_DEAD_LETTER_PATH = "dead-letter"

#: A bundle's dead letters are written as one file; only a bundle whose raw payloads exceed this
#: many bytes is split into several files, so a huge bundle cannot exhaust the worker's memory.
MAX_BUFFERED_RAW_BYTES = 64 * 1024 * 1024


class DeadLetterOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--dead_letter_path",
            default=DEFAULT_DEAD_LETTER_PATH,
            help=(
                "Directory receiving the Avro files of rejected input (raw bytes, reason, where it "
                "came from: Kinesis coordinates or S3 object and SQS message): a local path or "
                "s3://bucket/prefix (S3 uses Beam's --s3_* options). "
                f"Default: {DEFAULT_DEAD_LETTER_PATH!r}, relative to the working directory. On a "
                "cluster use storage every worker can reach, such as s3://, or the files end up "
                "scattered over the workers' local disks."
            ),
        )


def _optional(avro_type: str) -> dict[str, Any]:
    return {"type": ["null", avro_type], "default": None}


DEAD_LETTER_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "DeadLetter",
    "namespace": "aws_gelf_pipelines",
    "doc": "An input the pipeline could not process, with the reason and its raw bytes.",
    "fields": [
        {"name": "pipeline", "type": "string"},
        {"name": "stage", "type": "string"},
        {"name": "reason", "type": "string"},
        {"name": "raw", "type": "bytes"},
        {"name": "stream", **_optional("string")},
        {"name": "shard_id", **_optional("string")},
        {"name": "sequence_number", **_optional("string")},
        {"name": "partition_key", **_optional("string")},
        {"name": "s3_uri", **_optional("string")},
        {"name": "sqs_message_id", **_optional("string")},
        {"name": "log_group", **_optional("string")},
        {"name": "log_stream", **_optional("string")},
        {"name": "event_id", **_optional("string")},
        {"name": "event_timestamp_ms", **_optional("long")},
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
_PARSED_SCHEMA = fastavro.parse_schema(DEAD_LETTER_SCHEMA)


def dead_letter_record(dead_letter: DeadLetter, pipeline: str) -> dict[str, Any]:
    """The Avro record (a dict matching DEAD_LETTER_SCHEMA) of one dead letter."""
    source = dead_letter.source
    return {
        "pipeline": pipeline,
        "stage": dead_letter.stage,
        "reason": dead_letter.reason,
        "raw": bytes(dead_letter.raw),
        "stream": source.stream,
        "shard_id": source.shard_id,
        "sequence_number": source.sequence_number,
        "partition_key": source.partition_key,
        "s3_uri": source.s3_uri,
        "sqs_message_id": source.sqs_message_id,
        "log_group": dead_letter.log_group,
        "log_stream": dead_letter.log_stream,
        "event_id": dead_letter.event_id,
        "event_timestamp_ms": dead_letter.event_timestamp_ms,
        "time": dead_letter.time_ms,
    }


def encode_avro(records: Iterable[dict[str, Any]]) -> bytes:
    """An Avro container file (deflate) holding the given dead-letter records."""
    out = io.BytesIO()
    fastavro.writer(out, _PARSED_SCHEMA, records, codec="deflate")
    return out.getvalue()


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def dead_letter_file_name(pipeline: str, now: float | None = None) -> str:
    """`{pipeline}-{YYYYmmddTHHMMSS}-{uuid4hex}.avro`: sortable by time, unique across workers."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", pipeline) or "pipeline"
    return f"{safe}-{stamp}-{uuid.uuid4().hex}.avro"


def write_dead_letter_file(path: str, pipeline: str, records: list[dict[str, Any]]) -> str:
    """Write one Avro file under `path` (local or any Beam filesystem) and return its name.

    Object stores publish an object only when it is closed; a local file is written under a
    temporary name and renamed, so readers never see a half-written file either way.
    """
    data = encode_avro(records)
    target = FileSystems.join(path, dead_letter_file_name(pipeline))
    if not is_local(path):
        with FileSystems.create(target, "application/avro", CompressionTypes.UNCOMPRESSED) as out:
            out.write(data)
        return target
    os.makedirs(path, exist_ok=True)
    partial = FileSystems.join(path, "." + os.path.basename(target) + ".partial")
    with FileSystems.create(partial, "application/avro", CompressionTypes.UNCOMPRESSED) as out:
        out.write(data)
    os.replace(partial, target)
    return target


class _WriteDeadLetterFiles(beam.DoFn):
    def __init__(self, path: str, pipeline_name: str) -> None:
        self.path = path
        self.pipeline_name = pipeline_name
        self.written = Metrics.counter("dead_letter", "written")

    def setup(self) -> None:
        if is_local(self.path):
            os.makedirs(self.path, exist_ok=True)

    def start_bundle(self) -> None:
        self._buffer: list[dict[str, Any]] = []
        self._buffered_bytes = 0

    def process(self, dead_letter: DeadLetter) -> Iterable[None]:
        self._buffer.append(dead_letter_record(dead_letter, self.pipeline_name))
        self._buffered_bytes += len(dead_letter.raw)
        if self._buffered_bytes > MAX_BUFFERED_RAW_BYTES:
            self._flush()
        return ()  # no output; said outright, or Beam warns at every start that nothing is returned

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        records, self._buffer, self._buffered_bytes = self._buffer, [], 0
        if not records:
            return
        target = write_dead_letter_file(self.path, self.pipeline_name, records)
        self.written.inc(len(records))
        for stage, count in Counter(r["stage"] for r in records).items():
            metrics.counter("dead_letter", "written", stage=stage).inc(count)
        first = records[0]
        log.warning(
            "Wrote %d dead letter(s) to %s; first: stage %s, reason: %s",
            len(records),
            target,
            first["stage"],
            first["reason"],
        )


class WriteDeadLetters(beam.PTransform):
    """Write a PCollection of DeadLetter as Avro files under `path`, one file per bundle.

    Apply it to each stage's dead-letter output separately rather than to a Flatten of them: on the
    DirectRunner, steps not fused with a streaming source only run once the source ends.
    """

    def __init__(self, path: str, pipeline_name: str) -> None:
        super().__init__()
        if not path:
            raise ValueError("WriteDeadLetters needs a path (--dead_letter_path)")
        self.path = path
        self.pipeline_name = pipeline_name

    def expand(self, dead_letters):
        return dead_letters | "WriteAvro" >> beam.ParDo(_WriteDeadLetterFiles(self.path, self.pipeline_name))


def dead_letter_path_from_options(options: PipelineOptions) -> str:
    """The validated --dead_letter_path; local paths are made absolute, so logs name them fully."""
    path = (options.view_as(DeadLetterOptions).dead_letter_path or "").strip()
    if not path:
        raise ValueError("--dead_letter_path must not be empty")
    if not is_local(path):
        return path
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"--dead_letter_path {path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"--dead_letter_path {path} is not writable")
        return path
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--dead_letter_path {path} cannot be created: {parent} is not a writable directory")
    return path


def read_dead_letters(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every dead letter in the .avro files under a local directory (or in one file), oldest file first."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no dead-letter directory or file at {root}")
    files = [root] if root.is_file() else sorted(root.rglob("*.avro"), key=lambda p: (p.name, str(p)))
    records: list[dict[str, Any]] = []
    for file in files:
        with open(file, "rb") as f:
            records.extend(fastavro.reader(f))
    return records


def raw_as_text(raw: bytes, limit: int = 300) -> str:
    """The raw bytes for a human: text if they are UTF-8 (after gunzip if gzipped), else hex."""
    label = ""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw, label = gzip.decompress(raw)[: limit * 4], "gunzipped: "
        except (OSError, EOFError, ValueError):
            pass
    try:
        text = label + raw.decode("utf-8")
    except UnicodeDecodeError:
        text = f"{len(raw)} bytes, hex: {raw[: limit // 2].hex()}"
    return text if len(text) <= limit else text[:limit] + "…"


_WHERE_KEYS = (
    "pipeline",
    "stream",
    "shard_id",
    "sequence_number",
    "partition_key",
    "s3_uri",
    "sqs_message_id",
    "log_group",
    "log_stream",
    "event_id",
    "event_timestamp_ms",
)


def summarise(records: list[dict[str, Any]], show: int = 5) -> str:
    lines = [f"{len(records)} dead letter(s)"]
    for (stage, reason), count in Counter((r["stage"], r["reason"]) for r in records).most_common():
        lines.append(f"{count:8d}  {stage}: {reason}")
    for r in records[:show]:
        where = ", ".join(f"{key}={r[key]}" for key in _WHERE_KEYS if r.get(key) is not None)
        lines += ["", f"{r['time']:%Y-%m-%dT%H:%M:%S}Z {r['stage']}: {r['reason']}", f"  {where}"]
        lines.append(f"  raw: {raw_as_text(r['raw'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transforms.deadletter", description="Summarise the dead letters in a directory."
    )
    parser.add_argument("path", help="dead-letter directory (local) or one .avro file")
    parser.add_argument("--show", type=int, default=5, help="how many records to print in full (default 5)")
    args = parser.parse_args(argv)
    try:
        records = read_dead_letters(args.path)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    print(summarise(records, args.show))
    return 0


if __name__ == "__main__":
    sys.exit(main())
