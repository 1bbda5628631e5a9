"""`Ranking`: which checkpoints a trial keeps and which is best, as pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from prefect_tune.storage.config import CheckpointConfig
from prefect_tune.storage.ranking import Ranking, best_by
from prefect_tune.storage.records import CheckpointRecord


def retain(records: Sequence[CheckpointRecord], config: CheckpointConfig
           ) -> tuple[tuple[CheckpointRecord, ...], tuple[CheckpointRecord, ...]]:
    """Retention as a trial applies it, for a sweep without a metric."""
    return Ranking.of(config).retain(records, config.num_to_keep)


def best_of(records: Sequence[CheckpointRecord], attribute: str, order: Any, count: int
            ) -> tuple[CheckpointRecord, ...]:
    return Ranking(attribute, order).best_checkpoints(records, count)


def records(*metrics: dict[str, Any]) -> list[CheckpointRecord]:
    """One record per metrics dict, indexed 0, 1, 2, ... in report order."""
    return [CheckpointRecord(index, m) for index, m in enumerate(metrics)]


def losses(*values: float) -> list[CheckpointRecord]:
    return records(*({"loss": v} for v in values))


def indexes(chosen: Sequence[CheckpointRecord]) -> list[int]:
    return [r.index for r in chosen]


def test_seed_example_min_keeps_best_two_plus_latest() -> None:
    config = CheckpointConfig(
        num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"
    )
    kept, best = retain(losses(2, 4, 1, 3), config)
    assert indexes(best) == [0, 2]
    assert indexes(kept) == [0, 2, 3]


def test_num_to_keep_none_keeps_all_and_all_are_best() -> None:
    recs = losses(5, 1, 3)
    kept, best = retain(recs, CheckpointConfig(num_to_keep=None, checkpoint_score_attribute="loss"))
    assert kept == tuple(recs)
    assert best == tuple(recs)


def test_without_score_attribute_keeps_newest_n() -> None:
    kept, best = retain(losses(1, 2, 3, 4, 5), CheckpointConfig(num_to_keep=2))
    assert indexes(best) == [3, 4]
    assert indexes(kept) == [3, 4]


def test_with_attribute_keeps_best_n_by_max() -> None:
    config = CheckpointConfig(
        num_to_keep=2, checkpoint_score_attribute="acc", checkpoint_score_order="max"
    )
    recs = records({"acc": 0.9}, {"acc": 0.1}, {"acc": 0.8}, {"acc": 0.95})
    kept, best = retain(recs, config)
    assert indexes(best) == [0, 3]
    assert indexes(kept) == [0, 3]


def test_with_attribute_keeps_best_n_by_min() -> None:
    config = CheckpointConfig(
        num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"
    )
    kept, best = retain(losses(0.5, 0.1, 0.9, 0.2), config)
    assert indexes(best) == [1, 3]
    assert indexes(kept) == [1, 3]


def test_latest_is_kept_even_when_not_in_top_n() -> None:
    config = CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="loss", checkpoint_score_order="min"
    )
    kept, best = retain(losses(0.1, 0.5, 0.9), config)
    assert indexes(best) == [0]
    assert indexes(kept) == [0, 2]
    assert len(kept) == 1 + 1  # N + the latest


def test_nan_ranks_worst_for_max() -> None:
    config = CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="acc", checkpoint_score_order="max"
    )
    recs = records({"acc": math.nan}, {"acc": -100.0}, {"acc": -200.0})
    assert indexes(best_of(recs, "acc", "max", 1)) == [1]
    assert indexes(retain(recs, config)[1]) == [1]


def test_nan_ranks_worst_for_min() -> None:
    config = CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="loss", checkpoint_score_order="min"
    )
    recs = losses(math.nan, 100.0, 200.0)
    assert indexes(best_of(recs, "loss", "min", 1)) == [1]
    assert indexes(retain(recs, config)[1]) == [1]


def test_record_missing_attribute_ranks_worst() -> None:
    recs = records({"other": 1.0}, {"loss": 100.0}, {"loss": 200.0})
    assert indexes(best_of(recs, "loss", "min", 1)) == [1]
    assert indexes(best_of(recs, "loss", "max", 1)) == [2]
    assert indexes(best_of(recs, "loss", "max", 2)) == [1, 2]


def test_ties_go_to_newer_checkpoint() -> None:
    recs = losses(1.0, 1.0, 1.0, 5.0)
    assert indexes(best_of(recs, "loss", "min", 1)) == [2]
    assert indexes(best_of(recs, "loss", "min", 2)) == [1, 2]
    assert indexes(best_of(recs, "loss", "max", 1)) == [3]


def test_nested_attribute_val_loss() -> None:
    config = CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="val/loss", checkpoint_score_order="min"
    )
    recs = records(
        {"val": {"loss": 0.3}}, {"val": {"loss": 0.1}}, {"val": {"loss": 0.2}},
    )
    kept, best = retain(recs, config)
    assert indexes(best) == [1]
    assert indexes(kept) == [1, 2]


def test_returned_tuples_are_in_report_order() -> None:
    config = CheckpointConfig(
        num_to_keep=3, checkpoint_score_attribute="loss", checkpoint_score_order="min"
    )
    recs = losses(0.3, 0.9, 0.1, 0.8, 0.2)
    shuffled = [recs[4], recs[1], recs[2], recs[0], recs[3]]
    kept, best = retain(shuffled, config)
    assert indexes(best) == [0, 2, 4]
    assert indexes(kept) == [0, 2, 4]
    assert indexes(best_of(shuffled, "loss", "min", 3)) == [0, 2, 4]
    kept_all, best_all = retain(shuffled, CheckpointConfig())
    assert indexes(kept_all) == indexes(best_all) == [0, 1, 2, 3, 4]


def test_ranking_follows_the_sweep_metric_unless_checkpoints_name_their_own() -> None:
    """One rule for every "best checkpoint": the checkpoint score attribute, else the
    sweep's metric and mode (lenient: a checkpoint without it ranks last), else recency."""
    recs = records({"loss": 0.5, "acc": 0.2}, {"loss": 0.1, "acc": 0.1}, {"acc": 0.9})
    by_metric = Ranking.of(CheckpointConfig(num_to_keep=1), "loss", "min")
    assert (by_metric.attribute, by_metric.order, by_metric.required) == ("loss", "min", False)
    kept, best = by_metric.retain(recs, 1)
    assert indexes(best) == [1]
    assert indexes(kept) == [1, 2]  # the latest is never deleted
    own = Ranking.of(CheckpointConfig(checkpoint_score_attribute="acc"), "loss", "min")
    assert (own.attribute, own.order, own.required) == ("acc", "max", True)
    assert indexes(own.best_checkpoints(recs, 1)) == [2]
    assert Ranking.of(CheckpointConfig(), None, None) == Ranking()
    assert indexes(Ranking().best_checkpoints(recs, 2)) == [1, 2]


def test_best_by_skips_nan_missing_and_infinite_scores() -> None:
    scored = [(None, "a"), (math.nan, "b"), (math.inf, "c"), (2.0, "d"), (1.0, "e"), (1.0, "f")]
    assert best_by(scored, "min") == "e"
    assert best_by(scored, "max") == "d"
    assert best_by(scored, "max", finite_only=False) == "c"
    assert best_by([(None, "a"), (math.nan, "b")], "max") is None
