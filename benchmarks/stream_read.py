"""Faces/s of the training read path: ``open_split`` (ray_fer's shard datasource: one
whole-file read per shard, sha256 checked against the manifest, row groups decoded to
numpy) iterated as numpy batches, as a Train worker's stream reads it before collation.

    python benchmarks/stream_read.py /path/to/shards --split train --passes 3
    python benchmarks/stream_read.py s3://bucket/prefix --endpoint http://127.0.0.1:8333

Each pass is one epoch of the selected split (a new block order per pass, as in training);
the first pass also starts Ray's workers. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time


def read_rate(uri: str, split: str, passes: int, batch_size: int, endpoint: str | None,
              cpus: int) -> dict:
    """Faces/s per pass of ``open_split(uri, splits=[split], shuffle_seed=0)``."""
    import ray

    from ray_fer.data.shard_source import open_split

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        ds, manifest = open_split(uri, splits=[split], endpoint=endpoint, shuffle_seed=0)
        rows = sum(manifest.counts[split].values())
        rates = []
        for _ in range(passes):
            started, seen = time.perf_counter(), 0
            for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
                seen += len(batch["label"])
            assert seen == rows, (seen, rows)
            rates.append(seen / (time.perf_counter() - started))
    finally:
        ray.shutdown()
    return {"uri": uri, "split": split, "faces_per_pass": rows,
            "faces_per_s_passes": [round(r) for r in rates],
            "faces_per_s_best": round(max(rates))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("uri", help="shard prefix (local or s3://)")
    p.add_argument("--split", default="train")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL[_S3])")
    p.add_argument("--cpus", type=int, default=2, help="Ray's logical CPUs")
    args = p.parse_args()
    print(json.dumps(read_rate(args.uri, args.split, args.passes, args.batch_size,
                               args.endpoint, args.cpus), indent=2))


if __name__ == "__main__":
    main()
