"""The evaluation report: markdown tables shaped like the paper's and the figures.

    write_report(writer, results, cfg)   # -> report.md, topics.png, frontier.png, ab-lifts.png, rounds.png

``results`` is the dict the ``evaluate`` stage writes to ``metrics.json``; every number
in the report comes from it.
"""

from __future__ import annotations

import io as _io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from icebreaker_ray.config import Config
from icebreaker_ray.data import io

FIGURES = ("topics.png", "frontier.png", "ab-lifts.png", "rounds.png")
REQUIRED_SECTIONS = ("Table 1", "Table 2", "Table 6", "Table 7", "Table 9", "Self-reinforced rounds",
                     "Examples", "Stage times")


def _f(x: Any, digits: int = 3, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}f}"


def _lift(row: Mapping[str, Any] | None) -> str:
    if not row:
        return "–"
    return (f"{100 * row['lift']:+.1f}% [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}] "
            f"p={row['p_value']:.3f}")


def _ci(row: Mapping[str, Any], key: str, intervals: Mapping[str, Mapping[str, Any]] | None) -> str:
    """A Table 1 cell: the figure, then its 95% bootstrap interval when there is one."""
    ci = (intervals or {}).get(key)
    if not ci or ci.get("ci_low") is None or math.isnan(ci["ci_low"]):
        return _f(row[key], pct=True)
    return f"{_f(row[key], pct=True)} [{100 * ci['ci_low']:.1f}, {100 * ci['ci_high']:.1f}]"


def _quality_table(rows: Mapping[str, Mapping[str, Any]], first: str,
                   intervals: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> str:
    head = (f"| {first} | R-User (f) | R-Score (f) | R-User (oracle) | R-Score (oracle) | f − oracle gap "
            "| oracle P(click) | lexical div. | semantic div. | format pass | invented | full K lists |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, r in rows.items():
        if "skipped" in r:
            lines.append(f"| {name} | {r['skipped']} |" + " |" * 11)
            continue
        ci = (intervals or {}).get(name)
        lines.append(
            f"| {name} | {_ci(r, 'r_user_f', ci)} | {_ci(r, 'r_score_f', ci)} "
            f"| {_ci(r, 'r_user_oracle', ci)} | {_ci(r, 'r_score_oracle', ci)} "
            f"| {_f(r['hacking_gap'], pct=True)} | {_ci(r, 'mean_oracle_ctr', ci)} "
            f"| {_f(r['lexical_diversity'], 2)} "
            f"| {_f(r['semantic_diversity'], 2)} | {_f(r.get('format_pass_rate'), pct=True)} "
            f"| {_f(r.get('invented_rate'), pct=True)} | {_f(r['full_lists'], pct=True)} |")
    return "\n".join(lines)


_TABLE1_FIGURES = (("r_user_f", "R-User (f)"), ("r_score_f", "R-Score (f)"),
                   ("r_user_oracle", "R-User (oracle)"), ("r_score_oracle", "R-Score (oracle)"),
                   ("mean_oracle_ctr", "oracle P(click)"))


def _paired_table(stats: Mapping[str, Any] | None) -> str:
    """Paired tests of Table 1 (eval.stage.table1_statistics): difference in points."""
    if not stats or not stats.get("paired"):
        return ""
    head = ("| comparison | " + " | ".join(label for _, label in _TABLE1_FIGURES) + " |\n|---|"
            + "---|" * len(_TABLE1_FIGURES))
    rows = [head]
    for name, figures in stats["paired"].items():
        cells = []
        for key, _ in _TABLE1_FIGURES:
            d = figures.get(key, {})
            if d.get("diff") is None or math.isnan(d["diff"]):
                cells.append("–")
                continue
            cells.append(f"{100 * d['diff']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] "
                         f"p={d['p_value']:.3f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return ("Paired tests over the same graded users: mean per-user difference (points), its 95%\n"
            f"paired bootstrap interval ({stats['n_boot']} resamples of the users) and a two-sided\n"
            "sign-flip permutation p-value (R-Score: users with a zero baseline left out).\n\n"
            + "\n".join(rows) + "\n\n")


def _ab_table(table2: Mapping[str, Mapping[str, Any]]) -> str:
    from icebreaker_ray.eval.stage import AB_METRICS

    head = "| arm | " + " | ".join(label for _, label in AB_METRICS) + " |\n|---|" + "---|" * len(AB_METRICS)
    values = [head]
    for name, row in table2.items():
        m = row["metrics"]
        values.append(f"| {name} | {_f(m.get('active_days'), 2)} | {_f(m.get('avg_sessions'), 2)} "
                      f"| {_f(m.get('ctr'), pct=True)} | {_f(m.get('csr'), pct=True)} |")
    lifts = ["| vs baseline | " + " | ".join(label for _, label in AB_METRICS) + " |\n|---|" + "---|" * len(AB_METRICS)]
    for name, row in table2.items():
        if "lifts" in row:
            lifts.append(f"| {name} | " + " | ".join(_lift(row["lifts"].get(k)) for k, _ in AB_METRICS) + " |")
    return "\n".join(values) + "\n\nRelative lift, 95% bootstrap interval, permutation p-value:\n\n" + "\n".join(lifts)


def _rounds_table(rounds: list[Mapping[str, Any]]) -> str:
    if not rounds:
        return "No self-reinforced rounds ran."
    lines = ["| round | users | CTR of the deployed generator | CTR of the baseline (other users) "
             "| refit ranker click AUC | pairs mined | DPO loss first → last | format pass |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        dpo = r.get("dpo", {})
        lines.append(
            f"| {r['round']} | {r['users']} | {_f(r.get('deployed_ctr'), pct=True)} "
            f"| {_f(r.get('baseline_ctr'), pct=True)} | {_f(r.get('ranker', {}).get('click_auc'))} "
            f"| {r.get('mining', {}).get('pairs', '–')} | {_f(dpo.get('first_loss'))} → {_f(dpo.get('last_loss'))} "
            f"| {_f(r.get('format_pass_rate'), pct=True)} |")
    return "\n".join(lines)


def _examples(examples: list[Mapping[str, Any]]) -> str:
    blocks = []
    for ex in examples:
        def bullets(items):
            return "<br>".join(str(x).replace("|", "/") for x in items) or "–"

        blocks.append(f"| {ex['user_id']} | {bullets(ex['summaries'])} | {bullets(ex['trigger_interests'])} "
                      f"| {bullets(ex['baseline'])} | {bullets(ex['generated'])} |")
    if not blocks:
        return "No generated lists to show."
    return ("| user | recent summaries | trigger interests I* | baseline starters (R_u) | ICEBREAKER starters |\n"
            "|---|---|---|---|---|\n" + "\n".join(blocks))


def _pairs_section(agreement: Mapping[str, Mapping[str, Mapping[str, float]]] | None) -> str:
    """Preference pairs graded by the oracle (eval.stage.pairs_vs_oracle)."""
    if not agreement:
        return ""
    rows = [f"| {source} | {kind} | {v['pairs']} | {_f(v['chosen_wins'], pct=True)} | "
            f"{_f(v['chosen_p_click'], pct=True)} | {_f(v['rejected_p_click'], pct=True)} |"
            for source, kinds in agreement.items()
            for kind, v in sorted(kinds.items(), key=lambda kv: kv[0] == "all")
            if v.get("pairs") and not (kind == "all" and len(kinds) == 2)]  # "all" = the one type
    return ("## Preference pairs vs the oracle\n\n"
            "Does the chosen list of each DPO pair really get more clicks? The oracle's probability\n"
            "that the user clicks any starter of the chosen and of the rejected list; \"chosen wins\"\n"
            "is the share of pairs where the chosen list is the likelier one (50% = no signal).\n\n"
            "| pairs | negative type | n | chosen wins | chosen P(click) | rejected P(click) |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n")


def _interests_section(noise: Mapping[str, Any] | None) -> str:
    """How much of I* is noise by the hidden truth (eval.rid_quality.interest_noise)."""
    if not noise:
        return ""
    rows = [f"| {label} | {v['summaries']} | {_f(v['functional'], pct=True)} | {_f(v['one_off'], pct=True)} "
            f"| {_f(v.get('greeting', math.nan), pct=True)} | {_f(v['sensitive'], pct=True)} "
            f"| {_f(v['functional_or_one_off'], pct=True)} |"
            for label, v in (("all summaries", noise["all_summaries"]),
                             ("trigger interests I*", noise["trigger_interests"]))]
    return ("## Trigger interests: noise by the hidden truth\n\n"
            f"{noise['interests_per_user']:.2f} trigger interests per user. RID drops greetings,\n"
            "functional tasks and one-off subjects before eq. 4 (`rid/noise.py`); a one-off is a\n"
            "regular subject the user had in a single session.\n\n"
            "| | summaries | functional | one-off | greeting | sensitive | functional or one-off |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n")


def _ranker_section(ranker: Mapping[str, Mapping[str, Any]] | None) -> str:
    """Held-out click AUC of the util and eval rankers vs popularity (train-ranker)."""
    if not ranker:
        return ""
    rows = [f"| {name} | {v.get('kind', 'mlp')} | {v.get('members', 1)} | {v.get('train_clicks')} / "
            f"{v.get('train_impressions')} | {v.get('test_clicks')} / {v.get('test_impressions')} | "
            f"{_f(v.get('click_auc'))} | {_f(v.get('click_auc_popularity'))} | "
            f"{_f(v.get('click_auc_mlp'))} | {_f(v.get('click_auc_features'))} |"
            for name, v in ranker.items()]
    return ("## Utility rankers: held-out click AUC\n\n"
            "Each ranker is trained on its own slice of the logged impressions (by request) and\n"
            "measured on a held-out fifth of that slice's requests. `util` guides list search and\n"
            "DPO (a bootstrap ensemble of `members`); `eval` is the grader f. Popularity is the\n"
            "smoothed CTR of the exact starter text in the training requests. Both ranker kinds\n"
            "are fitted every run; `kind` is the one used.\n\n"
            "| ranker | kind | members | train clicks / impressions | test clicks / impressions | "
            "click AUC | popularity AUC | MLP AUC | features AUC |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n")
def _graded_users(results: Mapping[str, Any]) -> str:
    c = results["config"]
    n = c.get("graded_users", next(iter(results["table1"].values()), {}).get("users"))
    cap = c.get("max_users")
    return (f"**{n} held-out users graded** per method"
            + (f" (`eval.max_users` = {cap})." if cap else " (all held-out users with trigger interests)."))


def _promoted_text(promotion: Mapping[str, Any] | None) -> str:
    """Which generator is ICEBREAKER, from the iterate stage's round gate."""
    if not promotion:
        return ""
    r = promotion.get("promoted_round")
    name = "round 0 (the `dpo` stage's model)" if r == 0 else f"round {r}"
    return (f"ICEBREAKER is the promoted generator: **{name}**. {promotion.get('reason', '')}\n\n")


def _gate_table(rounds: list[Mapping[str, Any]]) -> str:
    """The round gate of each self-reinforced round (search.iterate): candidate vs incumbent."""
    gated = [r for r in rounds if r.get("gate")]
    if not gated:
        return ""
    lines = ["Round gate (validation users, never graded here and never mined in a round): a round is",
             "promoted only if it is not worse than the generator it would replace on format pass rate",
             "and on relevance to the user's trigger interests (eval-free: neither f nor the oracle).", "",
             "| round | validation users | format pass: candidate vs incumbent "
             "| relevance: candidate vs incumbent | promoted | reason |",
             "|---|---|---|---|---|---|"]
    for r in gated:
        g = r["gate"]
        cand, inc = g.get("candidate", {}), g.get("incumbent", {})
        lines.append(
            f"| {r['round']} | {g.get('validation_users', '–')} "
            f"| {_f(cand.get('format_pass_rate'), pct=True)} vs {_f(inc.get('format_pass_rate'), pct=True)} "
            f"| {_f(cand.get('relevance'))} vs {_f(inc.get('relevance'))} "
            f"| {'yes' if g.get('promoted') else 'no'} | {g.get('reason', '')} |")
    return "\n".join(lines) + "\n"


def render_markdown(results: Mapping[str, Any], cfg: Config) -> str:
    c = results["config"]
    t1 = results["table1"]
    stages = results.get("stages", {})
    stage_rows = "\n".join(f"| {k} | {v:.0f} |" for k, v in stages.items())
    total = sum(stages.values())
    t9 = results.get("table9")
    return f"""# ICEBREAKER evaluation report

Run `{cfg.run.name}`, seed {cfg.run.seed}. Held-out users: a {100 * c['holdout_fraction']:.0f}% slice never
mined, trained on or shown a generated list before this test; K = {c['K']};
{c['num_candidates']} sampled list(s) per user and method, the first that passes the filter is
the user's list. "f" is the evaluation ranker (trained on a slice of logs the optimized
ranker never saw); "oracle" is the simulator's true click probability of the list as shown.
R-User = share of users whose list beats the retrieval baseline's; R-Score = mean relative
gain over it (eq. 9, 10); a mean of per-user ratios, so a few users with a tiny baseline
score move it a lot. "Oracle P(click)" is the mean true probability that the user clicks
any starter of their list: the plainest utility figure. The f − oracle gap is how much the
learned grader over-rates a method (reward hacking shows up as a large positive gap).
"Invented" is the share of all parsed starters the filter rejected because a word was
neither ordinary English nor in the texts the model was prompted with (no shown starter has
one).

## Table 1: offline comparison (held-out users)

{_graded_users(results)} Utility figures with a 95% bootstrap interval over users in brackets.

{_quality_table(t1, "method", (results.get("table1_stats") or {}).get("intervals"))}

{_paired_table(results.get("table1_stats"))}{_promoted_text(results.get("promotion"))}

![utility-diversity frontier](frontier.png)

## Table 2: simulated online A/B test ({c['ab_days']} days, same users and random streams per arm)

{_ab_table(results['table2']) if results['table2'] else
 "Not run: the A/B test needs the simulated world (`data.source: sim`)."}

![A/B lifts](ab-lifts.png)

## Table 6: distillation strategy (final generator, different prompt inputs)

{_quality_table(results['table6'], "interests in the prompt")}

## Table 7: generator along the rounds (same users and prompts)

{_quality_table(results['table7'], "generator")}

![per-round curves](rounds.png)

## Table 9: negative sampling (DPO from SFT on one negative type vs all)

{_quality_table(t9, "pairs") if t9 else "Not run (eval.negative_ablation is false)."}

## Self-reinforced rounds

{_rounds_table(results.get('rounds', []))}

{_gate_table(results.get('rounds', []))}

{_pairs_section(results.get('pairs_vs_oracle'))}{_ranker_section(results.get('ranker'))}\
{_interests_section(results.get('interest_noise'))}## Topic distribution (Fig. 3 analogue)

From raw summaries to trigger interests to generated starters, by the topic classifier
(train accuracy on catalog phrasing {_f(results.get('topic_classifier_train_accuracy'), pct=True)}).

![topic distribution](topics.png)

## Examples

{_examples(results.get('examples', []))}

## Stage times

| stage | seconds |
|---|---|
{stage_rows}
| total | {total:.0f} |
"""


# ----------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def topics_figure(topics: Mapping[str, Mapping[str, float]]) -> bytes:
    import matplotlib.pyplot as plt

    cats = sorted({c for shares in topics.values() for c in shares},
                  key=lambda c: -topics.get("summaries", {}).get(c, 0.0))
    fig, ax = plt.subplots(figsize=(11, 6))
    y = np.arange(len(cats))
    width = 0.8 / max(len(topics), 1)
    for i, (label, shares) in enumerate(topics.items()):
        ax.barh(y + i * width, [shares.get(c, 0.0) for c in cats], width, label=label)
    ax.set_yticks(y + width * (len(topics) - 1) / 2, cats, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share")
    ax.set_title("Topics: raw summaries → trigger interests → generated starters")
    ax.legend()
    return _png(fig)


def frontier_figure(results: Mapping[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    groups = [("Table 1", results["table1"], "o"), ("rounds", results["table7"], "s"),
              ("distillation", results["table6"], "^")]
    if results.get("table9"):
        groups.append(("negatives", results["table9"], "D"))
    for ax, key, title in ((axes[0], "r_score_oracle", "oracle"), (axes[1], "r_score_f", "ranker f")):
        for group, rows, marker in groups:
            pts = [(name, r) for name, r in rows.items() if "skipped" not in r]
            ax.scatter([r["semantic_diversity"] for _, r in pts], [100 * r[key] for _, r in pts],
                       marker=marker, label=group, s=50)
            for name, r in pts:
                ax.annotate(name, (r["semantic_diversity"], 100 * r[key]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("semantic diversity (distinct categories per list)")
        ax.set_ylabel(f"R-Score under the {title} (%)")
        ax.set_title(f"Utility vs diversity ({title})")
    axes[0].legend(fontsize=8)
    return _png(fig)


def ab_figure(table2: Mapping[str, Mapping[str, Any]]) -> bytes:
    import matplotlib.pyplot as plt

    from icebreaker_ray.eval.stage import AB_METRICS

    arms = [name for name, row in table2.items() if "lifts" in row]
    fig, axes = plt.subplots(1, len(AB_METRICS), figsize=(14, 4), sharey=False)
    for ax, (key, label) in zip(axes, AB_METRICS, strict=True):
        if not arms:
            ax.text(0.5, 0.5, "no A/B test", ha="center", va="center")
            continue
        lifts = [table2[a]["lifts"][key] for a in arms]
        mid = np.array([100 * x["lift"] for x in lifts])
        err = np.array([[100 * (x["lift"] - x["ci_low"]) for x in lifts],
                        [100 * (x["ci_high"] - x["lift"]) for x in lifts]])
        ax.errorbar(np.arange(len(arms)), mid, yerr=np.nan_to_num(err), fmt="o", capsize=4)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(np.arange(len(arms)), arms, rotation=30, ha="right", fontsize=8)
        ax.set_title(label)
        ax.set_ylabel("lift vs baseline (%)")
    return _png(fig)


def rounds_figure(table7: Mapping[str, Mapping[str, Any]]) -> bytes:
    import matplotlib.pyplot as plt

    labels = list(table7)
    x = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, name in (("r_score_oracle", "R-Score (oracle)"), ("r_score_f", "R-Score (f)")):
        axes[0].plot(x, [100 * table7[k].get(key, np.nan) for k in labels], "o-", label=name)
    axes[0].set_ylabel("%")
    axes[0].legend()
    axes[0].set_title("Utility along the rounds")
    for key, name in (("lexical_diversity", "lexical"), ("semantic_diversity", "semantic")):
        axes[1].plot(x, [table7[k].get(key, np.nan) for k in labels], "o-", label=name)
    axes[1].legend()
    axes[1].set_title("Diversity along the rounds")
    for ax in axes:
        ax.set_xticks(x, labels)
    return _png(fig)


def write_report(writer: io.StageWriter, results: Mapping[str, Any], cfg: Config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    writer.write_bytes("report.md", render_markdown(results, cfg).encode())
    writer.write_bytes("topics.png", topics_figure(results["topics"]))
    writer.write_bytes("frontier.png", frontier_figure(results))
    writer.write_bytes("ab-lifts.png", ab_figure(results["table2"]))
    writer.write_bytes("rounds.png", rounds_figure(results["table7"]))
