"""The flow-logs pipeline fed from files of pre-generated Kinesis records instead of a stream, so
that its own speed is measured, not the emulator's (moto serves a few thousand records a second).

    python -m bench.replay --replay_dir=DIR [any pipelines.flowlogs option, e.g. --runner=FlinkRunner]

Everything after the source is `pipelines.flowlogs` itself: decode → flow logs to GELF (with entity
lookups if asked) → GELF sender, on whichever runner. The files (`bench.records`) hold length-prefixed
subscription payloads; their names are spread over the workers, each file read as a stream.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bench.records import read_records
from pipelines import flowlogs
from pipelines.common import Plan, build_records_to_gelf, main_with_errors, run_cli
from transforms.deadletter import dead_letter_path_from_options
from transforms.gelf import gelf_config_from_options


class ReplayOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--replay_dir", help="Folder of *.records files (bench.records).")


class ReplayRecords(beam.PTransform):
    """The records of every file in a folder; on a cluster the files are spread over the workers."""

    def __init__(self, paths: Sequence[str], spread: bool):
        super().__init__()
        self._paths = list(paths)
        self._spread = spread

    def expand(self, pbegin):
        paths = pbegin | "Files" >> beam.Create(self._paths)
        if self._spread:
            paths = paths | "Spread" >> beam.Reshuffle()
        return paths | "Read" >> beam.FlatMap(read_records)


def plan(options: PipelineOptions, local: bool) -> Plan:
    folder = options.view_as(ReplayOptions).replay_dir
    paths = sorted(str(p) for p in Path(folder or ".").glob("*.records"))
    if not folder or not paths:
        raise ValueError("--replay_dir: give a folder holding *.records files (bench.records).")
    to_gelf = flowlogs.make_to_gelf(options, "bench")
    gelf_config = gelf_config_from_options(options)
    dead_letters = dead_letter_path_from_options(options)
    source = "Replay" >> ReplayRecords(paths, spread=not local)
    return Plan(
        build=lambda pipeline: build_records_to_gelf(
            pipeline, "replay", source, to_gelf, gelf_config, dead_letters
        ),
        summary=f"replaying {len(paths)} files from {folder}",
    )


def run(argv: list[str]) -> int:
    return run_cli("replay", __doc__.splitlines()[0], argv, (*flowlogs.OPTIONS, ReplayOptions), plan)


if __name__ == "__main__":
    sys.exit(main_with_errors(run))
