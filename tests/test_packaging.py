"""The pinned Beam version is one and the same wherever it appears: pyproject, the installed package,
the Docker image, the Flink job server and the run configs."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
import zipfile
from importlib.metadata import version
from pathlib import Path

import yaml

from flink.cluster import FLINK_MINOR, FLINK_VERSION, flink_home, job_server_jar
from tests.conftest import REPO

DOCKER_INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def pinned_beam() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if d.startswith("apache-beam")]
    assert len(pins) == 1 and "==" in pins[0], pins
    return pins[0].split("==", 1)[1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined, as Docker's parser reads them."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword, arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the image itself: those after the last FROM."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from + 1 :]


def test_beam_is_pinned_to_one_exact_version_and_installed_at_it():
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned_beam())
    assert version("apache-beam") == pinned_beam()


def test_the_dockerfile_is_well_formed_and_starts_from_the_sdk_image_of_the_pinned_version():
    """No image is built here (no container engine, no registry for the base image): the parse only."""
    instructions = dockerfile_instructions()
    unknown = [keyword for keyword, _ in instructions if keyword not in DOCKER_INSTRUCTIONS]
    assert not unknown, f"not Dockerfile instructions: {unknown}"
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    assert all(keyword == "ARG" for keyword, _ in instructions[:first_from]), "only ARG may precede FROM"
    args = dict(a.split("=", 1) for k, a in instructions[:first_from] if "=" in a)
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a) for k, a in instructions if k == "FROM"]
    # A build stage makes the job server jar (flink/jobserver); the image itself is the SDK's.
    sdk = f"apache/beam_python3.11_sdk:{pinned_beam()}"
    assert bases == ["maven:3.9-eclipse-temurin-17 AS jobserver", sdk]
    # Beam's boot program must stay the entrypoint: it is what runs the harness and the worker pool.
    assert "ENTRYPOINT" not in {keyword for keyword, _ in instructions}
    for keyword, arguments in instructions:
        if keyword == "COPY" and not arguments.startswith("--from="):
            for source in arguments.split()[:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies {source}, not in the repository"
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    assert any(run.startswith("pip install --no-cache-dir . ") for run in runs), runs
    assert any("v('apache-beam') == '${BEAM_VERSION}'" in run for run in runs), "the install keeps Beam"


def test_the_images_install_step_works_on_exactly_what_the_dockerfile_copies(tmp_path):
    """The Dockerfile's COPY lines rebuilt as a build context, then its RUN step on it (pip install, then
    --help) against this venv's dependencies: a module the image would lack fails here."""
    context = tmp_path / "context"
    workdir = next(arguments for keyword, arguments in final_stage() if keyword == "WORKDIR")
    for keyword, arguments in final_stage():
        if keyword != "COPY" or arguments.startswith("--from="):
            continue
        *sources, destination = arguments.split()
        for source in sources:
            target = context / Path(workdir, destination).relative_to(workdir)
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target / source)
    installed = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(installed), "."]
    subprocess.run(pip, cwd=context, check=True, capture_output=True, timeout=300)
    assert {"pipelines", "transforms"} <= {p.name for p in installed.iterdir()}
    # -S: without site's .pth files, so the editable install of this checkout cannot fill in a module
    # the image would lack; the dependencies come from this venv's site-packages.
    path = os.pathsep.join([str(installed), *site.getsitepackages()])
    for module in ("pipelines.flowlogs", "pipelines.cloudwatch", "pipelines.cloudtrail"):
        done = subprocess.run(
            [sys.executable, "-S", "-m", module, "--help"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": path},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "--gelf_host" in done.stdout


def test_the_flink_job_server_is_built_for_the_pinned_beam_and_a_flink_it_supports():
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    pom = ET.parse(REPO / "flink" / "jobserver" / "pom.xml").getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    assert pom.findtext("m:properties/m:beam.version", namespaces=ns) == pinned_beam()
    assert pom.findtext("m:properties/m:flink.minor", namespaces=ns) == FLINK_MINOR
    assert FLINK_MINOR in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    assert FLINK_VERSION.startswith(FLINK_MINOR + ".")
    assert job_server_jar().name == f"beam-runners-flink-{FLINK_MINOR}-job-server-{pinned_beam()}.jar"


def test_flink_run_configs_name_the_job_server_the_makefile_builds():
    configs = sorted((REPO / "run_configs").glob("*-flink.yaml"))
    assert configs
    for config in configs:
        options = yaml.safe_load(config.read_text())
        assert options["runner"] == "FlinkRunner"
        assert options["flink_version"] == FLINK_MINOR
        assert options["flink_job_server_jar"] == f".cache/flink/{job_server_jar().name}"


def test_the_kubernetes_example_runs_the_image_as_worker_pool_beside_flink_of_the_pinned_line():
    documents = list(yaml.safe_load_all((REPO / "run_configs" / "k8s" / "flinkdeployment.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "FlinkDeployment")
    assert deployment["spec"]["flinkVersion"] == "v" + FLINK_MINOR.replace(".", "_")
    assert deployment["spec"]["image"].startswith(f"flink:{FLINK_VERSION}")
    sidecar = deployment["spec"]["taskManager"]["podTemplate"]["spec"]["containers"][0]
    assert sidecar["args"] == ["--worker_pool"] and sidecar["ports"][0]["containerPort"] == 50000

    launcher = next(d for d in documents if d["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]
    assert launcher["image"] == sidecar["image"]
    args = launcher["args"]
    assert f"--flink_version={FLINK_MINOR}" in args
    assert "--environment_type=EXTERNAL" in args and "--environment_config=localhost:50000" in args
    # The job runs from the job server jar the image carries (with the checkpoint growth fix), not Beam's.
    copied = next(a for k, a in final_stage() if k == "COPY" and a.startswith("--from=jobserver"))
    workdir = next(a for k, a in final_stage() if k == "WORKDIR")
    carried = Path(workdir, copied.split()[-1]).as_posix()
    assert "--flink_submit_uber_jar" in args and f"--flink_job_server_jar={carried}" in args


def test_the_flink_example_reports_to_prometheus_with_the_reporter_flink_ships():
    documents = list(yaml.safe_load_all((REPO / "run_configs" / "k8s" / "flinkdeployment.yaml").read_text()))
    configuration = next(d for d in documents if d["kind"] == "FlinkDeployment")["spec"]["flinkConfiguration"]
    factory = configuration["metrics.reporter.prom.factory.class"]
    assert factory == "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    plugin = flink_home() / "plugins" / "metrics-prometheus" / f"flink-metrics-prometheus-{FLINK_VERSION}.jar"
    with zipfile.ZipFile(plugin) as jar:
        assert factory.replace(".", "/") + ".class" in jar.namelist()


def test_the_direct_runner_deployment_probes_the_pipelines_own_endpoints():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.common import expand_config
    from transforms.monitoring import MonitoringOptions
    from transforms.positions import PositionOptions

    deployment = yaml.safe_load((REPO / "run_configs" / "k8s" / "direct-deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "pipelines.flowlogs"]
    options = PipelineOptions(expand_config(container["args"]))
    monitoring = options.view_as(MonitoringOptions)
    assert monitoring.metrics_address == "0.0.0.0" and monitoring.log_format == "json"
    assert options.view_as(PositionOptions).position_store == "dynamodb", "no persistent disk in a pod"
    (port,) = container["ports"]
    assert port["containerPort"] == monitoring.metrics_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
