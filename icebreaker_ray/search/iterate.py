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

5. the round gate (``iterate.gate``): the round's model is promoted only if, on the
   validation users, it is not worse than the generator it would replace (the incumbent)
   on format pass rate and on relevance to the users' trigger interests, within
   ``iterate.format_tolerance`` / ``iterate.relevance_tolerance`` (see :func:`gate_figures`
   for why these two). A refused round is kept on disk (Table 7 grades it) but the
   incumbent stays: the next round deploys, mines from and trains on top of it.

Validation users (:func:`validation_users`): ``iterate.validation_users`` non-held-out
users picked by a second hash split; no self-reinforced round mines or deploys to them,
and evaluation never grades them (they are not held out).

Writes ``OUT/iterate/round-<r>/`` (``model/``, ``util/``, ``candidates``, ``preference_pairs``,
the fresh ``impressions`` and ``sessions``) and ``rounds.json``, one metrics row per round
(with ``gate``: both generators' gate figures, ``promoted``, ``reason``). The manifest's
``promotion`` says which round is promoted and why, and ``final_model`` names the promoted
round's generator, ``None`` when no round passed (round 0's ``dpo/model`` stays: see
:func:`icebreaker_ray.layout.promoted_generator`). With your own logs (``data.source`` a
path) there is no world to deploy in: the rounds mine and train on the logs there are,
and fresh feedback comes from the server's event store instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from icebreaker_ray import layout
from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.isg.batch import complete_share, generate_lists, generate_many
from icebreaker_ray.isg.stage import MODEL_DIR, dpo_round
from icebreaker_ray.raykit import init_ray, node_id
from icebreaker_ray.reward.proxy import interest_similarity
from icebreaker_ray.search.mine import pools_from_lists, search_pairs
from icebreaker_ray.search.stage import mining_requests, pair_stats, validation_users

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


# ----------------------------------------------------------------------------- the round gate


def gate_figures(lists: pa.Table, interests: Mapping[str, Sequence[str]], encoder, k: int) -> dict[str, Any]:
    """The gate's figures of one generator's lists on the validation users.

    - ``format_pass_rate``: share of sampled lists that parsed and passed the rule filter
      with K starters (:func:`~icebreaker_ray.isg.batch.complete_share`).
    - ``relevance``: mean over users of the mean over the K slots of each starter's best
      cosine similarity to the user's trigger interests I* (clipped at 0: the click-free
      proxy, :func:`~icebreaker_ray.reward.proxy.interest_similarity`); an empty slot scores 0.

    Why relevance to I* and not the ``util`` ranker's utility: the round was optimized
    against that ranker (its list search chose the DPO pairs by it), so its scores rise by
    construction, reward hacking included (issue 17: a round that won under the learned
    grader and lost under the truth). The evaluation ranker f and the oracle are the
    grades of the final report and must not pick the model. Similarity to I* needs only
    the sentence embedder and the round's own inputs, is blind to the reward the round
    chased, and drops when a round drifts off the user's interests or stops writing
    parseable lists (empty slots), the two ways rounds have failed here.
    """
    users = lists.column("user_id").to_pylist()
    values = []
    for uid, starters in zip(users, lists.column("starters").to_pylist(), strict=True):
        slots = np.zeros(k)
        if starters and interests.get(uid):
            best = interest_similarity(encoder(list(starters)[:k]), encoder(list(interests[uid])))
            slots[: len(best)] = best
        values.append(float(slots.mean()))
    return {"users": len(users), "format_pass_rate": complete_share(lists),
            "relevance": float(np.mean(values)) if values else 0.0}


def gate_decision(candidate: Mapping[str, float], incumbent: Mapping[str, float],
                  format_tolerance: float, relevance_tolerance: float) -> tuple[bool, str]:
    """Promote ``candidate`` unless it is worse than ``incumbent`` by more than a tolerance
    on format pass rate or on relevance; the reason names the figures that decided."""
    failed = []
    c, i = candidate["format_pass_rate"], incumbent["format_pass_rate"]
    if c < i - format_tolerance:
        failed.append(f"format pass {100 * c:.1f}% < {100 * i:.1f}% − {100 * format_tolerance:.1f} pts")
    cr, ir = candidate["relevance"], incumbent["relevance"]
    if cr < ir - relevance_tolerance:
        failed.append(f"relevance {cr:.3f} < {ir:.3f} − {relevance_tolerance:.3f}")
    if failed:
        return False, "refused: " + "; ".join(failed)
    return True, (f"not worse: format pass {100 * c:.1f}% vs {100 * i:.1f}%, "
                  f"relevance {cr:.3f} vs {ir:.3f}")


def _promotion(rows: Sequence[Mapping[str, Any]], promoted_round: int) -> dict[str, Any]:
    """The manifest's summary: the promoted round, its model (relative to the run) and why."""
    steps = "; ".join(f"round {r['round']} {r['gate']['reason']}" for r in rows)
    if promoted_round:
        model = f"iterate/{rows[promoted_round - 1]['model']}"
        reason = f"Round {promoted_round} is the last round promoted ({steps})."
    else:
        model = "dpo/model"
        reason = f"No self-reinforced round was promoted, round 0's DPO model stays ({steps})."
    return {"promoted_round": promoted_round, "model": model, "reason": reason}


def _ctr(impressions: pa.Table) -> float:
    clicked = impressions.column("clicked").to_pylist()
    return sum(clicked) / len(clicked) if clicked else float("nan")


def iterate(cfg: Config, out: str) -> dict[str, Any]:
    why = layout.missing_clicks(out)
    if why:  # your own logs before clicks: nothing to refit the ranker on, no world to deploy in
        return layout.not_run(out, "iterate", layout.click_free_message(
            "iterate", why, "feedback on deployed starters (each round refits the utility ranker)"))
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
    it = cfg.iterate
    held_back: list[str] = []
    if it.gate:
        from icebreaker_ray.models import TextEncoder

        interests = layout.trigger_interests(out)
        held_back = validation_users(interests, cfg)
        validation = pa.table({"user_id": held_back, "interests": [interests[u] for u in held_back]},
                              schema=pa.schema([("user_id", pa.string()),
                                                ("interests", pa.list_(pa.string()))]))
        encoder = TextEncoder(cfg.models.embedder)
    incumbent: dict[str, Any] | None = None  # the gate figures of the generator in use
    promoted_round = 0
    rows: list[dict[str, Any]] = []
    generator = io.absolute(layout.dpo_generator(out))  # actors and workers load it
    for r in range(1, it.rounds + 1):
        here = round_dir(r)
        requests = mining_requests(out, cfg, r)  # never the validation users
        if it.gate and incumbent is None:  # round 0's model on the validation users, same pass
            lists, checked = generate_many([(generator, requests), (generator, validation)], cfg)
            incumbent = gate_figures(checked, interests, encoder, cfg.generation.K)
        else:
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
        candidate = io.absolute(writer.path(row["model"]))
        if it.gate:
            figures = gate_figures(generate_lists(validation, candidate, cfg), interests, encoder,
                                   cfg.generation.K)
            promoted, reason = gate_decision(figures, incumbent, it.format_tolerance,
                                             it.relevance_tolerance)
            row["gate"] = {"validation_users": len(held_back), "candidate": figures,
                           "incumbent": incumbent, "incumbent_round": promoted_round,
                           "promoted": promoted, "reason": reason}
        else:
            promoted = True
            row["gate"] = {"promoted": True, "reason": "promoted: iterate.gate is false"}
        if promoted:
            generator, promoted_round = candidate, r
            incumbent = row["gate"].get("candidate")
        rows.append(row)
    writer.write_json("rounds.json", rows)
    promotion = _promotion(rows, promoted_round)
    final = rows[promoted_round - 1]["model"] if promoted_round else None
    return writer.commit(metrics={"rounds": rows, "promotion": promotion, "final_model": final},
                         node_ids=[node_id()])

