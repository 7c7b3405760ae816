"""The ``evaluate`` stage: offline metrics, ablations, the simulated A/B test, the report.

    icebreaker evaluate --config configs/local-cpu.yaml --out runs/demo

On held-out users (``eval.holdout_fraction``: never mined, never trained on, never shown
a generated list during the self-reinforced rounds), every method generates one filtered
list per user through Ray Data (``isg.batch.generate_many``, one pass for all methods):

| method | model | prompt input |
|---|---|---|
| PE | base generator | the user's most recent raw summaries |
| PE+RID | base generator | trigger interests I* |
| SFT | ``sft/model`` | I* |
| SFT+DPO | ``dpo/vanilla-model`` (pairs from logged clicks only) | I* |
| ICEBREAKER | the promoted generator (``iterate``'s round gate; round 0 if none passed) | I* |

and is compared with the deployed retrieval baseline R_u on the same users:
R-User (eq. 9) and R-Score (eq. 10) under the evaluation ranker f (``train-ranker/eval``,
trained on a slice of logs the optimized ranker never saw) and under the simulator's
true click probability; lexical and semantic diversity; the format pass rate. A slot the
generator could not fill scores 0. The utility figures get 95% bootstrap intervals over
users and ICEBREAKER is tested against SFT+DPO and SFT, paired over the same users
(:func:`table1_statistics`); ``eval.max_users`` caps the graded users (None: all). Ablations: distillation strategy (Table 6), round
(Table 7), negative type (Table 9, ``eval.negative_ablation``). The A/B test (Table 2)
continues the world from where the logs end with one arm per method.

Writes ``OUT/evaluate/``: ``metrics.json``, ``report.md``, PNG figures, ``lists.json``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from icebreaker_ray import layout
from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.data.splits import is_holdout
from icebreaker_ray.eval import metrics as M
from icebreaker_ray.eval.topics import TopicClassifier
from icebreaker_ray.isg.batch import complete_share, generate_many, invented_share
from icebreaker_ray.isg.generate import GenerationParams
from icebreaker_ray.isg.stage import dpo_round
from icebreaker_ray.layout import promoted_generator, round_models, trigger_interests
from icebreaker_ray.models import TextEncoder, resolve_generator
from icebreaker_ray.raykit import init_ray, node_id
from icebreaker_ray.sim.catalog import load_catalog
from icebreaker_ray.sim.policy import RetrievalPolicy, generic_starters, starter_pool
from icebreaker_ray.sim.rollout import (
    WorldState,
    ab_test,
    load_state,
    oracle_click_probabilities,
    restrict,
)

AB_METRICS = (("active_days", "Active days"), ("avg_sessions", "Sessions / user"),
              ("ctr", "CTR"), ("csr", "Conversation start rate"))
#: Table 1's utility figures that get a 95% bootstrap interval: (per-user term, row key).
INTERVAL_FIGURES = (("r_user_f", "r_user_f"), ("r_score_f", "r_score_f"),
                    ("r_user_oracle", "r_user_oracle"), ("r_score_oracle", "r_score_oracle"),
                    ("oracle_p_click", "mean_oracle_ctr"))
#: Paired tests of Table 1 (method, against), over the same graded users.
PAIRED_TESTS = (("ICEBREAKER", "SFT+DPO"), ("ICEBREAKER", "SFT"))


# ----------------------------------------------------------------------------- inputs


def eval_users(interests: Mapping[str, Sequence[str]], cfg: Config, cap: int | None,
               salt: int = 0) -> list[str]:
    """Held-out users with trigger interests, at most ``cap`` (a seeded sample)."""
    users = sorted(u for u in interests if is_holdout(u, cfg.eval.holdout_fraction, cfg.run.seed))
    if cap is not None and len(users) > cap:
        rng = np.random.default_rng([cfg.run.seed, 7919, salt])
        users = sorted(rng.choice(users, cap, replace=False).tolist())
    return users


def histories(sessions: pa.Table) -> tuple[dict[str, list[str]], dict[str, list[float]]]:
    """Each user's summaries in time order (what the logs say they talked about) and the
    day (fractional, since the epoch) of each."""
    order = sessions.sort_by([("user_id", "ascending"), ("ts", "ascending"), ("session_id", "ascending")])
    texts: dict[str, list[str]] = defaultdict(list)
    days: dict[str, list[float]] = defaultdict(list)
    ts = order.column("ts").cast(pa.int64()).to_numpy() / 86_400_000.0
    for uid, summary, day in zip(order.column("user_id").to_pylist(), order.column("summary").to_pylist(),
                                 ts, strict=True):
        texts[uid].append(summary)
        days[uid].append(float(day))
    return texts, days


def logged_sessions(out: str) -> pa.Table:
    """Sessions logged so far: the simulated logs plus every self-reinforced round's."""
    tables = [io.read_table(io.table_uri(out, "simulate", "sessions"), "sessions")]
    manifest = io.read_manifest(out, "iterate") or {}
    for name in manifest.get("files", []):
        if name.endswith("/sessions.parquet"):
            tables.append(io.read_table(io.join(out, "iterate", name), "sessions"))
    return pa.concat_tables(tables)


def latest_state(out: str, cfg: Config) -> WorldState:
    manifest = io.read_manifest(out, "iterate") or {}
    rounds = manifest.get("metrics", {}).get("rounds", [])
    deployed = [r for r in rounds if "day_end" in r]
    return load_state(out, cfg, f"round-{deployed[-1]['round']}" if deployed else None)


def _requests(users: Sequence[str], inputs: Mapping[str, Sequence[str]]) -> pa.Table:
    return pa.table({"user_id": list(users), "interests": [list(inputs[u]) for u in users]},
                    schema=pa.schema([("user_id", pa.string()), ("interests", pa.list_(pa.string()))]))


def as_dict(lists: pa.Table, column: str = "starters") -> dict[str, list]:
    return dict(zip(lists.column("user_id").to_pylist(), lists.column(column).to_pylist(), strict=True))


# ----------------------------------------------------------------------------- grading


class Grader:
    """Scores lists for the offline metrics: the evaluation ranker f and the oracle."""

    def __init__(self, out: str, cfg: Config, state: WorldState | None, sessions: pa.Table,
                 users: pa.Table, encoder: TextEncoder) -> None:
        from icebreaker_ray.reward.ranker import UserFeaturizer, load_ranker

        self.k = cfg.generation.K
        self.encoder, self.state = encoder, state
        self.f = load_ranker(layout.ranker_dir(out, "eval"))
        self.features = UserFeaturizer(sessions, users, encoder)
        self.topics = TopicClassifier.fit(load_catalog(), encoder, seed=cfg.run.seed)

    def _pad(self, scores: np.ndarray) -> np.ndarray:
        """Per-slot scores of a K-list; slots left empty score 0."""
        out = np.zeros(self.k)
        out[: min(len(scores), self.k)] = scores[: self.k]
        return out

    def f_scores(self, lists: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
        result = {}
        for uid, starters in lists.items():
            if starters:
                emb = self.encoder(list(starters))
                result[uid] = self._pad(self.f.utility(self.features, [uid] * len(starters),
                                                       list(starters), emb))
            else:
                result[uid] = np.zeros(self.k)
        return result

    def oracle_scores(self, lists: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
        if self.state is None:
            return {u: np.full(self.k, np.nan) for u in lists}
        probs = oracle_click_probabilities(self.state, {u: s for u, s in lists.items() if s})
        return {u: self._pad(probs.get(u, np.zeros(0))) for u in lists}

    def per_user(self, lists: Mapping[str, Sequence[str]], base_f: Mapping[str, np.ndarray],
                 base_oracle: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The per-user terms of the utility figures, users in sorted order (``user_id``):
        R-User and R-Score under f and the oracle (``nan`` = skipped: a zero baseline, or no
        oracle), the mean f score and the oracle P(click) of the list. Their means are
        Table 1's figures; their bootstrap, its intervals and paired tests."""
        users = sorted(lists)
        f, o = self.f_scores(lists), self.oracle_scores(lists)
        gf, bf = [f[u] for u in users], [base_f[u] for u in users]
        go, bo = [o[u] for u in users], [base_oracle[u] for u in users]
        nan = np.full(len(users), np.nan)
        graded = self.state is not None
        return {
            "user_id": np.asarray(users, dtype=object),
            "r_user_f": M.r_user_values(gf, bf), "r_score_f": M.r_score_values(gf, bf),
            "r_user_oracle": M.r_user_values(go, bo) if graded else nan,
            "r_score_oracle": M.r_score_values(go, bo) if graded else nan,
            "mean_f": np.array([x.mean() for x in gf]),
            "oracle_p_click": np.array([x.sum() for x in go]),
        }

    def grade(self, lists: Mapping[str, Sequence[str]], base: Mapping[str, Sequence[str]],
              base_f: Mapping[str, np.ndarray], base_oracle: Mapping[str, np.ndarray],
              corpus: Sequence[str], terms: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
        """Table 1's row for ``lists``; ``terms``: :meth:`per_user` of them, if already computed."""
        users = sorted(lists)
        t = terms if terms is not None else self.per_user(lists, base_f, base_oracle)

        def mean(key: str) -> float:
            kept = t[key][~np.isnan(t[key])]
            return float(kept.mean()) if kept.size else float("nan")

        r_score_f, r_score_o = mean("r_score_f"), mean("r_score_oracle")
        starters = [list(lists[u]) for u in users]
        return {
            "users": len(users),
            "r_user_f": mean("r_user_f"), "r_score_f": r_score_f,
            "r_user_oracle": mean("r_user_oracle"), "r_score_oracle": r_score_o,
            "hacking_gap": r_score_f - r_score_o,
            "mean_f": float(np.mean(t["mean_f"])),
            "mean_oracle_ctr": float(np.mean(t["oracle_p_click"])),
            "lexical_diversity": M.lexical_diversity(starters, corpus=corpus),
            "semantic_diversity": M.semantic_diversity(self.topics.categories_per_list(starters)),
            "full_lists": float(np.mean([len(s) >= self.k for s in starters])),
        }


def table1_statistics(terms: Mapping[str, Mapping[str, np.ndarray]], n_boot: int,
                      seed: int) -> dict[str, Any]:
    """95% bootstrap intervals of Table 1's utility figures (users resampled as units, the
    same resamples for every method: one seed) and the paired tests of
    :data:`PAIRED_TESTS` (:func:`~icebreaker_ray.eval.metrics.paired_difference`: mean
    per-user difference, its bootstrap interval, sign-flip permutation p-value). ``terms``:
    :meth:`Grader.per_user` of each method, all on the same users."""
    orders = {name: tuple(t["user_id"]) for name, t in terms.items()}
    if len(set(orders.values())) > 1:
        raise ValueError("Table 1 statistics need every method graded on the same users")
    intervals = {name: {row_key: vars(M.bootstrap_mean(t[key], n_boot, seed))
                        for key, row_key in INTERVAL_FIGURES}
                 for name, t in terms.items()}
    paired = {f"{a} vs {b}": {row_key: vars(M.paired_difference(terms[b][key], terms[a][key], n_boot, seed))
                              for key, row_key in INTERVAL_FIGURES}
              for a, b in PAIRED_TESTS if a in terms and b in terms}
    users = len(next(iter(orders.values()), ()))
    return {"users": users, "n_boot": n_boot, "confidence": 0.95, "intervals": intervals, "paired": paired}


# ----------------------------------------------------------------------------- the A/B test


def pair_agreement(pairs: Sequence[Mapping[str, Any]],
                   click_probs: Callable[[Mapping[str, Sequence[str]]], Mapping[str, np.ndarray]],
                   ) -> dict[str, dict[str, float]]:
    """Do preference pairs point the way the user's true clicks would? For each pair, the
    probability that the user clicks any starter of the chosen and of the rejected list
    (``click_probs``: {user: list} -> {user: per-slot probabilities}, e.g. the oracle); per
    negative type (and "all"): the share of pairs whose chosen list is the likelier to be
    clicked (ties count half), the mean of both, and the number of pairs. A share near 50%
    means the pairs teach the generator nothing about clicks."""
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for pair in pairs:
        uid = pair["user_id"]
        chosen = float(np.sum(click_probs({uid: list(pair["chosen"])}).get(uid, 0.0)))
        rejected = float(np.sum(click_probs({uid: list(pair["rejected"])}).get(uid, 0.0)))
        kind = pair.get("negative_type")
        for key in (kind, "all") if kind else ("all",):
            rows[key].append((chosen, rejected))
    out = {}
    for key, values in rows.items():
        c, r = np.array(values).T
        out[key] = {"pairs": len(values), "chosen_wins": float(np.mean((c > r) + 0.5 * (c == r))),
                    "chosen_p_click": float(c.mean()), "rejected_p_click": float(r.mean())}
    return out


def pairs_vs_oracle(cfg: Config, out: str, rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """pair_agreement under the oracle for every set of training pairs: round 0's mined and
    logged-feedback pairs in the world where the logs end, each later round's mined pairs in
    the world that round's deployment left (where they were mined)."""
    def read(*parts: str) -> list[dict[str, Any]]:
        uri = io.join(out, *parts)
        return io.read_table(uri, "preference_pairs", allow_empty=True).to_pylist() if io.exists(uri) else []

    states: dict[str | None, WorldState] = {}  # round 0's two pair sets share one world

    def agreement(pairs, state_name: str | None) -> dict[str, Any]:
        if state_name not in states:
            states[state_name] = load_state(out, cfg, state_name)
        state = states[state_name]
        return pair_agreement(pairs, lambda lists: oracle_click_probabilities(state, lists))

    result = {"mined, round 0": agreement(read("mine", "preference_pairs.parquet"), None),
              "logged feedback (SFT+DPO)": agreement(read("mine", "feedback_pairs.parquet"), None)}
    for r in rounds:
        if "day_end" in r:
            result[f"mined, round {r['round']}"] = agreement(
                read("iterate", f"round-{r['round']}", "preference_pairs.parquet"), f"round-{r['round']}")
    return result


def _aligned(per_user: dict[str, np.ndarray], users: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-user online aggregates on a fixed user order (0 for a user who never came)."""
    index = {u: i for i, u in enumerate(per_user["user_id"])}
    out = {}
    for key in ("active_days", "sessions", "shown", "clicked", "started"):
        values = np.zeros(len(users))
        for j, u in enumerate(users):
            if u in index:
                values[j] = float(per_user[key][index[u]])
        out[key] = values
    return out


def ab_lifts(logs: Mapping[str, Any], control: str, horizon: tuple[int, int], n_boot: int,
             seed: int) -> dict[str, dict[str, Any]]:
    """Each arm vs ``control``: metric values, relative lift, 95% CI and p-value."""
    per_arm = {name: M.online_per_user(log.events, horizon=horizon) for name, log in logs.items()}
    users = sorted(set().union(*(set(p["user_id"].tolist()) for p in per_arm.values())))
    aligned = {name: _aligned(p, users) for name, p in per_arm.items()}
    a = aligned[control]
    result: dict[str, dict[str, Any]] = {}
    for name, b in aligned.items():
        row: dict[str, Any] = {"metrics": logs[name].metrics, "users": len(users)}
        if name != control:
            lifts = {
                "active_days": M.bootstrap_relative_lift(a["active_days"], b["active_days"], n_boot, seed),
                "avg_sessions": M.bootstrap_relative_lift(a["sessions"], b["sessions"], n_boot, seed),
                "ctr": M.bootstrap_relative_lift(a["clicked"], b["clicked"], n_boot, seed,
                                                 ratio_of_sums=(a["shown"], b["shown"])),
                "csr": M.bootstrap_relative_lift(a["started"], b["started"], n_boot, seed),
            }
            row["lifts"] = {k: vars(v) for k, v in lifts.items()}
        result[name] = row
    return result


# ----------------------------------------------------------------------------- the stage


class Evaluation:
    """Generates and grades lists for one run. Lists are cached by (model, prompt input):
    an ablation row that is also a Table 1 method reuses its lists on the same users."""

    def __init__(self, cfg: Config, out: str) -> None:
        self.cfg, self.out = cfg, out
        self.encoder = TextEncoder(cfg.models.embedder)
        self.sessions = logged_sessions(out)
        self.users_table = io.read_table(io.table_uri(out, "simulate", "users"), "users")
        self.history, self.history_days = histories(self.sessions)
        self.interests = trigger_interests(out)
        # Your own logs have no world behind them: no oracle grades and no A/B test.
        self.state = latest_state(out, cfg) if cfg.data.source == "sim" else None
        self.grader = Grader(out, cfg, self.state, self.sessions, self.users_table, self.encoder)
        self.params = GenerationParams(**{**vars(GenerationParams.from_config(cfg)),
                                          "num_candidates": cfg.eval.num_candidates})
        self.base_model = resolve_generator(cfg.models.generator, cfg.models.cache_dir)
        self._lists: dict[tuple[str, str], pa.Table] = {}

    def recent(self, uid: str) -> list[str]:
        return self.history[uid][-self.cfg.eval.pe_summaries:]

    def rule_interests(self, uid: str) -> list[str]:
        """Rule-based distillation (frequency + recency, App. C.1): the top summaries."""
        from icebreaker_ray.rid import gating

        texts, g = self.history[uid], self.cfg.gating
        scores = gating.rule_based_scores(np.zeros(len(texts)), np.asarray(self.history_days[uid]),
                                          self.encoder(texts), self.cfg.judge.threshold,
                                          g.rule_half_life_days, g.rule_recency_weight)
        ranked = [texts[i] for i in np.argsort(-scores, kind="stable")]
        return list(dict.fromkeys(ranked))[: g.max_interests]

    def prompt_input(self, source: str, uid: str) -> list[str]:
        if source == "recent":
            return self.recent(uid)
        if source == "rule":
            return self.rule_interests(uid)
        return list(self.interests[uid])

    @staticmethod
    def model(uri: str) -> str:
        """The model at ``uri`` as every actor and Train worker can load it (a storage URI is
        copied once per node by ``models.resolve_generator``)."""
        return io.absolute(uri)

    def _missing(self, uri: str, source: str, users: Sequence[str]) -> bool:
        cached = self._lists.get((uri, source))
        return cached is None or not set(users) <= set(cached.column("user_id").to_pylist())

    def prefetch(self, wanted: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        """Generate every ``(model uri, prompt input, users)`` not cached yet in one Ray Data
        pass (``generate_many``): one actor pool for all methods and ablations."""
        todo: dict[tuple[str, str], list[str]] = {}
        for uri, source, users in wanted:
            if self._missing(uri, source, users):
                todo.setdefault((uri, source), [])
                todo[(uri, source)] = sorted(set(todo[(uri, source)]) | set(users))
        if not todo:
            return
        jobs = [(uri if uri == self.base_model else self.model(uri),
                 _requests(users, {u: self.prompt_input(source, u) for u in users}))
                for (uri, source), users in todo.items()]
        for key, table in zip(todo, generate_many(jobs, self.cfg, self.params), strict=True):
            self._lists[key] = table

    def generate(self, uri: str, source: str, users: Sequence[str]) -> pa.Table:
        """One list per user from the model at ``uri`` prompted with ``source``."""
        if self._missing(uri, source, users):
            self.prefetch([(uri, source, users)])
        return restrict(self._lists[(uri, source)], users)

    def baseline(self, users: Sequence[str]) -> dict[str, list[str]]:
        """R_u: the deployed retrieval policy's list for each user on the evaluation day."""
        catalog = load_catalog()
        policy = RetrievalPolicy(starter_pool(catalog, self.cfg.run.seed), self.encoder,
                                 k=self.cfg.generation.K, seed=self.cfg.run.seed,
                                 cold_start=generic_starters(catalog))
        slates = policy(list(users), self.history, self.state.day if self.state else 0)
        return {u: s.starters for u, s in zip(users, slates, strict=True)}

    def grade(self, table: pa.Table, base, base_f, base_o, corpus, terms=None) -> dict[str, Any]:
        lists = as_dict(table)
        return {**self.grader.grade(lists, {u: base[u] for u in lists}, base_f, base_o, corpus, terms),
                "format_pass_rate": complete_share(table),
                "invented_rate": invented_share(table),
                "ok_share": float(np.mean([r == "ok" for r in table.column("reason").to_pylist()]))}


def _method_specs(ev: Evaluation, out: str) -> list[tuple[str, str | None, str]]:
    """(method, model uri, prompt input) for the methods of Table 1 that exist in this run."""
    vanilla = layout.vanilla_generator(out)
    specs = [("PE", ev.base_model, "recent"), ("PE+RID", ev.base_model, "interests"),
             ("SFT", layout.sft_generator(out), "interests"),
             ("SFT+DPO", vanilla if io.exists(vanilla) else None, "interests"),
             ("ICEBREAKER", promoted_generator(out), "interests")]
    return specs


def evaluate(cfg: Config, out: str) -> dict[str, Any]:
    from icebreaker_ray.eval.report import write_report

    why = layout.missing_clicks(out)
    if why:  # your own logs before clicks: no grader f to train, no world for an A/B test
        return layout.not_run(out, "evaluate", layout.click_free_message(
            "evaluate", why, "an evaluation ranker f trained on clicks (or the simulated world)"))
    init_ray(cfg)
    writer = io.StageWriter(out, "evaluate")
    e = cfg.eval
    results: dict[str, Any] = {"config": {"holdout_fraction": e.holdout_fraction, "ab_days": e.ab_days,
                                          "num_candidates": e.num_candidates, "K": cfg.generation.K,
                                          "max_users": e.max_users}}
    ev = Evaluation(cfg, out)
    users = eval_users(ev.interests, cfg, e.max_users)
    if not users:
        raise io.DataError("evaluate: no held-out users with trigger interests "
                           "(raise eval.holdout_fraction or simulate more users)")
    results["config"]["graded_users"] = len(users)
    base = ev.baseline(users)
    base_f, base_o = ev.grader.f_scores(base), ev.grader.oracle_scores(base)

    # Ablations (Tables 6, 7, 9) run on a seeded subset of the same users.
    ab_users = users
    if e.ablation_users and len(users) > e.ablation_users:
        rng = np.random.default_rng([cfg.run.seed, 1])
        ab_users = sorted(rng.choice(users, e.ablation_users, replace=False).tolist())
    final = promoted_generator(out)
    table6 = (("None (recent summaries)", "recent"), ("Rule-based", "rule"), ("RID", "interests"))
    # Every list Tables 1, 6 and 7 need, sampled in one pass, model by model.
    specs = _method_specs(ev, out)
    ev.prefetch([(uri, source, users) for _, uri, source in specs if uri is not None]
                + [(final, source, ab_users) for _, source in table6]
                + [(uri, "interests", ab_users) for _, uri in round_models(out)])

    # Table 1: every method on the held-out users.
    tables: dict[str, pa.Table] = {}
    for name, uri, source in specs:
        if uri is None:
            results.setdefault("skipped", {})[name] = "no model (e.g. no logged-feedback pairs)"
            continue
        tables[name] = ev.generate(uri, source, users)
    corpus = [s for t in tables.values() for x in t.column("starters").to_pylist() for s in x] + \
             [s for v in base.values() for s in v]
    terms = {"R_u (retrieval)": ev.grader.per_user(base, base_f, base_o)}
    terms.update({name: ev.grader.per_user(as_dict(t), base_f, base_o) for name, t in tables.items()})
    table1 = {"R_u (retrieval)": ev.grader.grade(base, base, base_f, base_o, corpus,
                                                 terms["R_u (retrieval)"])}
    for name, table in tables.items():
        table1[name] = ev.grade(table, base, base_f, base_o, corpus, terms[name])
    results["table1"] = table1
    results["table1_stats"] = table1_statistics(terms, e.n_boot, cfg.run.seed)

    # Ablations (Tables 6, 7, 9) on ab_users.
    grade = lambda uri, source: ev.grade(ev.generate(uri, source, ab_users),  # noqa: E731
                                         base, base_f, base_o, corpus)
    results["table6"] = {label: grade(final, source) for label, source in table6}
    results["table7"] = {label: grade(uri, "interests") for label, uri in round_models(out)}
    if e.negative_ablation:
        results["table9"] = _negative_ablation(out, grade)

    # Table 2: the simulated A/B test, every method against the deployed baseline.
    arms: dict[str, dict[str, list[list[str]]] | None] = {"baseline": None}
    for name, t in tables.items():
        arms[name] = {u: [s, *alts] for u, s, alts in zip(
            t.column("user_id").to_pylist(), t.column("starters").to_pylist(),
            t.column("alternatives").to_pylist(), strict=True)}
    results["table2"] = {}
    if ev.state is not None:
        logs = ab_test(ev.state, cfg, arms, users, e.ab_days)
        horizon = (ev.state.day, ev.state.day + e.ab_days)
        results["table2"] = ab_lifts(logs, "baseline", horizon, e.n_boot, cfg.run.seed)

    # What the report shows beside the tables.
    results["topics"] = _topic_shares(ev, users, tables["ICEBREAKER"])
    results["examples"] = _examples(ev, users, base, as_dict(tables["ICEBREAKER"]), e.examples)
    iterated = (io.read_manifest(out, "iterate") or {}).get("metrics", {})
    results["rounds"] = iterated.get("rounds", [])
    results["promotion"] = iterated.get("promotion")
    if ev.state is not None:
        from icebreaker_ray.eval.rid_quality import interest_noise

        results["pairs_vs_oracle"] = pairs_vs_oracle(cfg, out, results["rounds"])
        results["interest_noise"] = interest_noise(out)
    results["stages"] = _stage_times(out)
    results["ranker"] = ranker_summary(out)
    results["topic_classifier_train_accuracy"] = ev.grader.topics.train_accuracy
    writer.write_json("lists.json", {k: as_dict(t) for k, t in tables.items()})
    writer.write_json("metrics.json", results)
    write_report(writer, results, cfg)
    summary = {name: {k: row[k] for k in ("r_user_f", "r_score_f", "r_user_oracle", "r_score_oracle")}
               for name, row in results["table1"].items()}
    return writer.commit(metrics=summary,
                         node_ids=[node_id()])


# ----------------------------------------------------------------------------- ablations


NEGATIVE_TYPES = ("utility", "diversity", "joint")


def ablate_negatives(cfg: Config, out: str) -> dict[str, Any]:
    """Stage ``ablate-negatives`` (Table 9 analogue): DPO from the SFT model on the round-0
    pairs of one negative type, one model per type, same steps and beta as ``dpo``.
    ``evaluate`` grades them against the hierarchical mix (the ``dpo`` stage's model). With
    ``eval.negative_ablation`` off it trains nothing and says so in its manifest."""
    writer = io.StageWriter(out, "ablate-negatives")
    if not cfg.eval.negative_ablation:
        return writer.commit(metrics={"skipped": "eval.negative_ablation is false"},
                             node_ids=[node_id()])
    init_ray(cfg)
    pairs = io.read_table(io.table_uri(out, "mine", "preference_pairs"), "preference_pairs",
                          allow_empty=True).to_pylist()
    metrics: dict[str, Any] = {"hierarchical": {"pairs": len(pairs)}}
    sft = io.absolute(layout.sft_generator(out))  # every Train worker loads it from storage
    for kind in NEGATIVE_TYPES:
        subset = [p for p in pairs if p["negative_type"] == kind]
        if not subset:
            metrics[kind] = {"skipped": f"no {kind} negatives were mined"}
            continue
        metrics[kind] = {**dpo_round(cfg, writer, subset, sft, kind, f"ablation-{kind}"),
                         "model": kind}
    return writer.commit(metrics=metrics, node_ids=[node_id()])


def _negative_ablation(out: str, grade) -> dict[str, Any]:
    """Table 9: each ``ablate-negatives`` model against the hierarchical mix."""
    trained = (io.read_manifest(out, "ablate-negatives") or {}).get("metrics", {})
    rows: dict[str, Any] = {}
    for kind in NEGATIVE_TYPES:
        row = trained.get(kind, {})
        if "model" not in row:
            rows[f"{kind} only"] = {"skipped": row.get("skipped", "not trained")}
            continue
        rows[f"{kind} only"] = {**grade(io.join(out, "ablate-negatives", row["model"]), "interests"),
                                "pairs": row["pairs"]}
    rows["hierarchical"] = {**grade(layout.dpo_generator(out), "interests"),
                            "pairs": trained.get("hierarchical", {}).get("pairs", 0)}
    return rows


# ----------------------------------------------------------------------------- report inputs


def _topic_shares(ev: Evaluation, users: Sequence[str], final: pa.Table) -> dict[str, dict[str, float]]:
    """Fig. 3 analogue: category shares of raw summaries -> trigger interests -> starters."""
    def shares(texts: list[str]) -> dict[str, float]:
        counts: dict[str, int] = defaultdict(int)
        labels = ev.grader.topics.predict(texts)
        for label in labels:
            counts[label] += 1
        return {k: v / max(len(labels), 1) for k, v in sorted(counts.items())}

    return {"summaries": shares([s for u in users for s in ev.history[u]]),
            "trigger interests": shares([s for u in users for s in ev.interests[u]]),
            "ICEBREAKER starters": shares([s for x in final.column("starters").to_pylist() for s in x])}


def _examples(ev: Evaluation, users, base, generated, n: int) -> list[dict[str, Any]]:
    picked = [u for u in users if generated.get(u)][:n]
    return [{"user_id": u, "summaries": ev.recent(u)[-5:], "trigger_interests": ev.interests[u],
             "baseline": base[u], "generated": generated[u]} for u in picked]


RANKER_KEYS = ("kind", "members", "train_impressions", "test_impressions", "train_clicks",
               "test_clicks", "click_auc", "click_auc_popularity", "click_auc_mlp",
               "click_auc_features", "depth_corr", "depth_corr_popularity")


def ranker_summary(out: str) -> dict[str, dict[str, Any]]:
    """``ranker.util`` / ``ranker.eval`` of metrics.json: train-ranker's held-out quality."""
    metrics = (io.read_manifest(out, "train-ranker") or {}).get("metrics", {})
    return {name: {k: metrics[name][k] for k in RANKER_KEYS if k in metrics[name]}
            for name in ("util", "eval") if isinstance(metrics.get(name), dict)}


def _stage_times(out: str) -> dict[str, float]:
    from icebreaker_ray.pipeline import STAGES

    times = {}
    for stage in STAGES:
        m = io.read_manifest(out, stage.name)
        if m and m.get("duration_s") is not None:
            times[stage.name] = float(m["duration_s"])
    return times

