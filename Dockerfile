# One image for both roles:
#  - launcher:   docker run IMAGE python -m pipelines.flowlogs --runner=FlinkRunner ...
#  - SDK harness for a Flink cluster: --environment_type=DOCKER --sdk_container_image=IMAGE
# Built on Beam's own Python SDK image, whose version must match the pinned apache-beam.
FROM apache/beam_python3.11_sdk:2.62.0

WORKDIR /opt/aws-gelf-pipelines
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
COPY transforms ./transforms
COPY run_configs ./run_configs
RUN pip install --no-cache-dir . && python -c "import pipelines.flowlogs, pipelines.cloudwatch"

# Beam's SDK image starts the harness (/opt/apache/beam/boot); keep that entrypoint so the image
# works as a Flink SDK container, and run pipelines by naming the command.
