"""Dead letters written as Avro, locally and to S3 (moto), read back intact; option validation."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import logging
import os
import subprocess
import sys

import apache_beam as beam
import fastavro
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.runners import LOCAL_RUNNER
from tests.conftest import REPO, aws_client
from transforms.deadletter import (
    DEAD_LETTER_SCHEMA,
    DeadLetterOptions,
    WriteDeadLetters,
    _WriteDeadLetterFiles,
    dead_letter_path_from_options,
    main,
    read_dead_letters,
)
from transforms.elements import DeadLetter, SourceCoordinates

NOT_UTF8 = b"\x1f\x8b\x08\x00\xff\xfe\x00\x80 binary \xc3\x28"
SOURCE = SourceCoordinates(
    "cwl", "shardId-000000000001", "49590338271490256608559692538361571095921575989136588898", "pk-7"
)


def full_dead_letter(**overrides) -> DeadLetter:
    fields = dict(
        stage="flowlogs",
        reason="expected 14 fields, got 3",
        raw=b"2 123 eni-1",
        source=SOURCE,
        log_group="/vpc/flow",
        log_stream="eni-1-all",
        event_id="36936507442150588624318098345281930829312306440440872960",
        event_timestamp_ms=1700000000123,
        time_ms=1700000005000,
    )
    fields.update(overrides)
    return DeadLetter(**fields)


def avro_files(directory) -> list:
    return sorted(p for p in directory.iterdir() if p.suffix == ".avro")


def run_bundle(dofn: _WriteDeadLetterFiles, dead_letters: list[DeadLetter]) -> None:
    """One bundle through the writer's lifecycle, as a runner would drive it."""
    dofn.start_bundle()
    for dead_letter in dead_letters:
        dofn.process(dead_letter)
    dofn.finish_bundle()


def test_every_field_survives_the_round_trip(tmp_path):
    dofn = _WriteDeadLetterFiles(str(tmp_path), "flowlogs-pipeline")
    dofn.setup()

    run_bundle(dofn, [full_dead_letter(), DeadLetter(stage="cloudwatch", reason="not gzip", raw=NOT_UTF8)])

    (file,) = avro_files(tmp_path)
    with open(file, "rb") as f:
        reader = fastavro.reader(f)
        assert reader.codec == "deflate"
        assert reader.writer_schema["name"] == "aws_gelf_pipelines.DeadLetter"
        first, second = list(reader)
    assert first == {
        "pipeline": "flowlogs-pipeline",
        "stage": "flowlogs",
        "reason": "expected 14 fields, got 3",
        "raw": b"2 123 eni-1",
        "stream": "cwl",
        "shard_id": "shardId-000000000001",
        "sequence_number": "49590338271490256608559692538361571095921575989136588898",
        "partition_key": "pk-7",
        "s3_uri": None,
        "sqs_message_id": None,
        "log_group": "/vpc/flow",
        "log_stream": "eni-1-all",
        "event_id": "36936507442150588624318098345281930829312306440440872960",
        "event_timestamp_ms": 1700000000123,
        "time": dt.datetime(2023, 11, 14, 22, 13, 25, tzinfo=dt.UTC),
    }
    assert second["raw"] == NOT_UTF8
    assert second["stream"] is None and second["event_timestamp_ms"] is None
    assert set(first) == {field["name"] for field in DEAD_LETTER_SCHEMA["fields"]}


def test_one_file_per_bundle_with_dead_letters_and_none_for_empty_bundles(tmp_path, caplog):
    directory = tmp_path / "missing" / "dead-letter"
    dofn = _WriteDeadLetterFiles(str(directory), "raw logs/v2")
    dofn.setup()
    assert directory.is_dir()

    with caplog.at_level(logging.WARNING, logger="transforms.deadletter"):
        run_bundle(dofn, [full_dead_letter(reason=f"bad {i}") for i in range(3)])
        run_bundle(dofn, [])
        run_bundle(dofn, [full_dead_letter(reason="late")])

    files = avro_files(directory)
    assert len(files) == 2
    assert all(f.name.startswith("raw_logs_v2-") for f in files)
    assert sorted(len(read_dead_letters(f)) for f in files) == [1, 3]
    assert not [p for p in directory.iterdir() if p.suffix != ".avro"], "no partial files left behind"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "Wrote 3 dead letter(s)" in warnings[0] and "reason: bad 0" in warnings[0]


def test_pipeline_writes_all_dead_letters_and_counts_them_per_stage(tmp_path):
    dead_letters = [full_dead_letter(reason=f"r{i}") for i in range(4)] + [
        DeadLetter(stage="cloudwatch", reason="corrupt gzip", raw=NOT_UTF8)
    ]
    pipeline = beam.Pipeline(options=PipelineOptions([f"--runner={LOCAL_RUNNER}"]))
    _ = (
        pipeline
        | "Some" >> beam.Create(dead_letters)
        | "Write some" >> WriteDeadLetters(str(tmp_path / "a"), "p")
    )
    _ = pipeline | "None" >> beam.Create([]) | "Write none" >> WriteDeadLetters(str(tmp_path / "b"), "p")
    result = pipeline.run()
    result.wait_until_finish()

    records = read_dead_letters(tmp_path / "a")
    assert sorted(r["reason"] for r in records) == ["corrupt gzip", "r0", "r1", "r2", "r3"]
    assert {r["raw"] for r in records} == {b"2 123 eni-1", NOT_UTF8}
    assert avro_files(tmp_path / "b") == []
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("dead_letter"))["counters"]
    }
    assert counters == {"written": 5, "written_flowlogs": 4, "written_cloudwatch": 1}


def test_dead_letters_reach_s3(moto):
    s3 = aws_client("s3", moto)
    s3.create_bucket(Bucket="dead-letters")
    options = PipelineOptions(
        [
            f"--runner={LOCAL_RUNNER}",
            f"--s3_endpoint_url={moto}",
            "--s3_access_key_id=testing",
            "--s3_secret_access_key=testing",
            "--s3_region_name=us-east-1",
        ]
    )

    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | beam.Create([full_dead_letter(raw=NOT_UTF8), full_dead_letter(stage="cloudwatch")])
            | WriteDeadLetters("s3://dead-letters/cwl/errors", "cwl")
        )

    (obj,) = s3.list_objects_v2(Bucket="dead-letters", Prefix="cwl/errors/")["Contents"]
    assert obj["Key"].startswith("cwl/errors/cwl-") and obj["Key"].endswith(".avro")
    body = s3.get_object(Bucket="dead-letters", Key=obj["Key"])["Body"].read()
    records = list(fastavro.reader(io.BytesIO(body)))
    assert sorted((r["stage"], r["raw"]) for r in records) == [
        ("cloudwatch", b"2 123 eni-1"),
        ("flowlogs", NOT_UTF8),
    ]
    assert all(r["sequence_number"] == SOURCE.sequence_number for r in records)


def options(*args: str) -> PipelineOptions:
    return PipelineOptions(list(args))


def test_default_path_is_a_local_relative_directory_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert options().view_as(DeadLetterOptions).dead_letter_path == "dead-letter"
    assert dead_letter_path_from_options(options()) == str(tmp_path / "dead-letter")
    assert dead_letter_path_from_options(options("--dead_letter_path=s3://b/p")) == "s3://b/p"


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_path_is_refused(value):
    with pytest.raises(ValueError, match="--dead_letter_path must not be empty"):
        dead_letter_path_from_options(options(f"--dead_letter_path={value}"))


def test_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")

    with pytest.raises(ValueError, match="--dead_letter_path .* exists and is not a directory"):
        dead_letter_path_from_options(options(f"--dead_letter_path={tmp_path / 'file'}"))
    with pytest.raises(ValueError, match="--dead_letter_path .* cannot be created"):
        dead_letter_path_from_options(options(f"--dead_letter_path={tmp_path / 'file' / 'sub'}"))


def test_unwritable_directory_is_refused(tmp_path):
    """Mode bits stop a service user; nothing stops root but a filesystem that takes no new files (a
    read-only root filesystem, procfs): /proc/self stands for both, so this holds as root too."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    unwritable = ["/proc/self"] + ([] if os.geteuid() == 0 else [str(locked)])

    for path in unwritable:
        with pytest.raises(ValueError, match=f"--dead_letter_path {path} is not writable"):
            dead_letter_path_from_options(options(f"--dead_letter_path={path}"))
    with pytest.raises(ValueError, match="cannot be created: /proc/self is not a writable directory"):
        dead_letter_path_from_options(options("--dead_letter_path=/proc/self/dead-letters"))


def test_summary_counts_per_stage_and_reason_and_shows_raw_as_text(tmp_path, capsys):
    dofn = _WriteDeadLetterFiles(str(tmp_path), "p")
    run_bundle(
        dofn,
        [
            full_dead_letter(),
            full_dead_letter(),
            DeadLetter(stage="cloudwatch", reason="not JSON", raw=gzip.compress(b"plain text")),
            DeadLetter(stage="cloudwatch", reason="not gzip", raw=b"\xff\xfe"),
        ],
    )

    assert main([str(tmp_path), "--show", "4"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("4 dead letter(s)\n")
    assert "       2  flowlogs: expected 14 fields, got 3" in out
    assert "       1  cloudwatch: not JSON" in out
    assert "raw: 2 123 eni-1" in out
    assert "raw: gunzipped: plain text" in out
    assert "raw: 2 bytes, hex: fffe" in out
    assert "sequence_number=49590338271490256608559692538361571095921575989136588898" in out


def test_module_runs_as_a_command(tmp_path):
    run_bundle(_WriteDeadLetterFiles(str(tmp_path), "p"), [full_dead_letter()])

    done = subprocess.run(
        [sys.executable, "-m", "transforms.deadletter", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "1 dead letter(s)" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "transforms.deadletter", str(tmp_path / "nope")], cwd=REPO, capture_output=True
    )
    assert missing.returncode == 1
