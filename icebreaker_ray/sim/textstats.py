"""How the simulated world's summaries compare with real chat text (the simulate report).

The real text is the Chit-Chat Challenge data set (PyPI ``chitchat-dataset``) as
:mod:`icebreaker_ray.data.chitchat` turns it into sessions (one per conversation and
sender, the sender's own utterances, cut at its default 200 characters). Measured on both:

* length of a summary in characters and words (median, p10, p90, and histograms);
* vocabulary size and type-token ratio on equal token budgets (the first ``N`` tokens of
  the summaries in a seeded random order, ``N`` the same for both: a ratio of types to
  tokens falls as the sample grows, so unequal samples would not compare);
* the share of greeting / one-word sessions: for the simulated world by its hidden truth
  (origin ``greeting``) and by the rule of :func:`icebreaker_ray.rid.noise.is_greeting`,
  for chitchat by that rule only;
* the share of functional sessions: for the simulated world by its hidden truth and by the
  rule of :mod:`icebreaker_ray.rid.noise` (cosine to the functional prototypes >=
  ``gating.functional_threshold``, on a seeded sample), for chitchat by that rule only --
  a rule, not truth; the simulated world's two figures show how far the rule is off.

Without the chitchat package the comparison says why and holds the simulated side only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from icebreaker_ray.rid import noise

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
#: Token budget of the vocabulary comparison (smaller when a side has fewer tokens).
VOCAB_TOKENS = 20_000
#: Summaries embedded per side for the functional rule.
FUNCTIONAL_SAMPLE = 1_000
#: Example summaries shown per side in the report.
EXAMPLES = 10
CHAR_BINS = tuple(range(0, 260, 10))  # the last bin holds everything from 240 on
WORD_BINS = tuple(range(0, 52, 2))


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; inner apostrophes kept).

    >>> words("Hi! I'm 27, is it OK?")
    ['hi', "i'm", '27', 'is', 'it', 'ok']
    """
    return _WORD.findall(text.casefold())


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"median": float("nan"), "p10": float("nan"), "p90": float("nan"), "mean": float("nan")}
    p10, med, p90 = np.percentile(values, [10, 50, 90])
    return {"median": float(med), "p10": float(p10), "p90": float(p90), "mean": float(values.mean())}


def _histogram(values: np.ndarray, bins: Sequence[int]) -> list[int]:
    clipped = np.minimum(values, bins[-1] - 1)
    return np.histogram(clipped, bins=np.asarray(bins))[0].astype(int).tolist()


def length_stats(texts: Sequence[str]) -> dict[str, Any]:
    """Length of each text in characters and words: quantiles and histograms."""
    chars = np.array([len(t) for t in texts], float)
    n_words = np.array([len(words(t)) for t in texts], float)
    return {"summaries": len(texts), "chars": _quantiles(chars), "words": _quantiles(n_words),
            "char_hist": _histogram(chars, CHAR_BINS), "word_hist": _histogram(n_words, WORD_BINS)}


def vocabulary(texts: Sequence[str], n_tokens: int, seed: int) -> dict[str, Any]:
    """Distinct words among the first ``n_tokens`` tokens of ``texts`` in a seeded order."""
    order = np.random.default_rng(seed).permutation(len(texts))
    tokens: list[str] = []
    for i in order:
        tokens += words(texts[int(i)])
        if len(tokens) >= n_tokens:
            break
    tokens = tokens[:n_tokens]
    types = len(set(tokens))
    return {"tokens": len(tokens), "types": types, "ttr": types / max(len(tokens), 1)}


def functional_rule_share(texts: Sequence[str], encode: Callable[[list[str]], np.ndarray],
                          threshold: float, sample: int, seed: int) -> dict[str, Any]:
    """Share of a seeded sample of ``texts`` that rid/noise.py's functional rule flags."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(texts), size=min(sample, len(texts)), replace=False)
    chosen = [texts[int(i)] for i in pick]
    if not chosen:
        return {"sample": 0, "share": float("nan")}
    emb = np.asarray(encode(chosen), np.float32)
    protos = noise.prototype_embeddings(encode)
    flagged = (emb @ protos.T).max(axis=1) >= threshold
    return {"sample": len(chosen), "share": float(flagged.mean())}


def _examples(texts: Sequence[str], seed: int, k: int = EXAMPLES) -> list[str]:
    rng = np.random.default_rng(seed)
    return [texts[int(i)] for i in rng.choice(len(texts), size=min(k, len(texts)), replace=False)]


def chitchat_summaries() -> tuple[list[str] | None, str | None]:
    """The chitchat sessions' summaries (``data/chitchat.py``, default settings), or
    (None, why not)."""
    try:
        from icebreaker_ray.data import chitchat

        tables = chitchat.convert(chitchat.load_conversations())
    except Exception as exc:  # not installed, or an unreadable file: the report says so
        return None, f"{type(exc).__name__}: {exc}"
    return tables.sessions.column("summary").to_pylist(), None


def text_comparison(summaries: Sequence[str], origin: Sequence[str], kind: Sequence[str], *,
                    encode: Callable[[list[str]], np.ndarray] | None, functional_threshold: float,
                    seed: int, text_style: str,
                    chitchat: tuple[list[str] | None, str | None] | None = None) -> dict[str, Any]:
    """The report's comparison (module docstring). ``origin``/``kind`` are the simulated
    sessions' hidden truth, aligned with ``summaries``; ``encode`` (L2-normalized embeddings)
    None skips the functional rule."""
    real, why = chitchat if chitchat is not None else chitchat_summaries()
    summaries = list(summaries)
    origin, kind = np.asarray(origin), np.asarray(kind)
    sim: dict[str, Any] = {
        **length_stats(summaries),
        "greeting_truth": float((origin == "greeting").mean()) if len(origin) else float("nan"),
        "greeting_rule": float(np.mean([noise.is_greeting(t) for t in summaries])) if summaries else float("nan"),
        "functional_truth": float((kind == "functional").mean()) if len(kind) else float("nan"),
        "examples": _examples(summaries, seed),
    }
    out: dict[str, Any] = {"text_style": text_style, "sim": sim, "chitchat": None,
                           "chitchat_missing": why}
    budget = VOCAB_TOKENS
    if real is not None:
        budget = min(budget, sum(len(words(t)) for t in summaries), sum(len(words(t)) for t in real))
        out["chitchat"] = {
            **length_stats(real),
            "greeting_rule": float(np.mean([noise.is_greeting(t) for t in real])) if real else float("nan"),
            "vocabulary": vocabulary(real, budget, seed),
            "examples": _examples(real, seed),
        }
    else:
        budget = min(budget, sum(len(words(t)) for t in summaries))
    sim["vocabulary"] = vocabulary(summaries, budget, seed)
    if encode is not None:
        sim["functional_rule"] = functional_rule_share(summaries, encode, functional_threshold,
                                                       FUNCTIONAL_SAMPLE, seed)
        if real is not None:
            out["chitchat"]["functional_rule"] = functional_rule_share(
                real, encode, functional_threshold, FUNCTIONAL_SAMPLE, seed)
    out["functional_threshold"] = functional_threshold
    return out


# ----------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _spread(q: dict[str, float]) -> str:
    return f"{q['median']:.0f} ({q['p10']:.0f}–{q['p90']:.0f})"


def markdown(text: dict[str, Any]) -> str:
    """The report section for :func:`text_comparison`'s result."""
    sim, real = text["sim"], text["chitchat"]
    thr = text["functional_threshold"]
    head = ("## Summary text vs real chat text\n\n"
            f"This world's summaries are written in the `{text['text_style']}` style "
            "(`sim.text_style`).")
    if real is None:
        head += (" The comparison with real chat text needs the `chitchat-dataset` package, "
                 f"which could not be read here ({text['chitchat_missing']}); the simulated "
                 "side alone:")
    else:
        head += (" Real text: the Chit-Chat Challenge data set (`chitchat-dataset`) as "
                 "`icebreaker import-chitchat` converts it: one session per conversation and "
                 "sender, the sender's own utterances cut at 200 characters, so its lengths "
                 "pile up at 200.")
    r = real or {}

    def col(key: str, fmt) -> str:
        return fmt(r[key]) if key in r else "n/a"

    def fn(side: dict[str, Any]) -> str:
        f = side.get("functional_rule")
        return f"{_pct(f['share'])} of {f['sample']}" if f else "not measured"

    sv, rv = sim["vocabulary"], r.get("vocabulary")
    rows = [
        ("summaries", f"{sim['summaries']}", col("summaries", str)),
        ("characters: median (p10–p90)", _spread(sim["chars"]), col("chars", _spread)),
        ("words: median (p10–p90)", _spread(sim["words"]), col("words", _spread)),
        (f"vocabulary in the first {sv['tokens']:,} tokens (random order)", f"{sv['types']:,}",
         f"{rv['types']:,}" if rv else "n/a"),
        ("type-token ratio (same budget)", f"{sv['ttr']:.3f}", f"{rv['ttr']:.3f}" if rv else "n/a"),
        ("greeting / one-word sessions, hidden truth", _pct(sim["greeting_truth"]), "(no truth)"),
        ("greeting / one-word sessions, rule `noise.is_greeting`", _pct(sim["greeting_rule"]),
         col("greeting_rule", _pct)),
        ("functional sessions, hidden truth", _pct(sim["functional_truth"]), "(no truth)"),
        (f"functional sessions, rule (prototype cosine >= {thr}; a sample)", fn(sim), fn(r) if r else "n/a"),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    out = [head, "", "| | simulated | chitchat |", "|---|---|---|", table, "",
           "The chitchat shares are what rid/noise.py's rules say, not truth; next to the "
           "simulated world's truth they show how far the rules are off on text they were "
           "not tuned on.", "",
           "Ten summaries of each, drawn at random:", "",
           "| simulated | chitchat |", "|---|---|"]
    real_examples = r.get("examples", [])
    for i, s in enumerate(sim["examples"]):
        c = real_examples[i] if i < len(real_examples) else ""
        out.append(f"| {_cell(s)} | {_cell(c)} |")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
