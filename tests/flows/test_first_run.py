"""The first run on a fresh machine: Prefect's ephemeral API server, which creates its
database on first use, gets time enough to start unless the user set a limit, and a
server that cannot start is one clear line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SWEEP = textwrap.dedent("""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as LIMIT
    from prefect_tune.flows import TuneConfig, Tuner
    from prefect_tune.storage import RunConfig
    from prefect_tune.tasks import report

    def train(config):
        report({"limit": LIMIT.value()})  # in the flow's thread: the sweep's settings

    grid = Tuner(train, tune_config=TuneConfig(isolation="thread"),
                 run_config=RunConfig(name="first", storage_path="results")).fit()
    print("limit", grid[0].metrics["limit"])
""")


def fresh(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: a new home, no Prefect database, no API URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / ".prefect"), **extra)
    return env


def test_a_first_sweep_gives_the_ephemeral_server_time_to_create_its_database(
    tmp_path: Path
) -> None:
    done = subprocess.run([sys.executable, "-c", SWEEP], cwd=tmp_path, env=fresh(tmp_path),
                          capture_output=True, text=True, timeout=300, check=False)

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["limit", "120"]  # Prefect's default is 20 s
    assert (tmp_path / ".prefect" / "prefect.db").exists()  # it was a first run


def test_a_limit_the_user_set_is_kept(tmp_path: Path) -> None:
    env = fresh(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90")
    done = subprocess.run([sys.executable, "-c", SWEEP], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["limit", "90"]


def test_a_server_that_cannot_start_is_one_clear_line(tmp_path: Path) -> None:
    env = fresh(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    cli = os.path.join(os.path.dirname(sys.executable), "prefect-tune")
    done = subprocess.run([cli, "demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)

    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [  # Prefect's own lines say it started and stopped the server
        ("prefect-tune: error: Prefect's ephemeral API server did not start within 1 s "
        "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS): raise that setting, or start "
        "a server (prefect server start) and set PREFECT_API_URL")]
    assert not list(tmp_path.glob("prefect_tune_results/*"))  # nothing was written

