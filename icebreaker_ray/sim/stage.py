"""The ``simulate`` stage: write the simulated world's logs, keep its truth apart.

    icebreaker simulate --config configs/local-cpu.yaml --out runs/demo

Outputs (what the learned models may read), in ``OUT/simulate/``:
``users.parquet``, ``sessions.parquet``, ``impressions.parquet`` (the deployed retrieval
baseline as logging policy over the last ``sim.impression_days`` days), plus
``sim-report.md`` and ``sim-report.png`` (the world's statistics).

Hidden truth, in ``OUT/sim-truth/`` (read only by ``sim`` and ``eval``): the subject and
origin of every session, each user's hidden parameters, and ``world.pkl``, the state at
the end of the logs from which evaluation and the A/B test continue.

Users are generated in ``sim.num_shards`` Ray tasks (one process when 1); every random
stream is keyed by the global user index, so the output does not depend on the split.
"""

from __future__ import annotations

import io as _io
import json
import logging
import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from icebreaker_ray.config import Config
from icebreaker_ray.data import io
from icebreaker_ray.data.schemas import INPUT_TABLES, describe, schema
from icebreaker_ray.data.splits import RANKER_SLICES, activity_buckets, log_slice, ranker_holdout
from icebreaker_ray.models import TextEncoder
from icebreaker_ray.raykit import init_ray, node_id
from icebreaker_ray.sim import textstats
from icebreaker_ray.sim.catalog import load_catalog
from icebreaker_ray.sim.deploy import DayLog, SimEnv, simulate_shard
from icebreaker_ray.sim.policy import RetrievalPolicy, generic_starters, starter_pool
from icebreaker_ray.sim.world import GREETING, WorldParams

TRUTH_DIR = "sim-truth"

log = logging.getLogger(__name__)


def baseline_policy_factory(seed: int, k: int):
    """The deployed retrieval baseline R_u, built around an encoder."""
    catalog = load_catalog()

    def make(encoder) -> RetrievalPolicy:
        return RetrievalPolicy(starter_pool(catalog, seed), encoder, k=k, seed=seed,
                               cold_start=generic_starters(catalog))

    return make


def _run_shard(args: dict[str, Any]) -> dict[str, Any]:
    name = args.pop("encoder_name")
    result = simulate_shard(load_catalog(), lambda: TextEncoder(name), **args)
    env: SimEnv = result["env"]
    env.encoder = None  # a model does not belong in the saved world state
    result["node_id"] = node_id()
    return result


def _shards(cfg: Config) -> list[dict[str, Any]]:
    n, shards = cfg.sim.num_users, min(cfg.sim.num_shards, cfg.sim.num_users)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    warmup = cfg.sim.num_days - cfg.sim.impression_days
    if warmup < 1:
        raise ValueError(
            f"sim.impression_days ({cfg.sim.impression_days}) must be smaller than "
            f"sim.num_days ({cfg.sim.num_days}): the logs need a history before the first impression"
        )
    return [
        dict(first_user=int(a), num_users=int(b - a), seed=cfg.run.seed, warmup_days=warmup,
             logged_days=cfg.sim.impression_days, k=cfg.generation.K,
             policy_factory=baseline_policy_factory(cfg.run.seed, cfg.generation.K),
             encoder_name=cfg.models.embedder,
             world_params=WorldParams(text_style=cfg.sim.text_style))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]


def run_shards(cfg: Config) -> list[dict[str, Any]]:
    specs = _shards(cfg)
    if len(specs) == 1:
        return [_run_shard(specs[0])]
    import ray

    init_ray(cfg)
    task = ray.remote(num_cpus=1)(_run_shard)
    return ray.get([task.remote(spec) for spec in specs])


def _concat(logs: list[DayLog], attr: str) -> pa.Table:
    return pa.concat_tables([getattr(log, attr) for log in logs])


#: Row ids an ingest manifest lists per kind of dropped or cut row (the counts are whole).
MANIFEST_EXAMPLES = 20


def _source(cfg: Config, name: str) -> str | None:
    """``data.source/<name>`` (a file, a directory of Parquet parts, or ``<name>.parquet``)."""
    src = io.join(cfg.data.source, name)
    if io.exists(src):
        return src
    return src + ".parquet" if io.exists(src + ".parquet") else None


def _unknown_users(table: pa.Table, known: set[str]) -> np.ndarray:
    """Row indices of ``table`` whose user_id is not in ``known``."""
    ids = table.column("user_id").to_pylist()
    return np.array([i for i, u in enumerate(ids) if u not in known], int)


def ingest(cfg: Config, out: str) -> dict[str, Any]:
    """Bring-your-own-data: validate users/sessions (and impressions, when there are any)
    under ``data.source`` and write them where the simulated logs would go, so every
    later stage reads one place.

    What is checked, and what happens (the manifest's ``dropped``/``truncated`` count
    every row touched and name the first few):

    * ``users`` and ``sessions`` are required; a missing one is an error naming the path.
    * ``impressions`` may be missing or empty (a product without starter clicks yet): an
      empty table is written, and the click-trained stages say they did not run
      (:func:`icebreaker_ray.layout.missing_clicks`).
    * timestamps must be timezone-aware (an error naming the file and column otherwise).
    * a session of a user not in ``users`` is an error naming the row and user id: the
      user's activity bucket, which RID's thresholds need, is unknown. Impressions of an
      unknown user (the server logs anonymous requests too) are dropped and counted.
    * a blank summary (empty or whitespace) carries no interest: the session is dropped
      and counted. A summary longer than ``judge.max_summary_chars`` is cut to it (every
      stage would cut it there anyway) and counted.
    """
    writer = io.StageWriter(out, "simulate")
    found = {name: _source(cfg, name) for name in INPUT_TABLES}
    for name in ("users", "sessions"):
        if found[name] is None:
            raise io.DataError(
                f"{io.join(cfg.data.source, name)}[.parquet]: no such file or directory; your "
                f"own logs need table '{name}' ({describe(name)})")
    users = io.read_table(found["users"], "users", require_tz=True)
    sessions = io.read_table(found["sessions"], "sessions", require_tz=True)
    if found["impressions"] is None:
        impressions = schema("impressions").empty_table()
    else:
        impressions = io.read_table(found["impressions"], "impressions", allow_empty=True,
                                    require_tz=True)
    known = set(users.column("user_id").to_pylist())
    bad = _unknown_users(sessions, known)
    if len(bad):
        first = int(bad[0])
        raise io.DataError(
            f"{found['sessions']}: {len(bad)} session(s) have a user_id that is not in "
            f"{found['users']} (first: row {first}, user_id "
            f"{sessions.column('user_id')[first].as_py()!r}, session_id "
            f"{sessions.column('session_id')[first].as_py()!r}); add those users (with an "
            f"activity_bucket) or remove their sessions")
    dropped: dict[str, Any] = {}
    truncated: dict[str, Any] = {}
    summaries = sessions.column("summary").to_pylist()
    ids = sessions.column("session_id").to_pylist()
    blank = [i for i, t in enumerate(summaries) if not t.strip()]
    if blank:
        dropped["blank_summaries"] = {"rows": len(blank),
                                      "session_ids": [ids[i] for i in blank[:MANIFEST_EXAMPLES]]}
        keep = np.ones(len(summaries), bool)
        keep[blank] = False
        sessions = sessions.filter(pa.array(keep))
        log.warning("ingest: dropped %d session(s) with a blank summary (listed in the manifest)",
                    len(blank))
    limit = cfg.judge.max_summary_chars
    summaries = sessions.column("summary").to_pylist()
    long = [i for i, t in enumerate(summaries) if len(t) > limit]
    if long:
        ids = sessions.column("session_id").to_pylist()
        truncated["summaries"] = {"rows": len(long), "max_chars": limit,
                                  "longest_chars": max(len(summaries[i]) for i in long),
                                  "session_ids": [ids[i] for i in long[:MANIFEST_EXAMPLES]]}
        sessions = sessions.set_column(sessions.schema.get_field_index("summary"), "summary",
                                       pa.array([t[:limit] for t in summaries], pa.string()))
        log.warning("ingest: cut %d summary(ies) to judge.max_summary_chars=%d", len(long), limit)
    stray = _unknown_users(impressions, known)
    if len(stray):
        dropped["impressions_of_unknown_users"] = {
            "rows": len(stray),
            "user_ids": sorted({impressions.column("user_id")[int(i)].as_py() for i in stray})[:MANIFEST_EXAMPLES]}
        keep = np.ones(impressions.num_rows, bool)
        keep[stray] = False
        impressions = impressions.filter(pa.array(keep))
    rows = {}
    for name, table in (("users", users), ("sessions", sessions), ("impressions", impressions)):
        writer.write_table(name, table)
        rows[name] = table.num_rows
    clicks = int(sum(impressions.column("clicked").to_pylist()))
    return writer.commit(metrics={
        "source": cfg.data.source, **rows, "clicks": clicks,
        "impressions_file": found["impressions"], "dropped": dropped, "truncated": truncated,
    }, node_ids=[node_id()])


def simulate(cfg: Config, out: str) -> dict[str, Any]:
    """Run the simulated world and write its logs (see module docstring); with
    ``data.source`` set to a path, ingest the user's own logs instead."""
    if cfg.data.source != "sim":
        return ingest(cfg, out)
    results = run_shards(cfg)
    envs: list[SimEnv] = [r["env"] for r in results]
    users = [u for env in envs for u in env.users]
    warm = [r["warm"] for r in results]
    logged = [r["logged"] for r in results]
    # Sorted by stable keys, so the files do not depend on how users were sharded.
    by_session = [("user_id", "ascending"), ("session_id", "ascending")]
    sessions = pa.concat_tables([_concat(warm, "sessions"), _concat(logged, "sessions")]).sort_by(by_session)
    truth = pa.concat_tables([_concat(warm, "session_truth"), _concat(logged, "session_truth")]).sort_by(by_session)
    impressions = _concat(logged, "impressions").sort_by(
        [("user_id", "ascending"), ("ts", "ascending"), ("position", "ascending")])
    events = _concat(logged, "events").sort_by([("user_id", "ascending"), ("day", "ascending")])

    counts = {uid: 0 for uid in (u.user_id for u in users)}
    for uid in sessions.column("user_id").to_pylist():
        counts[uid] += 1
    buckets = activity_buckets(np.array([counts[u.user_id] for u in users]), cfg.gating.num_buckets)
    users_table = pa.table({
        "user_id": [u.user_id for u in users],
        "activity_bucket": pa.array(buckets, pa.int32()),
        "profile": [u.profile for u in users],
    })

    writer = io.StageWriter(out, "simulate")
    writer.write_table("users", users_table)
    writer.write_table("sessions", sessions)
    writer.write_table("impressions", impressions)
    stats = world_statistics(envs[0], users, truth, impressions, events, buckets)
    stats["text"] = text_statistics(cfg, sessions, truth)
    write_truth(out, envs, users, truth, events)
    report_md, png = render_report(stats, cfg)
    writer.write_json("sim-stats.json", stats)
    writer.write_bytes("sim-report.md", report_md.encode())
    writer.write_bytes("sim-report.png", png)
    return writer.commit(
        metrics={k: stats[k] for k in ("users", "sessions", "impressions", "logged", "baseline")},
        node_ids=[r["node_id"] for r in results if r["node_id"]] + [node_id()],
    )


# ----------------------------------------------------------------------------- truth


def write_truth(out: str, envs: list[SimEnv], users, truth: pa.Table, events: pa.Table) -> None:
    """Hidden state, apart from the logs (only sim/ and eval/ read it)."""
    base = io.join(out, TRUTH_DIR)
    fs, root = io.resolve(base)
    fs.create_dir(root, recursive=True)
    hidden = pa.table({
        "user_id": [u.user_id for u in users],
        "p_visit": [u.p_visit for u in users],
        "p_self_start": [u.p_self_start for u in users],
        "p_functional": [u.p_functional for u in users],
        "p_sensitive": [u.p_sensitive for u in users],
        "click_bias": [u.click_bias for u in users],
        "position_decay": [u.position_decay for u in users],
        "long_subjects": [[envs[0].world.subjects[s].id for s in u.long_subjects] for u in users],
        "long_weights": [u.long_weights.tolist() for u in users],
        "long_propensity": [u.long_propensity.tolist() for u in users],
    })
    for name, table in (("session_truth", truth), ("users_truth", hidden), ("baseline_events", events)):
        buf = _io.BytesIO()
        pq.write_table(table, buf)
        io.write_bytes(io.join(base, f"{name}.parquet"), buf.getvalue())
    io.write_bytes(io.join(base, "world.pkl"), pickle.dumps(envs))


def load_truth_envs(out: str) -> list[SimEnv]:
    """The world state at the end of the logs (one SimEnv per shard), without encoders."""
    return pickle.loads(io.read_bytes(io.join(out, TRUTH_DIR, "world.pkl")))


# ----------------------------------------------------------------------------- report


def text_statistics(cfg: Config, sessions: pa.Table, truth: pa.Table) -> dict[str, Any]:
    """The summaries next to real chat text (:mod:`icebreaker_ray.sim.textstats`)."""
    t = truth.select(["session_id", "origin", "kind"]).to_pandas().set_index("session_id")
    ids = sessions.column("session_id").to_pylist()
    return textstats.text_comparison(
        sessions.column("summary").to_pylist(), t.loc[ids, "origin"].tolist(),
        t.loc[ids, "kind"].tolist(), encode=TextEncoder(cfg.models.embedder),
        functional_threshold=cfg.gating.functional_threshold, seed=cfg.run.seed,
        text_style=cfg.sim.text_style)


def logged_statistics(impressions: pa.Table) -> dict[str, Any]:
    """What the logging policy logged: impressions, requests (shown lists) and clicks, in
    all and per ranker slice (train-ranker's split by request), train and held-out part."""
    requests = impressions.column("request_id").to_pylist()
    clicked = np.asarray(impressions.column("clicked").to_pylist(), bool)
    slices = log_slice(requests, len(RANKER_SLICES))
    held = ranker_holdout(requests)
    req = np.asarray(requests, object)

    def part(mask: np.ndarray) -> dict[str, int]:
        return {"impressions": int(mask.sum()), "requests": int(len(set(req[mask]))),
                "clicks": int(clicked[mask].sum())}

    every = np.ones(len(requests), bool)
    return {"all": part(every), "slices": {
        name: {"train": part((slices == i) & ~held), "test": part((slices == i) & held)}
        for name, i in RANKER_SLICES.items()}}


def world_statistics(env: SimEnv, users, truth: pa.Table, impressions: pa.Table,
                     events: pa.Table, buckets: np.ndarray) -> dict[str, Any]:
    t = truth.to_pandas().sort_values(["user_id", "day"])
    # A revisit: a session on a subject this user had a session on before.
    t["revisit"] = t.duplicated(["user_id", "subject"])
    by_cat = t.groupby("category").agg(sessions=("subject", "size"), revisits=("revisit", "sum"))
    imp = impressions.to_pandas()
    ev = events.to_pandas()
    names = {c.id: c.name for c in env.world.catalog.categories}
    names[GREETING] = "Greetings (no subject)"
    return {
        "users": len(users),
        "sessions": int(len(t)),
        "impressions": int(len(imp)),
        "sessions_per_user": float(len(t) / max(len(users), 1)),
        "origin_share": {k: float(v) for k, v in t["origin"].value_counts(normalize=True).items()},
        "category_sessions": {names[k]: int(v) for k, v in by_cat["sessions"].items()},
        "category_revisits": {names[k]: int(v) for k, v in by_cat["revisits"].items()},
        "activity_buckets": {int(b): int((buckets == b).sum()) for b in np.unique(buckets)},
        "logged": logged_statistics(impressions),
        "baseline": {
            "ctr": float(imp["clicked"].mean()) if len(imp) else float("nan"),
            "ctr_by_position": {int(k): float(v) for k, v in imp.groupby("position")["clicked"].mean().items()},
            "visits": int(len(ev)),
            "leave_rate": float(1 - ev["started"].mean()) if len(ev) else float("nan"),
            "mean_depth_after_click": float(imp.loc[imp["clicked"], "depth"].mean()) if imp["clicked"].any() else 0.0,
        },
    }


def _logged_rows(logged: dict[str, Any] | None) -> str:
    if not logged:
        return ""
    rows = [("all", logged["all"])] + [(f"{name} slice, {half}", v)
                                       for name, halves in logged["slices"].items()
                                       for half, v in halves.items()]
    return "\n".join(f"| {name} | {v['requests']} | {v['impressions']} | {v['clicks']} |"
                     for name, v in rows)


def render_report(stats: dict[str, Any], cfg: Config) -> tuple[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(stats["category_sessions"], key=lambda c: -stats["category_sessions"][c])
    sess = np.array([stats["category_sessions"][c] for c in cats], float)
    rev = np.array([stats["category_revisits"].get(c, 0) for c in cats], float)
    text = stats.get("text")
    if text:
        fig = plt.figure(figsize=(17, 10))
        grid = fig.add_gridspec(2, 3, width_ratios=[3, 1, 1.2], height_ratios=[5.5, 3.5])
        axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
        _length_histograms(fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1:]), text)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(17, 5.5), gridspec_kw={"width_ratios": [3, 1, 1.2]})
    y = np.arange(len(cats))
    axes[0].barh(y - 0.2, sess / sess.sum(), 0.4, label="all sessions")
    axes[0].barh(y + 0.2, rev / max(rev.sum(), 1), 0.4, label="revisits")
    axes[0].set_yticks(y, cats, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("share")
    axes[0].set_title("Category share: sessions vs revisits")
    axes[0].legend()
    b = stats["activity_buckets"]
    axes[1].bar([str(k) for k in b], list(b.values()), color="tab:green")
    axes[1].set_title("Users per activity bucket")
    axes[1].set_xlabel("bucket (0 = least active)")
    pos = stats["baseline"]["ctr_by_position"]
    axes[2].bar([str(k) for k in pos], [100 * v for v in pos.values()], color="tab:orange")
    axes[2].set_title(f"Baseline CTR by position (overall {100 * stats['baseline']['ctr']:.2f}%)")
    axes[2].set_xlabel("position")
    axes[2].set_ylabel("CTR %")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)

    base = stats["baseline"]
    rows = "\n".join(
        f"| {c} | {int(s)} | {100 * s / sess.sum():.1f}% | {int(r)} | {100 * r / max(rev.sum(), 1):.1f}% |"
        for c, s, r in zip(cats, sess, rev, strict=True)
    )
    origin = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(stats["origin_share"].items(), key=lambda kv: -kv[1]))
    md = f"""# Simulated world report

Seed {cfg.run.seed}; {stats['users']} users over {cfg.sim.num_days} days, the deployed
retrieval baseline logging impressions over the last {cfg.sim.impression_days} days.

![world statistics](sim-report.png)

| figure | value |
|---|---|
| sessions | {stats['sessions']} ({stats['sessions_per_user']:.1f} per user) |
| impressions | {stats['impressions']} |
| baseline CTR | {100 * base['ctr']:.2f}% |
| visits in the logged window | {base['visits']} |
| arriving users who leave without starting a conversation | {100 * base['leave_rate']:.1f}% |
| mean conversation depth after a click | {base['mean_depth_after_click']:.2f} |

Where sessions come from (hidden): {origin}.

Activity buckets (users): {json.dumps(stats['activity_buckets'])}.

## What the logging policy logged

The impressions the utility rankers learn from (train-ranker splits them by request into
disjoint slices and holds out a fifth of each slice's requests):

| part | shown lists | impressions | clicks |
|---|---|---|---|
{_logged_rows(stats.get('logged'))}

| category | sessions | share | revisits | share of revisits |
|---|---|---|---|---|
{rows}
"""
    if text:
        md += "\n" + textstats.markdown(text)
    return md, buf.getvalue()


def _length_histograms(ax_chars, ax_words, text: dict[str, Any]) -> None:
    """Summary lengths of the simulated world and of chitchat, side by side (shares)."""
    sides = [("simulated", text["sim"], "tab:blue")]
    if text.get("chitchat"):
        sides.append(("chitchat (real, cut at 200 chars)", text["chitchat"], "tab:red"))
    for ax, key, bins, unit in ((ax_chars, "char_hist", textstats.CHAR_BINS, "characters"),
                                (ax_words, "word_hist", textstats.WORD_BINS, "words")):
        edges = np.asarray(bins, float)
        width = (edges[1] - edges[0]) / (len(sides) + 0.5)
        for i, (label, side, color) in enumerate(sides):
            counts = np.asarray(side[key], float)
            ax.bar(edges[:-1] + i * width, counts / max(counts.sum(), 1), width, align="edge",
                   label=label, color=color, alpha=0.8)
        ax.set_xlabel(f"summary length, {unit} (last bin: {bins[-1] - (bins[1] - bins[0])}+)")
        ax.set_ylabel("share of summaries")
        ax.set_title(f"Summary length in {unit}")
        ax.legend()
