"""Streaming throughput: the same item shards read from the local S3 server and from local files.

Prints items/s for each source and their ratio (target: S3 >= 0.8 x local), with and without image
decoding, in one run on the same shards. Usage:

    .venv/bin/python benchmarks/stream.py [--items 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from ptmrec.config import DataConfig, StorageConfig
from ptmrec.encoders.images import ImageTransform
from ptmrec.data.shards import write_shards
from ptmrec.data.sources.synthetic import make_synthetic
from ptmrec.data.stream import items_from_manifest
from ptmrec.runtime.local_s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, LocalS3Server
from ptmrec.storage import Storage


def items_per_s(storage: Storage, uri: str, transform, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for batch in items_from_manifest(storage, uri, batch_size=256, transform=transform):
            n += len(batch.item)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data = make_synthetic(num_users=100, num_items=args.items, seed=0)
    with tempfile.TemporaryDirectory() as tmp, LocalS3Server() as server:
        s3 = Storage(StorageConfig(endpoint_url=server.endpoint_url, access_key_id=ACCESS_KEY_ID,
                                   secret_access_key=SECRET_ACCESS_KEY))
        local_uri, s3_uri = f"file://{tmp}/data", "s3://bench/data"
        for uri, storage in ((local_uri, Storage()), (s3_uri, s3)):
            write_shards(data, DataConfig(source="synthetic", uri=uri, shard_items=500), storage, progress=False)

        print(f"{args.items} items in shards of 500, best of {args.repeats}")
        print(f"{'pipeline':<28}{'local items/s':>15}{'S3 items/s':>13}{'S3/local':>10}")
        for label, transform in (("raw samples (no decode)", None),
                                 ("decoded 224x224 tensors", ImageTransform(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))):
            # interleave the two sources so that machine noise hits both alike
            local = items_per_s(Storage(), local_uri, transform, args.repeats)
            remote = items_per_s(s3, s3_uri, transform, args.repeats)
            print(f"{label:<28}{local:>15,.0f}{remote:>13,.0f}{remote / local:>10.2f}")
        print("target: S3/local >= 0.80")


if __name__ == "__main__":
    main()
