"""Checkpoint throughput: report() with large checkpoints against raw fsspec `put`.

Three cases, each to local storage and to a moto S3 server on 127.0.0.1 (its own
process, so it does not share this one's GIL):
- big: one checkpoint holding one 256 MiB file;
- files: one checkpoint of 256 files of 1 MiB;
- many: 256 checkpoints of 1 MiB each.
The baseline is fsspec's `put` of the same files to the same filesystem in the same run
(one `put` per checkpoint). Each case runs `--runs` times, alternating with its baseline;
medians are printed with throughput in MiB/s and ours / raw.

Run: python bench/throughput.py [--runs 3] [--mib 256] [--targets local s3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from common import (
    _free_port,
    median,
    out_dir_argument,
    payload,
    table,
    wait_for_http,
    write_outputs,
)

MiB = 1024 * 1024


@contextmanager
def moto_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{endpoint}/moto-api/", proc, "moto server")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(30)


def make_sources(root: str, mib: int) -> dict[str, list[str]]:
    """Local checkpoint dirs per case: a list of dirs, each uploaded as one checkpoint."""
    def directory(name: str, files: int, size: int) -> str:
        path = os.path.join(root, name)
        os.makedirs(path)
        block = payload(size // 1024)
        for i in range(files):
            with open(os.path.join(path, f"part-{i:04d}.bin"), "wb") as handle:
                handle.write(block)
        return path

    return {
        "big": [directory("big", 1, mib * MiB)],
        "files": [directory("files", mib, MiB)],
        "many": [directory(f"many-{i:04d}", 1, MiB) for i in range(mib)],
    }


def ours(url: str, options: dict[str, Any], dirs: list[str]) -> float:
    """Seconds for report() to persist every dir as a checkpoint of one trial."""
    from prefect_tune.flows import TuneConfig, Tuner
    from prefect_tune.storage import Checkpoint, CheckpointConfig, RunConfig
    from prefect_tune.tasks import report

    spent: list[float] = []

    def train(config: dict[str, Any]) -> None:
        for step, directory in enumerate(dirs):
            checkpoint = Checkpoint.from_directory(directory)
            tick = time.perf_counter()
            report({"step": step}, checkpoint=checkpoint)
            spent.append(time.perf_counter() - tick)

    Tuner(train, tune_config=TuneConfig(isolation="thread"),
          run_config=RunConfig(name=f"bench-{uuid.uuid4().hex[:8]}", storage_path=url,
                               storage_options=options,
                               checkpoint_config=CheckpointConfig(num_to_keep=None))).fit()
    assert len(spent) == len(dirs)
    return sum(spent)


def raw(url: str, options: dict[str, Any], dirs: list[str]) -> float:
    """Seconds for fsspec `put` of the same dirs (one recursive put each)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **options)
    base = f"{root}/raw-{uuid.uuid4().hex[:8]}"
    tick = time.perf_counter()
    for i, directory in enumerate(dirs):
        fs.put(directory, f"{base}/{i:06d}", recursive=True)
    return time.perf_counter() - tick


@contextmanager
def target(name: str, scratch: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if name == "local":
        path = os.path.join(scratch, "storage")
        os.makedirs(path)
        yield path, {}
        shutil.rmtree(path, ignore_errors=True)
        return
    import s3fs

    with moto_server() as endpoint:
        options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": endpoint}}
        s3fs.S3FileSystem(**options).mkdir("bench")
        yield "s3://bench/exp", options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--targets", nargs="+", choices=("local", "s3"), default=["local", "s3"])
    out_dir_argument(parser)
    args = parser.parse_args()
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as scratch:
        sources = make_sources(os.path.join(scratch, "sources"), args.mib)
        for name in args.targets:
            with target(name, scratch) as (url, options):
                for case, dirs in sources.items():
                    mine, theirs = [], []
                    for _ in range(args.runs):
                        mine.append(ours(url, options, dirs))
                        theirs.append(raw(url, options, dirs))
                    a, b = median(mine), median(theirs)
                    figures[f"{case}@{name}"] = {"ours_s": mine, "raw_s": theirs}
                    rows.append([f"{case}@{name}", a, args.mib / a, b, args.mib / b,
                                 f"{b / a:.0%}"])
                    print(rows[-1], flush=True)
    markdown = (
        f"Checkpoint throughput, {args.mib} MiB per case, medians of {args.runs} runs.\n\n"
        + table(["case@storage", "report() s", "MiB/s", "fsspec put s", "MiB/s",
                 "ours / raw throughput"], rows)
    )
    write_outputs(args.out, "throughput", {"mib": args.mib, "figures": figures}, markdown)


if __name__ == "__main__":
    main()
