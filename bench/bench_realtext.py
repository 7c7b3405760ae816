"""Real-text relevance: do the served starters point at what each real user talks about next?

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_realtext.py --users 40 \
        --config configs/local-cpu.yaml --work runs/realtext

Real chat logs (the Chit-Chat Challenge data set, ``icebreaker import-chitchat``'s
conversion: one session per (conversation, sender), the sender's own words), no
impressions and no LLM endpoint, as a new user of this software would bring them:

1. ``--users`` senders with at least ``--min-sessions`` sessions (a stable sample by
   user-id hash, their last ``--max-sessions-per-user``); each history is split in time:
   the last ``--later`` sessions are the target and are never given to the pipeline.
2. The pipeline runs on the earlier sessions alone (``icebreaker pipeline --set
   data.source=WORK/data``: RID, the grounded teacher, SIT, Algorithm 1 on the click-free
   proxy, DPO), then the server's precompute job (``serve/precompute.py``: distiller,
   engine, list selector, the same path a request takes) writes every user's served list.
3. For each user and each list, relevance = the mean over the list's items of the best
   cosine to a later session (:func:`icebreaker_ray.reward.proxy.interest_similarity`),
   under two embedders trained apart: the project's MiniLM and ``wordllama`` (static
   token embeddings, another model family). Lists compared on the same users:
   - **served**: the K starters the server answers with;
   - **generic**: one fixed list for everyone (:data:`GENERIC`), what an empty-chat screen
     without personalization shows;
   - **echo**: the user's own last K earlier summaries, pasted back (not a starter, but
     the ceiling of "talk about what you talked about").
   Printed: mean [95% bootstrap interval] per list, served − generic paired (interval,
   sign-flip p), the share of users whose served list is the more relevant, and how often
   echo beats generic (the ceiling of any list made from the user's own words). Two
   targets: the later sessions as they are, and with their greeting clauses cut
   (greeting-only sessions dropped), since a later "Heyo!" rewards any list that says hello.

``--skip-pipeline`` reuses ``WORK/run`` (only the scoring reruns).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from icebreaker_ray.config import load_config
from icebreaker_ray.data import chitchat, io
from icebreaker_ray.data.schemas import schema
from icebreaker_ray.data.splits import activity_buckets
from icebreaker_ray.eval.metrics import bootstrap_mean, paired_difference
from icebreaker_ray.models import TextEncoder
from icebreaker_ray.reward.proxy import interest_similarity
from icebreaker_ray.rid.noise import is_greeting, strip_greetings

#: The fixed list: questions an app shows anyone, none about the user.
GENERIC = ["What's something you're looking forward to this week?",
           "Have you read or watched anything good lately?",
           "What's a hobby you'd like to pick up?",
           "What's the best thing that happened to you today?"]


def split_in_time(tables: chitchat.ChitchatTables, later: int, num_buckets: int = 4
                  ) -> tuple[pa.Table, pa.Table, dict[str, list[str]]]:
    """(users, earlier sessions, {user: later summaries}); activity buckets recounted on the
    earlier sessions, so nothing of the target leaks into the input."""
    sessions = tables.sessions.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    uids = sessions.column("user_id").to_pylist()
    keep = np.ones(len(uids), bool)
    target: dict[str, list[str]] = {}
    summaries = sessions.column("summary").to_pylist()
    end = len(uids)
    for i in range(len(uids) - 1, -1, -1):  # walk back: the last `later` rows of each user
        if i == len(uids) - 1 or uids[i] != uids[i + 1]:
            end = i + 1
        if end - i <= later:
            keep[i] = False
            target.setdefault(uids[i], []).insert(0, summaries[i])
    earlier = sessions.filter(pa.array(keep))
    counts: dict[str, int] = {}
    for u in earlier.column("user_id").to_pylist():
        counts[u] = counts.get(u, 0) + 1
    ids = tables.users.column("user_id").to_pylist()
    users = pa.table({"user_id": ids,
                      "activity_bucket": pa.array(activity_buckets(np.array([counts.get(u, 0) for u in ids]),
                                                                   num_buckets), pa.int32()),
                      "profile": pa.nulls(len(ids), pa.string())}, schema=schema("users"))
    return users, earlier, target


def list_relevance(embed, items: list[str], target: list[str]) -> float:
    """Mean best cosine of each item to a target summary; NaN for an empty list."""
    if not items or not target:
        return float("nan")
    return float(interest_similarity(embed(items), embed(target)).mean())


class WordLlamaEmbedder:
    """``wordllama``'s l2_supercat model from the files its wheel ships (no download)."""

    def __init__(self) -> None:
        import wordllama
        from wordllama import WordLlama

        self.model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.embed(list(texts), norm=True), np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/local-cpu.yaml")
    ap.add_argument("--work", default="runs/realtext")
    ap.add_argument("--source", default=None, help="chitchat dataset.json or its .whl (default: installed)")
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--min-sessions", type=int, default=8)
    ap.add_argument("--max-sessions-per-user", type=int, default=12)
    ap.add_argument("--later", type=int, default=3, help="last sessions per user held out as the target")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="extra pipeline --set overrides")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.later < 1 or args.min_sessions <= args.later:
        sys.exit("--later must be >= 1 and below --min-sessions (each user keeps an earlier history)")
    work = os.path.abspath(args.work)
    data_dir, run_dir = os.path.join(work, "data"), os.path.join(work, "run")

    tables = chitchat.convert(chitchat.load_conversations(args.source), min_sessions=args.min_sessions,
                              max_users=args.users, max_sessions_per_user=args.max_sessions_per_user)
    users, earlier, target = split_in_time(tables, args.later)
    print(f"{users.num_rows} real users, {earlier.num_rows} earlier sessions as input, "
          f"{sum(map(len, target.values()))} later ones as the target")
    if not args.skip_pipeline:
        io.write_table(users, io.join(data_dir, "users.parquet"), "users")
        io.write_table(earlier, io.join(data_dir, "sessions.parquet"), "sessions")
        cmd = [str(Path(sys.executable).with_name("icebreaker")), "pipeline", "--config", args.config,
               "--out", run_dir, "--set", f"data.source={data_dir}"]
        for s in args.set:
            cmd += ["--set", s]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"pipeline: {time.perf_counter() - t:.0f} s")

    from icebreaker_ray.serve.precompute import PrecomputedLists, precompute

    cfg = load_config(args.config, [f"data.source={data_dir}", *args.set])
    t = time.perf_counter()
    result = precompute(cfg, run_dir)
    print(f"precompute: {result.generated} lists generated in {time.perf_counter() - t:.0f} s")
    store = PrecomputedLists.load(result.path)
    served = {e.user_id: (list(e.starters), list(e.sources)) for e in store.entries.values()}
    history: dict[str, list[str]] = {}
    for u, s in zip(earlier.column("user_id").to_pylist(), earlier.column("summary").to_pylist(), strict=True):
        history.setdefault(u, []).append(s)

    order = sorted(target)
    k = cfg.generation.K
    lists = {"served": [served.get(u, ([], []))[0] for u in order],
             "generic": [GENERIC[:k] for _ in order],
             "echo": [history.get(u, [])[-k:] for u in order]}
    sources = [s for u in order for s in served.get(u, ([], []))[1]]
    embedders = {"MiniLM": TextEncoder(cfg.models.embedder), "wordllama": WordLlamaEmbedder()}
    report: dict = {"users": len(order), "later_sessions_per_user": args.later,
                    "served_items": len(sources),
                    "served_sources": {s: sources.count(s) for s in sorted(set(sources))}, "embedders": {}}
    print(f"\nserved items: {report['served_sources']}; examples:")
    for u in order[:3]:
        print(f"  {u}: earlier {history[u][-1][:70]!r} -> {lists['served'][order.index(u)]}")
    # The later sessions as they are, and without their greetings: on chat logs a later
    # "Heyo!" rewards any list that says hello, which is not what a user talks about next.
    targets = {"later sessions": target,
               "later sessions, greetings cut": {u: [strip_greetings(t) for t in ts if not is_greeting(t)] or ts
                                                 for u, ts in target.items()}}
    print("\n| target | embedder | served | generic | echo (own earlier summaries) | served − generic [95% CI], p "
          "| users served > generic | users served > echo | users echo > generic |\n|---|---|---|---|---|---|---|---|---|")
    for (tname, tgt), (name, embed) in itertools.product(targets.items(), embedders.items()):
        rel = {m: np.array([list_relevance(embed, items, tgt[u]) for u, items in zip(order, ls, strict=True)])
               for m, ls in lists.items()}
        means = {m: bootstrap_mean(v, args.n_boot, seed=0) for m, v in rel.items()}
        diff = paired_difference(rel["generic"], rel["served"], args.n_boot, seed=0)
        ok = np.isfinite(rel["served"])
        beats_generic = float(np.mean(rel["served"][ok] > rel["generic"][ok]))
        beats_echo = float(np.mean(rel["served"][ok] > rel["echo"][ok]))
        # The ceiling of "talk about what you talked about": how often the user's own words win.
        echo_beats_generic = float(np.mean(rel["echo"] > rel["generic"]))
        cell = {m: f"{c.mean:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]" for m, c in means.items()}
        print(f"| {tname} | {name} | {cell['served']} | {cell['generic']} | {cell['echo']} | "
              f"{diff.diff:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}], p = {diff.p_value:.3g} | "
              f"{beats_generic:.0%} of {int(ok.sum())} | {beats_echo:.0%} | {echo_beats_generic:.0%} |")
        report["embedders"][f"{name}, {tname}"] = {"mean": {m: vars(c) for m, c in means.items()},
                                                   "served_minus_generic": vars(diff),
                                                   "share_served_beats_generic": beats_generic,
                                                   "share_served_beats_echo": beats_echo,
                                                   "share_echo_beats_generic": echo_beats_generic}
    if args.json:
        io.write_json(args.json, report)


if __name__ == "__main__":
    main()
