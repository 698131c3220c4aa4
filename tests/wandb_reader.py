"""Read an offline W&B run's records (`offline-run-*/run-*.wandb`) without the network or W&B's service.

The file is W&B's 7-byte header (":W&B", 0xBEE1, version) followed by LevelDB-log-style blocks of 32 KiB:
records with a 7-byte header (crc32c, length, type FULL/FIRST/MIDDLE/LAST) carrying protobuf `Record`s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a .wandb file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # block trailer: zero padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec


def read_run(run_dir: Path) -> dict:
    """{"name", "group", "config": {...}, "history": [{key: value}], "summary": {key: value},
    "artifacts": [{"name", "type", "files": [...]}]}."""
    out = {"history": [], "summary": {}, "config": {}, "artifacts": []}
    for rec in records(next(Path(run_dir).glob("*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["group"] = rec.run.display_name, rec.run.run_group
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type,
                                     "files": sorted(e.path for e in rec.artifact.manifest.contents)})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
    return out
