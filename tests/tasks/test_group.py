"""The environment each rank of a distributed training run starts with."""

from __future__ import annotations

import pytest

from prefect_tune.storage import ConfigError, ScalingConfig
from prefect_tune.tasks.group import rank_environment


def test_gpu_ranks_take_their_device_from_the_inherited_mask() -> None:
    """With CUDA_VISIBLE_DEVICES=2,3 inherited, rank 0 gets GPU 2 and rank 1 GPU 3."""
    scaling = ScalingConfig(num_workers=2, use_gpu=True)
    inherited = {"CUDA_VISIBLE_DEVICES": "2, 3", "PATH": "/bin"}
    envs = [rank_environment(rank, 2, 29500, scaling, inherited) for rank in (0, 1)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["2", "3"]
    assert [env["RANK"] for env in envs] == ["0", "1"]
    assert all(env["PATH"] == "/bin" and env["WORLD_SIZE"] == "2" for env in envs)
    assert all(env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "29500"
               for env in envs)


def test_gpu_ranks_without_a_mask_take_their_rank_number() -> None:
    scaling = ScalingConfig(num_workers=2, use_gpu=True)
    assert [rank_environment(r, 2, 1, scaling, {})["CUDA_VISIBLE_DEVICES"]
            for r in (0, 1)] == ["0", "1"]


def test_too_few_visible_gpus_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"needs 3 GPUs.*CUDA_VISIBLE_DEVICES='2,3'.*2"):
        rank_environment(0, 3, 1, ScalingConfig(num_workers=3, use_gpu=True),
                         {"CUDA_VISIBLE_DEVICES": "2,3"})


def test_cpu_ranks_keep_the_mask_and_get_their_thread_count() -> None:
    env = rank_environment(1, 2, 1, ScalingConfig(num_workers=2,
                                                  resources_per_worker={"CPU": 3}),
                           {"CUDA_VISIBLE_DEVICES": "5"})
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    assert env["OMP_NUM_THREADS"] == "3"
