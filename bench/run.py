"""Every benchmark in one command; each writes its JSON and markdown to `--out`, and this
collects the markdown tables into `<out>/summary.md`.

Run: python bench/run.py [--out bench/out] [--quick]
`--quick` is a smoke run (tiny sizes, one round) that checks every benchmark still runs;
its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from common import HERE, out_dir_argument

FULL = {
    "sweep": [],
    "report_cost": [],
    "throughput": [],
    "scale": [],
    "metric_names": [],
    "startup": [],
    "asha": [],
    "pbt": [],
    "search": [],
    "watch": [],
    "pause": [],
    "cli": [],
}
QUICK = {
    "sweep": ["--runs", "1", "--api", "ephemeral", "--trials", "4", "--iterations", "3",
              "--variants", "startup", "prefect", "tune-thread", "tune-process", "python-pool"],
    "report_cost": ["--runs", "1", "--trials", "2", "--iterations", "20"],
    "throughput": ["--runs", "1", "--mib", "4"],
    "scale": ["--sizes", "10", "20", "--no-baseline"],
    "metric_names": ["--runs", "1", "--reports", "200"],
    "startup": ["--runs", "1", "--trials", "4"],
    "asha": ["--seeds", "1", "--variants", "tune", "tune-fifo", "--loop", "0"],
    "pbt": ["--seeds", "1", "--variants", "tune", "--loop", "0"],
    "search": ["--seeds", "1", "--trials", "12", "--variants", "optuna", "tune"],
    "watch": ["--runs", "1", "--trials", "4", "--iterations", "3"],
    "pause": ["--runs", "1"],
    "cli": ["--runs", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=list(FULL), default=list(FULL))
    out_dir_argument(parser)
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    for name in args.only:
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py"), "--out", args.out,
                        *plan[name]], check=True)
    with open(os.path.join(args.out, "summary.md"), "w") as summary:
        for name in args.only:
            with open(os.path.join(args.out, f"{name}.md")) as part:
                summary.write(f"## {name}\n\n{part.read()}\n")
    print(f"tables: {os.path.join(args.out, 'summary.md')}")


if __name__ == "__main__":
    main()
