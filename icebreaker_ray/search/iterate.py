"""The ``iterate`` stage: self-reinforced rounds of PMA (paper App. C.2).

    icebreaker iterate --config configs/local-cpu.yaml --out runs/demo

Round r = 1 … ``iterate.rounds`` starts from the latest generator (round 0 is the ``dpo``
stage's model) and:

1. samples starter lists from it for this round's training users (one Ray Data pass
   whose samples serve twice, as in production: the lists are deployed, and the same
   samples, mixed with teacher-distilled starters, form the candidate pools C);
2. deploys the lists in the simulated world for ``iterate.days_per_round`` days, which
   returns fresh impression and session logs (nothing hidden), and refits the ``util``
   ranker on all logs so far — the evaluation ranker f is never refit;
3. runs the hybrid reward list search (Algorithm 1) on the pools with the refit ranker;
4. runs DPO from the latest generator (also the reference) on the pairs accumulated over
   all rounds, round 0's included.

Writes ``OUT/iterate/round-<r>/`` (``model/``, ``util/``, ``candidates``, ``preference_pairs``,
the fresh ``impressions`` and ``sessions``) and ``rounds.json``, one metrics row per round.
The manifest's ``final_model`` names the last round's generator. With your own logs
(``data.source`` a path) there is no world to deploy in: the rounds mine and train on
the logs there are, and fresh feedback comes from the server's event store instead.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from icebreaker_ray import layout
from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.isg.batch import complete_share, generate_lists
from icebreaker_ray.isg.stage import MODEL_DIR, dpo_round
from icebreaker_ray.raykit import init_ray, node_id
from icebreaker_ray.search.mine import pools_from_lists, search_pairs
from icebreaker_ray.search.stage import mining_requests, pair_stats

UTIL_DIR = "util"


def round_dir(round_: int) -> str:
    return f"round-{round_}"


def _refit_ranker(cfg: Config, writer: io.StageWriter, sessions: pa.Table, users: pa.Table,
                  impressions: pa.Table, round_: int) -> tuple[str, dict[str, Any]]:
    """The ``util`` ranker refit on every impression logged so far (its slice of them)."""
    from icebreaker_ray.models import TextEncoder
    from icebreaker_ray.reward.ranker import UserFeaturizer, build_examples, log_slice
    from icebreaker_ray.reward.stage import SLICES, fit_slice

    encoder = TextEncoder(cfg.models.embedder)
    examples = build_examples(impressions, UserFeaturizer(sessions, users, encoder), encoder)
    part = examples.subset(log_slice(examples.request_id, len(SLICES)) == SLICES[UTIL_DIR])
    relative = f"{round_dir(round_)}/{UTIL_DIR}"
    model, metrics = fit_slice(part, f"{UTIL_DIR}-{round_}", cfg,
                               writer.path(f"{round_dir(round_)}/ray"), cfg.run.seed + 10 * round_)
    model.save(writer.path(relative))
    writer.add_file(relative)
    return writer.path(relative), metrics


def _ctr(impressions: pa.Table) -> float:
    clicked = impressions.column("clicked").to_pylist()
    return sum(clicked) / len(clicked) if clicked else float("nan")


def iterate(cfg: Config, out: str) -> dict[str, Any]:
    init_ray(cfg)
    writer = io.StageWriter(out, "iterate")
    sessions = io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions")
    users = io.read_table(io.table_uri(out, "simulate", "users"), "users")
    impressions = io.read_table(io.table_uri(out, "simulate", "impressions"), "impressions")
    pairs_so_far = [io.read_table(io.table_uri(out, "mine", "preference_pairs"), "preference_pairs",
                                  allow_empty=True)]
    ranker = layout.ranker_dir(out, UTIL_DIR)
    in_world = cfg.data.source == "sim"
    state = None
    if in_world:
        from icebreaker_ray.sim.rollout import deploy, load_state, restrict, save_state

        state = load_state(out, cfg)
    rows: list[dict[str, Any]] = []
    generator = io.absolute(layout.dpo_generator(out))  # actors and workers load it
    for r in range(1, cfg.iterate.rounds + 1):
        here = round_dir(r)
        requests = mining_requests(out, cfg, r)
        lists = generate_lists(requests, generator, cfg)
        row: dict[str, Any] = {"round": r, "users": lists.num_rows,
                               "format_pass_rate": complete_share(lists)}
        if state is not None:
            shown = {u: [s, *alts] for u, s, alts in zip(
                lists.column("user_id").to_pylist(), lists.column("starters").to_pylist(),
                lists.column("alternatives").to_pylist(), strict=True)}
            log = deploy(state, cfg, shown, cfg.iterate.days_per_round, f"iterate-{r}")
            save_state(out, here, state)
            fresh_sessions = io.validate_table(log.sessions, "sessions", f"round {r} logs")
            fresh = io.validate_table(log.impressions, "impressions", f"round {r} logs")
            writer.write_table("impressions", fresh, f"{here}/impressions.parquet")
            writer.write_table("sessions", fresh_sessions, f"{here}/sessions.parquet")
            sessions = pa.concat_tables([sessions, fresh_sessions])
            impressions = pa.concat_tables([impressions, fresh])
            others = sorted(set(fresh.column("user_id").to_pylist()) - set(shown))
            row.update(days=cfg.iterate.days_per_round, day_end=state.day,
                       deployed_ctr=_ctr(restrict(fresh, list(shown))),
                       baseline_ctr=_ctr(restrict(fresh, others)))
            ranker, row["ranker"] = _refit_ranker(cfg, writer, sessions, users, impressions, r)
        pools = pools_from_lists(lists, requests, cfg)
        pairs = search_pairs(pools, ranker, sessions, users, cfg, r, cfg.dpo.negatives)
        writer.write_table("candidates", pa.table({
            "user_id": pools.column("user_id"),
            "round": pa.array([r] * pools.num_rows, pa.int32()),
            "starters": pools.column("starters")}), f"{here}/candidates.parquet")
        writer.write_table("preference_pairs", pairs, f"{here}/preference_pairs.parquet")
        pairs_so_far.append(pairs)
        accumulated = pa.concat_tables(pairs_so_far)
        row["mining"] = pair_stats(pairs, pools)
        row["dpo"] = dpo_round(cfg, writer, accumulated.to_pylist(), generator,
                               f"{here}/{MODEL_DIR}", f"iterate-{r}")
        row["model"] = f"{here}/{MODEL_DIR}"
        generator = io.absolute(writer.path(row["model"]))
        rows.append(row)
    writer.write_json("rounds.json", rows)
    return writer.commit(metrics={"rounds": rows, "final_model": rows[-1]["model"]},
                         node_ids=[node_id()])

