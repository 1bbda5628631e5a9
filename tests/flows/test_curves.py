"""Learning curves in the Prefect UI: the curves artifact of a sweep holds one SVG chart
of every trial and a small one per trial, and headless Chromium renders the artifact's
page with the curves painted; the progress artifact counts the trials by status."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.flows.curves import PALETTE, CurveBoard
from prefect_tune.storage import RunConfig, TrialOutcome, TrialSpec, TrialStatus
from prefect_tune.tasks import report

from ..deployments.test_deployments import CHROMIUM, render

pytestmark = pytest.mark.usefixtures("prefect_server")
IMAGE = re.compile(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)")


def falls(config: dict[str, Any]) -> None:
    """Trial i reports 10 / (step + i) for 8 steps."""
    for step in range(1, 9):
        report({"loss": 10.0 / (step + config["i"])})


def svgs(text: str) -> list[str]:
    return [base64.b64decode(found).decode() for found in IMAGE.findall(text)]


def test_the_chart_draws_every_trial_and_the_best_thicker() -> None:
    board = CurveBoard("loss", "min", every=float("inf"))  # never publishes by itself
    board.setup("unit", "/tmp/unit")
    for i in range(3):
        trial = TrialSpec(f"t{i}", f"trial_{i}", {"i": i})
        board.on_trial_start(trial)
        for step in range(1, 4):
            board.on_trial_result(trial, {"training_iteration": step, "loss": 5.0 - step - i})

    board.on_trial_complete(TrialSpec("t0", "trial_0", {"i": 0}), TrialOutcome(
        "t0", "trial_0", {"i": 0}, TrialStatus.TERMINATED, stopped_early="outside rung 3"))

    text = board.markdown()
    assert "| trial_0 | stopped early | 3 |" in text
    chart, *rows = svgs(text)
    assert len(rows) == 3  # a small curve per trial in the table
    assert chart.count("<polyline") == 3
    widths = re.findall(r'stroke="(#[0-9a-f]{6})" stroke-width="([\d.]+)"', chart)
    assert sorted(w for _, w in widths) == ["1.5", "1.5", "3"]
    assert "best loss = 0 (trial_2)" in text
    assert text.index("| trial_2 |") < text.index("| trial_1 |") < text.index("| trial_0 |")


def painted(png: bytes, colors: list[tuple[int, int, int]]) -> int:
    """How many pixels of the 8-bit RGB(A) PNG `png` have one of `colors`."""
    width, height, depth, kind = struct.unpack(">IIBB", png[16:26])
    assert depth == 8 and kind in (2, 6), (depth, kind)
    channels = 3 if kind == 2 else 4
    data, at = b"", 8
    while at < len(png):
        length, name = struct.unpack(">I4s", png[at:at + 8])
        if name == b"IDAT":
            data += png[at + 8:at + 8 + length]
        at += 12 + length
    raw, stride = zlib.decompress(data), width * channels
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        kind_, row = line[0], bytearray(line[1:])
        for x in range(stride):
            left = row[x - channels] if x >= channels else 0
            up, corner = previous[x], previous[x - channels] if x >= channels else 0
            if kind_ == 1:
                row[x] = (row[x] + left) & 255
            elif kind_ == 2:
                row[x] = (row[x] + up) & 255
            elif kind_ == 3:
                row[x] = (row[x] + (left + up) // 2) & 255
            elif kind_ == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                row[x] = (row[x] + (left if pa <= pb and pa <= pc else up if pb <= pc
                                    else corner)) & 255
        rows.append(row)
        previous = row
    wanted = set(colors)
    return sum(tuple(row[x:x + 3]) in wanted for row in rows
               for x in range(0, stride, channels))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_ui_paints_the_learning_curves_of_a_sweep(tmp_path: Path, prefect_server: str
                                                       ) -> None:
    grid = Tuner(falls, param_space={"i": grid_search([0, 1, 2])},
                 tune_config=TuneConfig(metric="loss", mode="min", isolation="thread"),
                 run_config=RunConfig(name="curvy", storage_path=str(tmp_path))).fit()
    with get_client(sync_client=True) as client:
        (curves, progress) = (client.read_artifacts(  # the latest version of each
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC, limit=1)[0]
            for key in ("curvy-curves", "curvy-progress"))
    assert progress.description == "0 running, 3 terminated, 0 errored, 0 stopped, 0 paused"

    url = f"{prefect_server.removesuffix('/api')}/artifacts/artifact/{curves.id}"
    chart, *rows = svgs(render(url))  # the page as the UI renders it
    assert chart.count("<polyline") == 3 and len(rows) == 3
    for result in grid:
        assert f"| {result.outcome.trial_name} | terminated | 8 |" in str(curves.data)
    with tempfile.TemporaryDirectory() as profile:
        shot = Path(profile) / "page.png"
        done = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000",
             "--window-size=1200,1000", f"--screenshot={shot}", url],
            capture_output=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        colors = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in PALETTE[:3]]
        assert painted(shot.read_bytes(), colors) > 200  # the curves' strokes, on screen
