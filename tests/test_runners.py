"""Runner settings chosen by the pipelines, before anything runs."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.runners import ConfigError, flink_defaults, flink_rest_url, prepare_runner


def test_flink_runs_get_the_settings_the_reader_needs_and_a_job_name():
    added = flink_defaults(["--runner=FlinkRunner", "--stream_name=s"], "flowlogs")
    assert "--finish_bundle_before_checkpointing" in added
    assert [a for a in added if a.startswith("--job_name=flowlogs-")]
    assert not [a for a in added if a.startswith("--shutdown_sources_after_idle_ms")]


def test_a_bounded_flink_run_lets_its_idle_sources_shut_down_so_the_job_can_end():
    added = flink_defaults(["--stop_at_latest"], "flowlogs")
    assert "--shutdown_sources_after_idle_ms=1000" in added


def test_options_given_by_the_user_are_kept():
    argv = [
        "--stop_at_latest",
        "--job_name=mine",
        "--finish_bundle_before_checkpointing=false",
        "--shutdown_sources_after_idle_ms=0",
    ]
    assert flink_defaults(argv, "flowlogs") == []


@pytest.mark.parametrize(
    ("master", "url"),
    [
        ("[local]", None),
        ("[auto]", None),
        ("localhost:8081", "http://localhost:8081"),
        ("https://flink.example.com", "https://flink.example.com"),
    ],
)
def test_the_flink_rest_address_comes_from_the_master(master, url):
    assert flink_rest_url(PipelineOptions([f"--flink_master={master}"])) == url


def test_a_missing_job_server_jar_names_the_option_and_the_make_target(tmp_path):
    options = PipelineOptions(["--runner=FlinkRunner", f"--flink_job_server_jar={tmp_path / 'x.jar'}"])
    with pytest.raises(ConfigError, match="--flink_job_server_jar=.*make flink-jobserver"):
        prepare_runner(options)


def test_flink_runs_stream_and_are_not_local():
    options = PipelineOptions(["--runner=FlinkRunner"])
    assert prepare_runner(options) is False
    assert options.get_all_options()["streaming"] is True


def test_a_pipeline_that_deletes_at_checkpoints_gets_checkpointing_and_keeps_its_sources_alive():
    added = flink_defaults(
        ["--runner=FlinkRunner", "--stop_when_idle=5"], "cloudtrail", needs_checkpoints=True
    )
    assert "--checkpointing_interval=10000" in added
    assert not any(a.startswith("--shutdown_sources_after_idle_ms") for a in added), (
        "Flink completes no checkpoint once idle sources shut down: the deletes would never come"
    )
    given = flink_defaults(["--checkpointing_interval=2000"], "cloudtrail", needs_checkpoints=True)
    assert not any(a.startswith("--checkpointing_interval") for a in given)
