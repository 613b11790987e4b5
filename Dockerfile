# One image, three uses:
#  - SDK harness started by Flink:   --environment_type=DOCKER --environment_config=IMAGE
#  - worker-pool sidecar beside each TaskManager (Kubernetes): container args ["--worker_pool"],
#    pipelines then run with --environment_type=EXTERNAL --environment_config=localhost:50000
#  - launcher:  docker run --entrypoint python IMAGE -m pipelines.flowlogs --runner=FlinkRunner ...
#  - a pipeline on one machine: docker run --entrypoint python IMAGE -m pipelines.flowlogs
#    --config run_configs/flowlogs-container.yaml --metrics_port=9464 (run_configs/k8s/direct-deployment.yaml)
# Built on Beam's own Python SDK image, whose version must be the apache-beam pinned in pyproject.toml
# (tests/test_packaging.py checks both).
ARG BEAM_VERSION=2.62.0

# Beam's Flink job server with our fix of its checkpoint growth (flink/jobserver): the launcher passes it
# as --flink_job_server_jar, and with --flink_submit_uber_jar it is the jar the job runs from on Flink.
FROM maven:3.9-eclipse-temurin-17 AS jobserver
ARG BEAM_VERSION
WORKDIR /build
COPY flink/jobserver ./
RUN mvn -B -q package -Dbeam.version=${BEAM_VERSION} -Dflink.minor=1.19 \
    && mv target/beam-runners-flink-1.19-job-server-${BEAM_VERSION}.jar /build/job-server.jar

FROM apache/beam_python3.11_sdk:${BEAM_VERSION}
ARG BEAM_VERSION

WORKDIR /opt/aws-gelf-pipelines
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
COPY transforms ./transforms
COPY run_configs ./run_configs
COPY --from=jobserver /build/job-server.jar ./flink/beam-runners-flink-1.19-job-server.jar
# The image's Beam must stay the one it was built with: the install may add packages, never change it.
RUN pip install --no-cache-dir . \
    && python -c "from importlib.metadata import version as v; assert v('apache-beam') == '${BEAM_VERSION}', v('apache-beam')" \
    && python -m pipelines.flowlogs --help > /dev/null

# The entrypoint stays Beam's /opt/apache/beam/boot, which runs the SDK harness or, with --worker_pool,
# the worker pool.

# A pipeline on one machine started with --metrics_port=9464 is alive while its read loop polls; in the
# image's other uses nothing listens there, and the check passes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s \
    CMD ["python", "-m", "transforms.monitoring", "probe", "--port=9464", "--path=/healthz", "--absent-ok"]
