"""What every pipeline's command line shares: run configs, `--help`, validation, runner choice, stopping.

Bad configuration fails here, at start, with a message that names the option and the fix; nothing is
read from AWS before the options are known to be usable.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import apache_beam as beam
import yaml
from apache_beam.options.pipeline_options import (
    PipelineOptions,
    _BeamArgumentParser,
)

from pipelines.runners import (
    FLINK_JAVA_OPTIONS,
    ConfigError,
    Stopper,
    counters,
    flink_defaults,
    prepare_runner,
    runner_name,
)
from transforms import kinesis, stopping
from transforms.aws import aws_config_from_options, region_from_options
from transforms.cloudwatch import DecodeSubscription
from transforms.deadletter import WriteDeadLetters, dead_letter_path_from_options
from transforms.elements import DEAD_LETTER
from transforms.enrichment import EntityOptions
from transforms.entities import iam_policy
from transforms.gelf import WriteToGelf, gelf_config_from_options
from transforms.kinesis import ReadFromKinesis, kinesis_config_from_options
from transforms.monitoring import MonitoringOptions, monitoring_from_options
from transforms.positions import (
    LeaseHeld,
    PositionOptions,
    StreamLease,
    position_store_from_options,
    reset_positions,
)
from transforms.positions_dynamodb import table_policy_statement

_LOG = logging.getLogger("pipelines")


class RunOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("Run")
        group.add_argument(
            "--config",
            default=None,
            help="A run config (YAML mapping of option name to value), e.g. run_configs/flowlogs-aws.yaml; "
            "options on the command line override it.",
        )
        group.add_argument(
            "--demo",
            default=False,
            action="store_true",
            help="Run on an embedded demo: local AWS emulator, sample data, local GELF receiver.",
        )


def config_args(path: str) -> list[str]:
    """Command-line arguments from a run config file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config={path}: no such file. The shipped run configs are in run_configs/.")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--config={path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config={path} must hold a mapping of option names to values.")
    args: list[str] = []
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if value is None or value is False:
            continue
        if value is True:
            args.append(f"--{name}")
        elif isinstance(value, list):
            args.extend(f"--{name}={item}" for item in value)
        else:
            args.append(f"--{name}={value}")
    return args


def expand_config(argv: Sequence[str]) -> list[str]:
    """Puts a `--config` file's options before the command line's, so the command line wins."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return config_args(argv[i + 1]) + argv[:i] + argv[i + 2 :]
        if arg.startswith("--config="):
            return config_args(arg.split("=", 1)[1]) + argv[:i] + argv[i + 1 :]
    return argv


def print_help(prog: str, description: str, option_classes: Sequence[type[PipelineOptions]]) -> None:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Any other Apache Beam option (e.g. --runner=FlinkRunner --flink_master=host:8081) is passed "
        "to Beam. Options can also come from a run config: --config run_configs/NAME.yaml.",
    )
    runner = parser.add_argument_group("Runner")
    runner.add_argument(
        "--runner",
        default="DirectRunner",
        help="DirectRunner (local, on Beam's FnApiRunner) or FlinkRunner/PortableRunner.",
    )
    runner.add_argument(
        "--region", default=None, help="AWS region of the stream (Beam's own --region option)."
    )
    for cls in option_classes:
        cls._add_argparse_args(parser)
    parser.print_help()


def known_option_names() -> set[str]:
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    names = set()
    for action in parser._actions:
        names.update(s for s in action.option_strings if s.startswith("--"))
    return names


def check_unknown_options(argv: Sequence[str], ours: set[str], local: bool) -> None:
    """Refuses misspelt options on local runs (portable runners add options of their own)."""
    known = known_option_names()
    for arg in argv:
        if not arg.startswith("--"):
            continue
        name = arg.split("=", 1)[0]
        if name in known or (not local and name in FLINK_JAVA_OPTIONS):
            continue
        close = difflib.get_close_matches(name, sorted(ours), n=1)
        hint = f" Did you mean {close[0]}?" if close else " See --help for the options."
        if local or close:
            raise ConfigError(f"Unknown option {name}.{hint}")
        _LOG.warning("Option %s is not a Python option; passing it to the runner.", name)


def main_with_errors(run: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Runs `run`, turning configuration errors into one clear line and exit status 2."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for noisy in ("botocore", "urllib3", "apache_beam"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_kinesis_to_gelf(pipeline, name: str, read_config, to_gelf, gelf_config, dead_letter_path: str):
    """Kinesis → CloudWatch decode → `to_gelf` → GELF, each stage's dead letters written beside it.

    One fused chain, with no Flatten, GroupByKey or Reshuffle: on the DirectRunner anything not fused
    with the streaming source would receive nothing until the source ends.
    """
    source = "ReadKinesis" >> ReadFromKinesis(read_config)
    build_records_to_gelf(pipeline, name, source, to_gelf, gelf_config, dead_letter_path)


def build_records_to_gelf(pipeline, name: str, source, to_gelf, gelf_config, dead_letter_path: str):
    """`build_kinesis_to_gelf` from any `source` of KinesisRecords (the benchmarks replay files)."""
    records = pipeline | source
    decoded = records | "DecodeSubscription" >> beam.ParDo(DecodeSubscription()).with_outputs(
        DEAD_LETTER, main="batches"
    )
    encoded = decoded.batches | "ToGelf" >> beam.ParDo(to_gelf).with_outputs(DEAD_LETTER, main="gelf")
    undeliverable = encoded.gelf | "WriteGelf" >> WriteToGelf(gelf_config, name)
    decoded[DEAD_LETTER] | "DeadLettersDecode" >> WriteDeadLetters(dead_letter_path, name)
    encoded[DEAD_LETTER] | "DeadLettersParse" >> WriteDeadLetters(dead_letter_path, name)
    undeliverable | "DeadLettersGelf" >> WriteDeadLetters(dead_letter_path, name)


@dataclass(frozen=True)
class Plan:
    """A validated pipeline, ready to build: `build` adds its steps, `summary` says what it reads.

    `done`, for a bounded run whose job cannot end by itself on a cluster: the launcher ends the job
    once it returns True (checked every second)."""

    build: Callable[[beam.Pipeline], None]
    summary: str
    done: Callable[[], bool] | None = None
    # Held for the whole run (the position store's lease of a local Kinesis run).
    hold: contextlib.AbstractContextManager = contextlib.nullcontext()


def run_cli(
    name: str,
    description: str,
    argv: list[str],
    option_classes: Sequence[type[PipelineOptions]],
    plan: Callable[[PipelineOptions, bool], Plan],
    demo: Callable[[list[str], Callable[[list[str]], int]], int] | None = None,
    needs_checkpoints: bool = False,
) -> int:
    """A pipeline's command line: parse, validate (`plan` raises ValueError naming the option), run,
    report. `plan(options, local)` is told whether the run is local (one worker)."""
    if MonitoringOptions not in option_classes:
        option_classes = (*option_classes, MonitoringOptions)
    if "-h" in argv or "--help" in argv:
        print_help(f"python -m pipelines.{name}", description, option_classes)
        return 0
    argv = expand_config(argv)
    options = PipelineOptions(argv)
    if EntityOptions in option_classes and options.view_as(EntityOptions).print_iam_policy:
        roles = [r for r in (options.view_as(EntityOptions).lookup_role_arns or "").split(",") if r]
        policies = {"pipeline": iam_policy(roles)}
        if PositionOptions in option_classes:
            positions = options.view_as(PositionOptions)
            if positions.position_store == "dynamodb":
                policies["pipeline"]["Statement"].append(
                    table_policy_statement(
                        region_from_options(options) or "*",
                        positions.position_table,
                        positions.create_position_table,
                    )
                )
        if roles:
            policies["each lookup role"] = iam_policy()
        print(json.dumps(policies, indent=2))
        return 0
    if runner_name(options).lower() == "flinkrunner":
        options = PipelineOptions(argv + flink_defaults(argv, name, needs_checkpoints))
    if options.view_as(RunOptions).demo:
        if demo is None:
            raise ConfigError(f"pipelines.{name} has no --demo.")
        rest = [a for a in argv if a != "--demo"]
        return demo(
            rest,
            lambda args: run_cli(name, description, args, option_classes, plan, None, needs_checkpoints),
        )

    parser = argparse.ArgumentParser(add_help=False)
    for cls in option_classes:
        cls._add_argparse_args(parser)
    ours = {s for action in parser._actions for s in action.option_strings if s.startswith("--")}
    ours.add("--region")
    try:
        local = prepare_runner(options)
        check_unknown_options(argv, ours, local)
        monitoring = monitoring_from_options(options, local)
        planned = plan(options, local)
    except ValueError as error:
        raise ConfigError(str(error)) from None

    try:
        planned.hold.__enter__()
    except LeaseHeld as error:
        raise ConfigError(str(error)) from None
    try:
        monitoring.start()
        stopper = Stopper()
        stopper.install()
        _LOG.info("%s: %s", name, planned.summary)
        pipeline = beam.Pipeline(options=options)
        planned.build(pipeline)
        result = pipeline.run()
        stopper.attach(result, options, local)
        if planned.done is not None:
            stopper.stop_when(planned.done, f"{name}: done")
        state = stopper.wait(result)
    finally:
        monitoring.stop()
        planned.hold.__exit__(None, None, None)
    totals = counters(result)
    summary = ", ".join(f"{k}={v}" for k, v in sorted(totals.items()) if v and not k.startswith("beam/"))
    _LOG.info("%s finished (%s): %s", name, state, summary or "no counters")
    return 0


def run_kinesis_pipeline(
    name: str,
    description: str,
    argv: list[str],
    option_classes: Sequence[type[PipelineOptions]],
    make_to_gelf: Callable[[PipelineOptions, str | None], object],
    demo: Callable[[list[str], Callable[[list[str]], int]], int] | None = None,
) -> int:
    """The command line of a Kinesis → GELF pipeline."""

    def plan(options: PipelineOptions, local: bool) -> Plan:
        if not options.view_as(kinesis.KinesisOptions).stream_name:
            kinesis_config_from_options(options, None)  # says how to name a stream, or try the demo
        aws = aws_config_from_options(options)
        read_config = replace(kinesis_config_from_options(options, aws), split_shards=not local)
        gelf_config = gelf_config_from_options(options)
        dead_letter_path = dead_letter_path_from_options(options)
        to_gelf = make_to_gelf(options, read_config.stream)
        positions = position_store_from_options(options, name, local, aws)
        stream_key = kinesis.check_stream(read_config)
        read_config = replace(read_config, positions=positions, stream_key=stream_key)
        hold = contextlib.nullcontext()
        if positions is not None:
            hold = StreamLease(positions, stream_key, stopping.request_stop)
            if options.view_as(PositionOptions).reset_positions:
                reset_positions(positions, stream_key, hold.owner)
        return Plan(
            hold=hold,
            build=lambda pipeline: build_kinesis_to_gelf(
                pipeline, name, read_config, to_gelf, gelf_config, dead_letter_path
            ),
            summary=f"reading {read_config.stream} ({aws.region}, {read_config.initial_position}) → "
            f"GELF {gelf_config.protocol} {gelf_config.host}:{gelf_config.port}; "
            f"dead letters in {dead_letter_path}"
            + (f"; positions in {positions.where}" if positions else ""),
        )

    return run_cli(name, description, argv, option_classes, plan, demo)
