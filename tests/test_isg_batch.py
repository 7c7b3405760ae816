"""Batched list generation on a Ray Data actor pool (isg/batch.py), the path every
evaluation, mining and deployment call takes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from icebreaker_ray.config import load_config
from icebreaker_ray.isg.batch import LISTS_SCHEMA, complete_share, generate_lists
from icebreaker_ray.isg.generate import GenerationParams

REQUESTS = pa.table({
    "user_id": ["u3", "u1", "u2"],
    "interests": [["Planning a week in Kyoto in autumn"], ["Tuning a sourdough starter"],
                  ["Which One Piece arc is the best", "Learning Rust lifetimes"]],
})


def _params(**kw) -> GenerationParams:
    return GenerationParams(**{"k": 3, "num_candidates": 2, "max_new_tokens": 48, "batch_size": 2, **kw})


def test_tiny_model_lists_have_the_schema_and_never_raise(ray_local, tiny_generator):
    cfg = load_config("configs/quick.yaml")
    out = generate_lists(REQUESTS, tiny_generator, cfg, _params(max_new_tokens=8))
    assert out.schema == LISTS_SCHEMA
    assert out.column("user_id").to_pylist() == ["u1", "u2", "u3"]
    assert set(out.column("num_candidates").to_pylist()) == {2}
    # A random model writes garbage: nothing passes the filter, and that is reported.
    assert complete_share(out) == 0.0
    assert set(out.column("reason").to_pylist()) == {"too_few_valid"}


@pytest.mark.integration
def test_sampling_is_deterministic_for_a_seed_and_changes_with_it(ray_local):
    from icebreaker_ray.models import resolve_generator

    model = resolve_generator("smollm2-135m-instruct")
    cfg = load_config("configs/quick.yaml")
    a = generate_lists(REQUESTS, model, cfg, _params())
    b = generate_lists(REQUESTS, model, cfg, _params())
    assert a.equals(b)
    assert sum(len(x) for x in a.column("sampled").to_pylist()) > 0
    other = generate_lists(REQUESTS, model, cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": 5})}),
                           _params())
    assert not other.column("sampled").equals(a.column("sampled"))
