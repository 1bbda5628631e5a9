"""How fast the `prefect-tune` commands that read an experiment start: the time from
launch to exit of `best`, `show`, `ls` and `export` on a finished 4-trial demo
experiment, against the interpreter alone (`python -c pass`) and against importing
Prefect (what these commands took when they imported it), measured in the same run;
medians of `--runs` launches each.

Run: python bench/cli.py [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from common import clean_env, median, out_dir_argument, table, write_outputs

CLI = os.path.join(os.path.dirname(sys.executable), "prefect-tune")


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from launch to exit of `argv`, which must succeed."""
    begin = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    out_dir_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as root:
        env = clean_env(PREFECT_HOME=os.path.join(root, "home"))
        subprocess.run([CLI, "demo", "--storage-path", root, "--name", "demo"], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        experiment = os.path.join(root, "demo")
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import prefect'": [sys.executable, "-c", "import prefect"],
            "prefect-tune best": [CLI, "best", experiment],
            "prefect-tune show": [CLI, "show", experiment],
            "prefect-tune ls": [CLI, "ls", root],
            "prefect-tune export": [CLI, "export", experiment, "--format", "json"],
        }
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so drift hits every command alike
            for name, argv in commands.items():
                samples[name].append(timed(argv, env))
    seconds = {name: median(values) for name, values in samples.items()}
    base, with_prefect = seconds["python -c pass"], seconds["python -c 'import prefect'"]
    markdown = (
        f"Start-up of the reading commands: launch to exit, medians of {args.runs} "
        "launches.\n\n"
        + table(["command", "s", "vs python alone", "vs importing prefect"],
                [[name, s, f"{s / base:.2f}", f"{s / with_prefect:.2f}"]
                 for name, s in seconds.items()]))
    write_outputs(args.out, "cli", {"seconds": samples}, markdown)


if __name__ == "__main__":
    main()
