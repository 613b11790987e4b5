"""Beam's Python worker pool (`--environment_type=EXTERNAL`), listening on 127.0.0.1 only.

Beam's own `worker_pool_main` listens on every interface, which is right for a sidecar in a pod and
wrong for a test cluster on a shared machine. Each SDK worker the TaskManager asks for runs as its own
`python` process, as in Beam's container (`boot --worker_pool`), so parallel subtasks use separate cores.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import (
    BeamFnExternalWorkerPoolServicer,
    kill_process_gracefully,
)
from apache_beam.utils import thread_pool_executor


def serve(port: int, host: str = "127.0.0.1") -> None:
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
    )
    pool = BeamFnExternalWorkerPoolServicer(use_process=True)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise SystemExit(f"worker pool: cannot listen on {host}:{port}")
    server.start()
    logging.info("Beam worker pool listening on %s:%s", host, bound)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=2)
    for worker in list(pool._worker_processes.values()):
        kill_process_gracefully(worker)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m flink.worker_pool", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=50000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.port, args.host)


if __name__ == "__main__":
    main()
