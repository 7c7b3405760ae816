"""The shared per-worker Ray Train loop (raykit.train_epochs): every rank runs the same
number of batches per epoch, also when the rows do not divide by world * batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icebreaker_ray.raykit import batches, load_state, shard_indices


def test_shards_are_equal_and_wrap_around_on_a_hand_case():
    # 7 rows on 2 ranks: rank 1 is one row short and takes row 0 again; batch 2 -> 2 batches each
    assert shard_indices(7, 0, 2).tolist() == [0, 2, 4, 6]
    assert shard_indices(7, 1, 2).tolist() == [1, 3, 5, 0]
    assert [b.tolist() for b in batches(shard_indices(7, 0, 2), 2)] == [[0, 2], [4, 6]]
    assert [b.tolist() for b in batches(shard_indices(7, 1, 2), 2)] == [[1, 3], [5, 0]]
    # fewer rows than ranks: every rank still gets a row
    assert [shard_indices(1, r, 3).tolist() for r in range(3)] == [[0], [0], [0]]
    assert shard_indices(0, 0, 2).tolist() == []


def test_shuffled_shards_cover_every_row_and_agree_across_ranks():
    shards = [shard_indices(301, r, 2, seed=3, epoch=1) for r in range(2)]
    assert [len(s) for s in shards] == [151, 151]
    assert set(np.concatenate(shards)) == set(range(301))
    # the same seed and epoch give the same shard (every rank computes the one shuffle)
    assert shards[1].tolist() == shard_indices(301, 1, 2, seed=3, epoch=1).tolist()
    assert shards[1].tolist() != shard_indices(301, 1, 2, seed=3, epoch=2).tolist()


@pytest.mark.integration
def test_uneven_ranker_data_runs_equal_steps_on_two_workers(tmp_path, ray_local):
    from icebreaker_ray.raykit import fit_on_ray
    from icebreaker_ray.reward.ranker import (
        RankerExamples,
        UtilityRanker,
        _ray_loop,
        pair_feature_size,
    )

    dim, n, batch = 8, 301, 50  # 301 rows on 2 ranks: 151 each -> 4 batches (150 would be 3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, pair_feature_size(dim))).astype(np.float32)
    clicked = (x[:, -3] > 0.5).astype(np.float32)
    ex = RankerExamples(x, rng.integers(0, 4, n), clicked, clicked * 3, ["s"] * n,
                        [f"r{i}" for i in range(n)])
    config = {"examples": ex, "hidden": 16, "depth_weight": 0.3, "epochs": 3, "lr": 5e-3,
              "batch_size": batch, "seed": 0, "checkpoint_every": 1}
    result = fit_on_ray(_ray_loop, config, num_workers=2, run_name="uneven", storage_path=str(tmp_path))
    reports = [m for _, m in result.best_checkpoints]
    assert [m["epoch"] for m in reports] == [1, 2]  # the two checkpoints Ray keeps
    for m in reports:
        assert m["steps"] == 4 and m["rank_steps"] == [4, 4], m
    torch.manual_seed(0)
    before = UtilityRanker(dim, 16, 0.3)  # the worker's initial model (same seed)
    trained = UtilityRanker(dim, 16, 0.3)
    with result.checkpoint.as_directory() as d:
        state = load_state(d, trained)
    assert state["epoch"] == 2 and len(state["losses"]) == 3
    assert state["losses"][-1] < state["losses"][0]
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), trained.parameters(), strict=True))


@pytest.mark.integration
def test_uneven_scorer_users_run_equal_steps_on_two_workers(tmp_path, ray_local):
    from icebreaker_ray.config import ScorerSection
    from icebreaker_ray.rid import scorer

    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(13)]  # 13 users, batch 4, 2 ranks: 7 each -> 2 batches
    owner = np.repeat(users, 5)
    sids = np.array([f"{u}-{k}" for u in users for k in range(5)])
    emb = rng.normal(size=(len(sids), 16)).astype(np.float32)
    data = scorer.build_user_examples(users, owner, sids, emb, {s for s in sids if s.endswith(("-0", "-1"))})
    scfg = ScorerSection(dim=8, hidden=16, epochs=2, batch_size=4, num_workers=2, checkpoint_every=1, lr=3e-3)
    model, losses, result = scorer.train_scorer_on_ray(data, scfg, str(tmp_path), run_name="uneven", seed=0)
    assert [m["rank_steps"] for _, m in result.best_checkpoints] == [[2, 2], [2, 2]]
    assert len(losses) == 2
    before = scorer.new_model(data, scfg, seed=0)
    assert any(not torch.equal(v, before.state_dict()[k]) for k, v in model.state_dict().items())
