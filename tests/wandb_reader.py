"""Read an offline W&B run file (`run-<id>.wandb`) back, for tests.

The file is a 7-byte header (":W&B", magic, version) followed by LevelDB-log framed records
(32 KiB blocks; each chunk has a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST),
each record a `wandb_internal_pb2.Record`. The format is wandb's internal one: pinned in
constraints.txt.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history(path: Path) -> list[dict]:
    """The logged rows: {key: value} with JSON-decoded values, `_step` included."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_id(path: Path) -> str:
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run.run_id
    raise AssertionError("no run record")


def exit_codes(path: Path) -> list[int]:
    """The exit codes the run was finished with (one per finish)."""
    return [r.exit.exit_code for r in read_records(path) if r.WhichOneof("record_type") == "exit"]
