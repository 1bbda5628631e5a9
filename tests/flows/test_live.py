"""Progress on an interactive terminal: a live table of counts, the best trial and the
running and latest trials, redrawn in place; and none of Prefect's telemetry notice."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from rich.console import Console

from prefect_tune.flows import live, progress
from prefect_tune.storage import CLIReporter, ConfigError, TrialOutcome, TrialSpec, TrialStatus

CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD")


def reporter(settings: CLIReporter, monkeypatch: pytest.MonkeyPatch
             ) -> progress.ProgressReporter:
    monkeypatch.setattr(progress, "get_run_logger", lambda: _Silent())
    shown = progress.ProgressReporter("loss", "min", settings, total=5, live=True)
    shown.setup("sweep-x", "/nowhere")
    for i, loss in enumerate([0.5, 0.25, 0.75, 0.125, 0.0625]):
        spec = TrialSpec(f"t{i}", f"train_t{i}", {"lr": 0.1 / (i + 1), "opt": "adam",
                                                  "net": {"width": 64 * (i + 1)}})
        shown.on_trial_start(spec)
        shown.on_trial_result(spec, {"loss": loss, "acc": 1 - loss, "training_iteration": 3})
        if i < 3:
            shown.on_trial_complete(spec, TrialOutcome(
                f"t{i}", f"train_t{i}", spec.config, TrialStatus.TERMINATED,
                last_metrics={"loss": loss, "acc": 1 - loss, "training_iteration": 3}))
    return shown


class _Silent:
    def info(self, *args: object) -> None:
        pass


def rendered(settings: CLIReporter, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    console = Console(record=True, width=100, force_terminal=True)
    table = live.LiveTable(reporter(settings, monkeypatch), settings, console)
    console.print(table.render())
    return console.export_text().splitlines()


def test_the_table_shows_counts_the_best_trial_and_running_then_latest_trials(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = rendered(CLIReporter(), monkeypatch)

    # one line, cut to the terminal's width
    assert lines[0] == ("sweep sweep-x · 0:00 · 2 running, 3 terminated; best loss=0.0625 "
                        "(train_t4: lr=0.02, opt=adam, net/…")
    assert lines[1].split() == ["trial", "status", "iter", "loss", "lr", "opt", "net/width"]
    rows = [line.split() for line in lines[2:]]
    # the running trials, then those that ended, the last first; values rounded
    assert rows == [
        ["train_t3", "running", "3", "0.125", "0.025", "adam", "256"],
        ["train_t4", "running", "3", "0.0625", "0.02", "adam", "320"],
        ["train_t2", "terminated", "3", "0.75", "0.03333", "adam", "192"],
        ["train_t1", "terminated", "3", "0.25", "0.05", "adam", "128"],
        ["train_t0", "terminated", "3", "0.5", "0.1", "adam", "64"],
    ]
    assert max(map(len, lines)) <= 100


def test_the_columns_and_rows_are_the_users_to_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = rendered(CLIReporter(metric_columns=["acc", "loss"], parameter_columns=["lr"],
                                 max_progress_rows=2), monkeypatch)

    assert lines[1].split() == ["trial", "status", "iter", "acc", "loss", "lr"]
    assert [line.split()[0] for line in lines[2:4]] == ["train_t3", "train_t4"]
    assert lines[4].strip() == "… 3 more trials"
    assert len(lines) == 5


@pytest.mark.parametrize(("settings", "message"), [
    ({"refresh_per_second": 0}, "CLIReporter(refresh_per_second=0) is invalid"),
    ({"max_report_frequency": -1}, "CLIReporter(max_report_frequency=-1) is invalid"),
    ({"metric_columns": "loss"}, "CLIReporter(metric_columns='loss') is invalid: use a list"),
    ({"max_progress_rows": 0}, "CLIReporter(max_progress_rows=0) is invalid"),
    ({"live": "yes"}, "CLIReporter(live='yes') is invalid"),
])
def test_bad_reporter_settings_are_named(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        CLIReporter(**settings)  # type: ignore[arg-type]


def run_in_terminal(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run `args` with a 100x40 pseudo-terminal as its stdin, stdout and stderr; all it
    wrote, once it exited."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    process = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower,
                               env=env, cwd=cwd, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_the_demo_on_a_terminal_draws_a_live_table_and_no_telemetry_notice(
    tmp_path: Path, prefect_server: str
) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k not in (*CI_VARIABLES, "DO_NOT_TRACK")}
    env.update(HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / ".prefect"),
               PREFECT_API_URL=prefect_server, TERM="xterm-256color")
    cli = os.path.join(os.path.dirname(sys.executable), "prefect-tune")

    text = run_in_terminal([cli, "demo", "--storage-path", str(tmp_path), "--name", "tty"],
                           env, tmp_path)

    assert "anonymous usage data" not in text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert re.search(r"sweep tty · 0:\d\d · 2 running", plain)
    assert re.search(r"sweep tty · 0:\d\d · 4 terminated; best loss=", plain)
    assert re.search(r"trial +status +iter +loss +lr +steps_per_epoch +epochs", plain)
    assert "\x1b[2K" in text  # redrawn in place: rich erases the lines it drew before
    assert "best trial:" in plain  # the demo's own lines follow the last table
