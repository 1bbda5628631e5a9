"""Which checkpoints a trial keeps: a pure function of its records and CheckpointConfig."""

from __future__ import annotations

from collections.abc import Sequence

from prefect_tune.storage.config import CheckpointConfig
from prefect_tune.storage.records import CheckpointRecord, rank_key, score_of


def best_of(
    records: Sequence[CheckpointRecord], attribute: str | None, order: str, count: int
) -> tuple[CheckpointRecord, ...]:
    """The `count` best records, in report order.

    Ranked by `attribute` (NaN and missing worst, ties to the newer), or by recency
    when `attribute` is None.
    """
    if attribute is None:
        chosen = sorted(records, key=lambda r: r.index)[-count:] if count else []
    else:
        ranked = sorted(
            records, key=lambda r: (rank_key(score_of(r.metrics, attribute), order), r.index)
        )
        chosen = ranked[-count:] if count else []
    return tuple(sorted(chosen, key=lambda r: r.index))


def retain(
    records: Sequence[CheckpointRecord], config: CheckpointConfig
) -> tuple[tuple[CheckpointRecord, ...], tuple[CheckpointRecord, ...]]:
    """Split `records` (committed checkpoints of one trial) by `config`.

    Returns:
        (kept, best): `kept` is everything that must stay in storage, in report order:
        the best N plus the latest, which is never deleted. `best` is the best N alone.
        With num_to_keep=None every record is kept and counts as best.
    """
    ordered = tuple(sorted(records, key=lambda r: r.index))
    if config.num_to_keep is None:
        return ordered, ordered
    best = best_of(
        ordered, config.checkpoint_score_attribute, config.checkpoint_score_order,
        config.num_to_keep,
    )
    kept = {r.index: r for r in best}
    if ordered:
        kept[ordered[-1].index] = ordered[-1]
    return tuple(kept[i] for i in sorted(kept)), best
