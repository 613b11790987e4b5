"""Files of length-prefixed Kinesis record payloads. A module of its own because the workers run
`read_records`: Beam pickles the functions of `__main__` (`python -m bench.replay`) by value, without
the module's imports, so on a distributed runner they fail (NameError)."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from transforms.elements import KinesisRecord

_LENGTH = struct.Struct(">I")


def write_records(path: Path, payloads: Sequence[bytes]) -> None:
    with open(path, "wb") as out:
        for payload in payloads:
            out.write(_LENGTH.pack(len(payload)))
            out.write(payload)


def read_records(path: str) -> Iterator[KinesisRecord]:
    name = Path(path).stem
    with open(path, "rb") as source:
        number = 0
        while header := source.read(_LENGTH.size):
            (length,) = _LENGTH.unpack(header)
            yield KinesisRecord("replay", name, f"{number:056d}", name, 0.0, source.read(length))
            number += 1


def write_replay_files(payloads: Sequence[bytes], folder: Path, files: int) -> None:
    """`payloads` dealt over `files` files `part-<n>.records` in `folder`, for bench.replay."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        write_records(folder / f"part-{index}.records", payloads[index::files])
