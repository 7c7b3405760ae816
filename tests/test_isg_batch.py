"""Batched list generation on a Ray Data actor pool (isg/batch.py), the path every
evaluation, mining and deployment call takes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from icebreaker_ray.config import load_config
from icebreaker_ray.isg.batch import LISTS_SCHEMA, complete_share, generate_lists, generate_many
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


@pytest.mark.integration
def test_one_pass_over_several_models_gives_each_job_its_own_lists(ray_local, tiny_generator):
    from icebreaker_ray.models import resolve_generator

    model = resolve_generator("smollm2-135m-instruct")
    cfg = load_config("configs/quick.yaml")
    two = REQUESTS.slice(0, 2)
    smol, tiny, smol_two = generate_many([(model, REQUESTS), (tiny_generator, REQUESTS), (model, two)],
                                         cfg, _params())
    # each job is what it would be alone, though the actors swapped models in between
    assert smol.equals(generate_lists(REQUESTS, model, cfg, _params()))
    assert smol_two.equals(generate_lists(two, model, cfg, _params()))
    assert smol_two.column("user_id").to_pylist() == ["u1", "u3"]
    assert tiny.schema == LISTS_SCHEMA and tiny.column("user_id").to_pylist() == ["u1", "u2", "u3"]
    # the random model's rows really came from the random model: SmolLM2 writes valid
    # starters, the random model none
    assert sum(len(x) for x in smol.column("sampled").to_pylist()) > 0
    assert sum(len(x) for x in tiny.column("sampled").to_pylist()) == 0
    assert set(tiny.column("reason").to_pylist()) == {"too_few_valid"}


def test_blocks_are_even_and_come_in_multiples_of_the_actors():
    from icebreaker_ray.raykit import split_blocks

    def sizes(rows: int, actors: int = 2, batch: int = 8) -> list[int]:
        return [b.num_rows for b in split_blocks(pa.table({"x": list(range(rows))}), actors, batch)]

    assert sizes(24) == [6, 6, 6, 6]  # not 8, 8, 8: one actor idle for the last third
    assert sizes(40) == [7, 7, 7, 7, 7, 5]
    assert sizes(12) == [6, 6] and sizes(3) == [2, 1] and sizes(1) == [1]
    assert sizes(9, actors=3, batch=2) == [2, 2, 2, 2, 1]  # 5 of 6 slots: the rows run out
    assert sizes(0) == [0]


def test_no_requests_give_empty_lists_without_starting_actors(tiny_generator):
    cfg = load_config("configs/quick.yaml")
    empty = REQUESTS.slice(0, 0)
    out = generate_many([(tiny_generator, empty), (tiny_generator, empty)], cfg, _params())
    assert [t.num_rows for t in out] == [0, 0] and all(t.schema == LISTS_SCHEMA for t in out)
