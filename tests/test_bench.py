"""The benchmarks measure what they say: the floor loop gives the same messages as the transform
chain (so the comparison is fair), and every section runs end to end at a small size."""

from __future__ import annotations

import json
import os
import time

import pytest

from bench import __main__ as bench_main
from bench.chain import TAG_KEYS, chain
from bench.data import FORMATS, estate, flow_log_payloads
from bench.floor import FloorInventory, floor
from bench.measuring import CpuSampler
from bench.records import read_records, write_records
from transforms.enrichment import Enricher
from transforms.entities import Inventory


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_floor_loop_sends_the_same_messages_as_the_transform_chain(name):
    entities, holders = estate(2_000)
    payloads = flow_log_payloads(3_000, holders, FORMATS[name])
    ours = chain(payloads, FORMATS[name], Enricher(Inventory(entities), TAG_KEYS))
    theirs = floor(payloads, FORMATS[name], FloorInventory(entities, TAG_KEYS))
    assert len(ours) == len(theirs) == 3_000
    assert [json.loads(m) for m in ours] == [json.loads(m) for m in theirs]
    enriched = sum("_dst_addr_entity" in json.loads(m) or "_src_addr_entity" in json.loads(m) for m in ours)
    assert enriched > 2_000, "most records name a known instance"


def test_replay_files_give_back_their_records(tmp_path):
    payloads = [b"first", b"", b"third" * 1000]
    write_records(tmp_path / "a.records", payloads)
    records = list(read_records(str(tmp_path / "a.records")))
    assert [r.data for r in records] == payloads
    assert len({r.sequence_number for r in records}) == 3


@pytest.mark.slow
def test_every_local_section_runs_at_a_small_size(capsys):
    sections = "chain,direct,memory,cloudtrail,moto,latency"
    assert bench_main.main(["--quick", "--no-write", f"--only={sections}"]) == 0
    out = capsys.readouterr().out
    for section in sections.split(","):
        assert f"| {section} |" in out, out
    assert " lost" not in out, "the counting receiver got every message of the pipeline runs"


def test_the_cpu_sampler_sees_this_process_working():
    with CpuSampler(interval=0.05) as cpu:
        started = time.perf_counter()
        while time.perf_counter() - started < 0.6:
            pass
        ended = time.perf_counter()
    busy = cpu.busy(started, ended)
    assert busy is not None and 1 / (os.cpu_count() or 1) * 0.5 <= busy <= 1.0, busy
