"""Evaluation metrics of ICEBREAKER (paper §3, App. B.1, App. C.1).

Pure functions over numpy arrays / Python lists: no Ray, no models. The Ray
adapters (``eval/ab_test``, ``eval/report``) compute the inputs (ranker scores,
topic labels, simulated event logs) and call these.

Contents
--------
Offline (App. B.1.1)
    :func:`r_user` (eq. 9), :func:`r_score` / :func:`r_score_with_count`
    (eq. 10), :func:`lexical_diversity`, :func:`semantic_diversity`,
    :func:`format_pass_rate`.
RID quality (App. C.1 analogue)
    :func:`auc`, :func:`recall_at_k`, :func:`mean_recall_at_k`,
    :func:`precision_recall_f1`.
Online (App. B.1.2)
    :func:`online_per_user`, :func:`online_metrics` (Active, eq. 11–13).
Statistics for the simulated A/B test (Table 2)
    :class:`LiftResult`, :func:`bootstrap_relative_lift`.
Statistics for the offline comparison (Table 1), same bootstrap and sign-flip test
    :func:`r_user_values`, :func:`r_score_values` (per-user terms of eq. 9, 10),
    :class:`MeanCI`, :func:`bootstrap_mean`, :class:`PairedDiff`, :func:`paired_difference`.

Conventions: a function raises ``ValueError`` on empty input or on inputs of
mismatched length; a quantity that is undefined for valid input (an AUC with a
single class, a CTR with nothing shown) is returned as ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "KEYWORD_TOKEN_PATTERN",
    "LiftResult",
    "PRF",
    "auc",
    "MeanCI",
    "PairedDiff",
    "bootstrap_mean",
    "bootstrap_relative_lift",
    "paired_difference",
    "r_score_values",
    "r_user_values",
    "format_pass_rate",
    "keyword_sets",
    "lexical_diversity",
    "mean_recall_at_k",
    "online_metrics",
    "online_per_user",
    "precision_recall_f1",
    "r_score",
    "r_score_with_count",
    "r_user",
    "recall_at_k",
    "semantic_diversity",
]

# ---------------------------------------------------------------------------
# Offline utility: R-User (eq. 9) and R-Score (eq. 10)
# ---------------------------------------------------------------------------


def _per_user_means(
    gen_scores: Sequence[ArrayLike], base_scores: Sequence[ArrayLike]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return (f̄(G_u), f̄(R_u)) for every user, validating the inputs."""
    if len(gen_scores) == 0:
        raise ValueError("no users: gen_scores is empty")
    if len(gen_scores) != len(base_scores):
        raise ValueError(
            f"length mismatch: {len(gen_scores)} users in gen_scores, "
            f"{len(base_scores)} in base_scores"
        )
    gen_mean = np.empty(len(gen_scores))
    base_mean = np.empty(len(base_scores))
    for i, (g, r) in enumerate(zip(gen_scores, base_scores, strict=True)):
        g_arr = np.asarray(g, dtype=float).ravel()
        r_arr = np.asarray(r, dtype=float).ravel()
        if g_arr.size == 0 or r_arr.size == 0:
            raise ValueError(f"user #{i} has no generated or no baseline scores")
        gen_mean[i] = g_arr.mean()
        base_mean[i] = r_arr.mean()
    return gen_mean, base_mean


def r_user(gen_scores: Sequence[ArrayLike], base_scores: Sequence[ArrayLike]) -> float:
    """R-User, eq. 9: share of users with f̄(G_u) > f̄(R_u) (strict).

    ``gen_scores[u]`` / ``base_scores[u]`` hold the ranker scores f(·) of user
    u's generated starters G_u and baseline candidates R_u; the two may have
    different lengths. A tie counts as *not* improved.

    Raises:
        ValueError: no users, different numbers of users, or a user with an
            empty score list.
    """
    return float(np.mean(r_user_values(gen_scores, base_scores)))


def r_user_values(gen_scores: Sequence[ArrayLike], base_scores: Sequence[ArrayLike]) -> NDArray[np.float64]:
    """Per-user terms of R-User (eq. 9): 1.0 where f̄(G_u) > f̄(R_u), else 0.0; their
    mean is :func:`r_user`, their bootstrap the interval of Table 1."""
    gen_mean, base_mean = _per_user_means(gen_scores, base_scores)
    return (gen_mean > base_mean).astype(float)


def r_score_values(gen_scores: Sequence[ArrayLike], base_scores: Sequence[ArrayLike]) -> NDArray[np.float64]:
    """Per-user terms of R-Score (eq. 10): (f̄(G_u) − f̄(R_u)) / |f̄(R_u)|, ``nan`` for a
    user with a zero baseline (skipped); their ``nanmean`` is :func:`r_score`."""
    gen_mean, base_mean = _per_user_means(gen_scores, base_scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base_mean != 0.0, (gen_mean - base_mean) / np.abs(base_mean), np.nan)


def r_score_with_count(
    gen_scores: Sequence[ArrayLike], base_scores: Sequence[ArrayLike]
) -> tuple[float, int]:
    """R-Score (eq. 10) plus the number of users skipped for a zero baseline.

    Per user the relative lift (f̄(G_u) − f̄(R_u)) / |f̄(R_u)| is averaged over
    users. Zero-baseline policy: a user with f̄(R_u) == 0 has an undefined
    relative lift and is **skipped** (excluded from numerator and |U|); the
    number skipped is returned so callers can report it. If every user is
    skipped the value is ``nan``.

    The paper's f is a click probability (non-negative), where |f̄(R_u)| equals
    f̄(R_u) and this is exactly eq. 10; the absolute value only keeps the sign
    meaningful ("better" = positive) if a ranker emits negative scores.

    Returns:
        (r_score, n_skipped)

    Raises:
        ValueError: as for :func:`r_user`.
    """
    rel = r_score_values(gen_scores, base_scores)
    keep = ~np.isnan(rel)
    n_skipped = int((~keep).sum())
    if not keep.any():
        return math.nan, n_skipped
    return float(rel[keep].mean()), n_skipped


def r_score(gen_scores: Sequence[ArrayLike], base_scores: Sequence[ArrayLike]) -> float:
    """R-Score, eq. 10: mean over users of (f̄(G_u) − f̄(R_u)) / f̄(R_u).

    Users with f̄(R_u) == 0 are skipped (see :func:`r_score_with_count`, which
    also returns how many were skipped); ``nan`` if all users are skipped.

    Raises:
        ValueError: no users, different numbers of users, or a user with an
            empty score list.
    """
    return r_score_with_count(gen_scores, base_scores)[0]


# ---------------------------------------------------------------------------
# Offline diversity (App. B.1.1)
# ---------------------------------------------------------------------------

#: Tokens are runs of 2+ letters (no digits or underscores), unicode-aware.
KEYWORD_TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"


def keyword_sets(
    lists: Sequence[Sequence[str]],
    *,
    top_k: int | None = 3,
    min_weight: float = 0.0,
    corpus: Iterable[str] | None = None,
) -> list[set[str]]:
    """TF-IDF keywords of each starter list (the sets behind lexical diversity).

    Definition (deterministic):

    1. Fit ``TfidfVectorizer(lowercase=True, stop_words="english",
       token_pattern=KEYWORD_TOKEN_PATTERN)`` (sklearn defaults otherwise:
       smooth idf, raw tf, l2 norm) on ``corpus``, one document per text;
       default corpus = every starter of every list.
    2. Each starter is one document. Its keywords are its terms with TF-IDF
       weight > 0 and >= ``min_weight`` (l2-normalised weights of that
       starter), of which at most the ``top_k`` heaviest are kept
       (``top_k=None``: no cap). Ties are broken alphabetically.
    3. A list's keyword set is the union over its starters.

    Terms absent from the corpus vocabulary are ignored. An empty list gives an
    empty set.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    lists = [list(starters) for starters in lists]
    docs = [s for starters in lists for s in starters]
    fit_docs = docs if corpus is None else list(corpus)
    vectorizer = TfidfVectorizer(
        lowercase=True, stop_words="english", token_pattern=KEYWORD_TOKEN_PATTERN
    )
    try:
        vectorizer.fit(fit_docs)
    except ValueError:  # empty corpus or only stop words: no vocabulary at all
        return [set() for _ in lists]
    if not docs:
        return [set() for _ in lists]
    vocab = vectorizer.get_feature_names_out()
    weights = vectorizer.transform(docs).tocsr()

    per_doc: list[list[str]] = []
    for row in range(weights.shape[0]):
        lo, hi = weights.indptr[row], weights.indptr[row + 1]
        cols, vals = weights.indices[lo:hi], weights.data[lo:hi]
        # sort by weight descending, then term ascending (deterministic ties)
        ranked = sorted(
            (-float(v), str(vocab[c]))
            for c, v in zip(cols, vals, strict=True)
            if v > 0.0 and v >= min_weight
        )
        if top_k is not None:
            ranked = ranked[:top_k]
        per_doc.append([term for _, term in ranked])

    out: list[set[str]] = []
    pos = 0
    for starters in lists:
        terms: set[str] = set()
        for kws in per_doc[pos : pos + len(starters)]:
            terms.update(kws)
        pos += len(starters)
        out.append(terms)
    return out


def lexical_diversity(
    lists: Sequence[Sequence[str]],
    top_k: int | None = 3,
    min_weight: float = 0.0,
    *,
    corpus: Iterable[str] | None = None,
) -> float:
    """Lexical diversity (App. B.1.1): unique high-weight TF-IDF keywords per list.

    Mean over users of ``len(keyword_sets(...)[u])``: for every starter its
    top-``top_k`` TF-IDF terms with weight >= ``min_weight`` (see
    :func:`keyword_sets` for the exact definition), counted once per list.

    Raises:
        ValueError: ``lists`` is empty.
    """
    if len(lists) == 0:
        raise ValueError("no users: lists is empty")
    sets = keyword_sets(lists, top_k=top_k, min_weight=min_weight, corpus=corpus)
    return float(np.mean([len(s) for s in sets]))


def semantic_diversity(list_categories: Sequence[Sequence[Hashable]]) -> float:
    """Semantic diversity (App. B.1.1): mean number of distinct categories per list.

    ``list_categories[u]`` holds the topic-classifier label of each starter in
    user u's list (the classifier lives elsewhere). An empty list counts 0.

    Raises:
        ValueError: no lists.
    """
    if len(list_categories) == 0:
        raise ValueError("no users: list_categories is empty")
    return float(np.mean([len(set(cats)) for cats in list_categories]))


def format_pass_rate(flags: ArrayLike) -> float:
    """Share of lists that pass the format check (parse, K unique starters
    within limits, nothing sensitive); ``flags`` is one bool per list.

    Raises:
        ValueError: no flags.
    """
    arr = np.asarray(flags, dtype=bool).ravel()
    if arr.size == 0:
        raise ValueError("no flags")
    return float(arr.mean())


# ---------------------------------------------------------------------------
# RID quality (App. C.1 analogue)
# ---------------------------------------------------------------------------


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (``nan`` if only one class).

    Thin wrapper of ``sklearn.metrics.roc_auc_score``; ties count one half.

    Raises:
        ValueError: different lengths.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"length mismatch: {y.size} labels, {s.size} scores")
    if np.unique(y).size < 2:
        return math.nan
    return float(roc_auc_score(y, s))


def recall_at_k(relevant: set[Hashable], ranked: Sequence[Hashable], k: int) -> float:
    """Recall@k = |relevant ∩ ranked[:k]| / |relevant| (``nan`` if nothing relevant).

    Duplicates in ``ranked`` are counted once.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not relevant:
        return math.nan
    hits = set(relevant) & set(list(ranked)[:k])
    return len(hits) / len(relevant)


def mean_recall_at_k(
    relevant_by_user: Mapping[Hashable, set[Hashable]],
    ranked_by_user: Mapping[Hashable, Sequence[Hashable]],
    k: int,
) -> float:
    """Mean over users of :func:`recall_at_k`.

    Users with an empty relevant set are skipped (recall is undefined); a user
    missing from ``ranked_by_user`` has recall 0. ``nan`` if no user has a
    relevant item.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    values = [
        recall_at_k(rel, ranked_by_user.get(user, ()), k)
        for user, rel in relevant_by_user.items()
        if rel
    ]
    return float(np.mean(values)) if values else math.nan


class PRF(NamedTuple):
    """Precision, recall and F1 of the positive class."""

    precision: float
    recall: float
    f1: float


def precision_recall_f1(y_true: ArrayLike, y_pred: ArrayLike, pos_label: Any = 1) -> PRF:
    """Binary precision / recall / F1 of ``pos_label`` (e.g. the revisit judge).

    Labels may be bool, 0/1 or strings (pass ``pos_label="MATCH"``). A ratio
    with a zero denominator is 0.0 (sklearn's ``zero_division=0``).

    Raises:
        ValueError: different lengths or empty input.
    """
    t = np.asarray(y_true).ravel() == pos_label
    p = np.asarray(y_pred).ravel() == pos_label
    if t.shape != p.shape:
        raise ValueError(f"length mismatch: {t.size} true labels, {p.size} predictions")
    if t.size == 0:
        raise ValueError("empty input")
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision, recall, f1)


# ---------------------------------------------------------------------------
# Online metrics (App. B.1.2, eq. 11-13)
# ---------------------------------------------------------------------------

_EVENT_COLUMNS = ("user_id", "day", "shown", "clicked", "sessions", "started")


def _column(events: Any, name: str) -> NDArray[Any]:
    """Column ``name`` of a pyarrow Table, pandas DataFrame or dict of arrays."""
    if hasattr(events, "column_names") and hasattr(events, "column"):  # pyarrow
        if name not in events.column_names:
            raise ValueError(f"events has no column {name!r}")
        return np.asarray(events.column(name).to_numpy(zero_copy_only=False))
    try:
        col = events[name]
    except (KeyError, IndexError) as exc:
        raise ValueError(f"events has no column {name!r}") from exc
    return np.asarray(col)


def online_per_user(
    events: Any, *, horizon: tuple[int, int] | None = None, window: int = 7
) -> dict[str, NDArray[Any]]:
    """Per-user aggregates of an event log, the units of the online metrics.

    ``events`` has one row per (user, day) with columns user_id, day (int),
    shown, clicked, sessions (ints) and started (bool); duplicate (user, day)
    rows are summed (``started``: any). ``horizon = (first_day, end_day)``
    (end exclusive) is the evaluation period; rows outside it are dropped.
    Default: ``(min(day), max(day) + 1)`` of the table — pass the same horizon
    to both A/B arms.

    Returned arrays (aligned, sorted by user_id; users = distinct user_id in the
    period, i.e. users who arrived):

    - ``user_id``
    - ``active_days``: mean over the period's consecutive ``window``-day windows
      (starting at first_day) of the number of distinct days with
      sessions > 0. Only complete windows are used; trailing days that do not
      fill a window are ignored for this metric. If the period is shorter than
      one window, the single (short) window is the whole period.
    - ``sessions``, ``shown``, ``clicked``: totals over the period.
    - ``started``: bool, start(u) > 0 of eq. 13 = ``started`` on any day **or**
      clicked > 0 on any day (entering a conversation via a starter click is a
      start, App. B.1.2).

    Raises:
        ValueError: a missing column, different column lengths, or no rows in
            the period.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    cols = {name: _column(events, name) for name in _EVENT_COLUMNS}
    n = {c.shape[0] for c in cols.values()}
    if len(n) != 1:
        raise ValueError("event columns have different lengths")
    day = cols["day"].astype(np.int64)
    if day.size == 0:
        raise ValueError("no events")
    first, end = (int(day.min()), int(day.max()) + 1) if horizon is None else horizon
    if end <= first:
        raise ValueError(f"empty horizon {horizon}")
    keep = (day >= first) & (day < end)
    if not keep.any():
        raise ValueError(f"no events in horizon [{first}, {end})")

    users, inv = np.unique(cols["user_id"][keep], return_inverse=True)
    day = day[keep]
    n_users = users.size

    def total(name: str) -> NDArray[np.float64]:
        return np.bincount(inv, weights=cols[name][keep].astype(float), minlength=n_users)

    sessions, shown, clicked = total("sessions"), total("shown"), total("clicked")
    started = (total("started") > 0) | (clicked > 0)

    n_windows = max((end - first) // window, 1)
    last = first + n_windows * window if end - first >= window else end
    act = (cols["sessions"][keep].astype(float) > 0) & (day < last)
    # distinct active (user, day) pairs, so duplicate rows count once
    active_pairs = np.unique(np.stack([inv[act], day[act]]), axis=1)
    active_days = np.bincount(active_pairs[0], minlength=n_users) / n_windows

    return {
        "user_id": users,
        "active_days": active_days.astype(float),
        "sessions": sessions,
        "shown": shown,
        "clicked": clicked,
        "started": started,
    }


def online_metrics(
    events: Any, *, horizon: tuple[int, int] | None = None, window: int = 7
) -> dict[str, float]:
    """Online metrics of one A/B arm (App. B.1.2).

    With U = users with at least one row in the evaluation period (see
    :func:`online_per_user` for aggregation, horizon and windows):

    - ``active_days`` (Active): mean over users of active days (sessions > 0)
      per complete 7-day window, averaged over consecutive windows.
    - ``avg_sessions`` (Avg.S., eq. 11): Σ_u |S_u| / |U|.
    - ``ctr`` (eq. 12): N_clicked / N_shown over all users (``nan`` if nothing
      was shown).
    - ``csr`` (eq. 13): |{u : start(u) > 0}| / |U|, start = ``started`` or a
      starter click.
    """
    pu = online_per_user(events, horizon=horizon, window=window)
    n_shown = pu["shown"].sum()
    return {
        "active_days": float(pu["active_days"].mean()),
        "avg_sessions": float(pu["sessions"].mean()),
        "ctr": float(pu["clicked"].sum() / n_shown) if n_shown > 0 else math.nan,
        "csr": float(pu["started"].mean()),
    }


# ---------------------------------------------------------------------------
# Bootstrap lifts for the simulated A/B test (Table 2)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LiftResult:
    """Relative lift of arm B over arm A with a 95% CI and a two-sided p-value.

    ``n_users``: users per arm when paired, total users when unpaired.
    """

    lift: float
    ci_low: float
    ci_high: float
    p_value: float
    n_users: int


_CHUNK_ELEMENTS = 2_000_000  # bound memory of (replicates × users) index blocks


def _chunk_rows(total: int, n: int) -> Iterable[int]:
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < total:
        step = min(rows, total - done)
        yield step
        done += step


def _as_1d(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values")
    return arr


def bootstrap_relative_lift(
    a_per_user: ArrayLike,
    b_per_user: ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
    ratio_of_sums: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    paired: bool = True,
    n_perm: int | None = None,
    confidence: float = 0.95,
) -> LiftResult:
    """Relative lift M(B)/M(A) − 1 with a user-level bootstrap CI and p-value.

    Metric M of an arm:

    - ``ratio_of_sums=None``: M = mean of the per-user values (Active, Avg.S.,
      CSR with 0/1 values).
    - ``ratio_of_sums=(a_den, b_den)``: a ratio metric; ``a_per_user`` /
      ``b_per_user`` are per-user numerators (e.g. clicks) and ``a_den`` /
      ``b_den`` per-user denominators (e.g. shown), M = Σ num / Σ den (CTR,
      eq. 12). Users are resampled as units, so the ratio is recomputed per
      replicate.

    CI: percentile bootstrap over users, ``n_boot`` replicates from
    ``numpy.random.default_rng(seed)``. ``paired=True`` (default; our A/B runs
    the same users under both arms with the same seeds) draws one index set per
    replicate and uses it for both arms, requiring equal lengths with user i in
    the same position in both arms. ``paired=False`` resamples each arm
    independently. Replicates with M(A) = 0 give an undefined lift and are
    ignored (``nanpercentile``).

    p-value: two-sided Monte Carlo permutation test of H0 "the arm label does
    not matter" with statistic T = M(B) − M(A). Paired: each replicate swaps
    user i's A and B values (numerator and denominator together) with
    probability 1/2 (sign-flip test); unpaired: the arm labels of the pooled
    users are shuffled. p = (1 + #{|T*| >= |T_obs|}) / (1 + n_perm),
    ``n_perm`` defaults to ``n_boot``; the smallest attainable p is
    1 / (1 + n_perm).

    Raises:
        ValueError: empty / non-finite input, unequal lengths when paired, or
            numerator/denominator arrays of different lengths.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n_perm = n_boot if n_perm is None else n_perm
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")

    a_num = _as_1d(a_per_user, "a_per_user")
    b_num = _as_1d(b_per_user, "b_per_user")
    if ratio_of_sums is None:
        a_den, b_den = np.ones_like(a_num), np.ones_like(b_num)
    else:
        a_den = _as_1d(ratio_of_sums[0], "a denominator")
        b_den = _as_1d(ratio_of_sums[1], "b denominator")
        if a_den.shape != a_num.shape or b_den.shape != b_num.shape:
            raise ValueError("numerator and denominator arrays differ in length")
    if paired and a_num.shape != b_num.shape:
        raise ValueError(
            f"paired bootstrap needs the same users in both arms: {a_num.size} vs {b_num.size}"
        )

    ratio = _ratio
    m_a = ratio(np.array(a_num.sum()), np.array(a_den.sum()))
    m_b = ratio(np.array(b_num.sum()), np.array(b_den.sum()))
    lift = float(ratio(m_b, m_a) - 1.0) if m_a != 0 else math.nan
    t_obs = float(m_b - m_a)

    rng = np.random.default_rng(seed)
    na, nb = a_num.size, b_num.size

    # --- bootstrap CI -----------------------------------------------------
    boot: list[NDArray[np.float64]] = []
    for rows in _chunk_rows(n_boot, max(na, nb)):
        ia = rng.integers(0, na, size=(rows, na))
        ib = ia if paired else rng.integers(0, nb, size=(rows, nb))
        ma = ratio(a_num[ia].sum(axis=1), a_den[ia].sum(axis=1))
        mb = ratio(b_num[ib].sum(axis=1), b_den[ib].sum(axis=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            rep = np.where(ma != 0, mb / np.where(ma != 0, ma, 1.0) - 1.0, np.nan)
        boot.append(rep)
    reps = np.concatenate(boot)
    ci_low, ci_high = (math.nan, math.nan) if np.isnan(lift) else _percentile_ci(reps, confidence)

    # --- permutation p-value ----------------------------------------------
    if paired:
        p_value = _sign_flip_p(a_num, a_den, b_num, b_den, t_obs, n_perm, rng)
        return LiftResult(lift=lift, ci_low=ci_low, ci_high=ci_high, p_value=float(p_value),
                          n_users=int(na))
    # unpaired: shuffle the arm labels of the pooled users
    exceed = 0
    tol = 1e-12 * max(1.0, abs(t_obs))  # count exact ties as extreme
    pool_num = np.concatenate([a_num, b_num])
    pool_den = np.concatenate([a_den, b_den])
    for rows in _chunk_rows(n_perm, na + nb):
        perm = rng.permuted(np.tile(np.arange(na + nb), (rows, 1)), axis=1)
        pa, pb = perm[:, :na], perm[:, na:]
        ma = ratio(pool_num[pa].sum(axis=1), pool_den[pa].sum(axis=1))
        mb = ratio(pool_num[pb].sum(axis=1), pool_den[pb].sum(axis=1))
        t = mb - ma
        exceed += int(np.sum(np.abs(t) >= abs(t_obs) - tol))
    p_value = (1 + exceed) / (1 + n_perm)
    return LiftResult(lift=lift, ci_low=ci_low, ci_high=ci_high, p_value=float(p_value),
                      n_users=int(na + nb))


def _ratio(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def _percentile_ci(reps: NDArray[np.float64], confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (``nan`` replicates ignored)."""
    if np.all(np.isnan(reps)):
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.nanpercentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _sign_flip_p(a_num: NDArray[np.float64], a_den: NDArray[np.float64], b_num: NDArray[np.float64],
                 b_den: NDArray[np.float64], t_obs: float, n_perm: int,
                 rng: np.random.Generator) -> float:
    """Two-sided paired permutation p-value of T = Σb_num/Σb_den − Σa_num/Σa_den: each
    replicate swaps user i's A and B values with probability 1/2 (sign flip);
    p = (1 + #{|T*| >= |T_obs|}) / (1 + n_perm), exact ties counted as extreme."""
    exceed = 0
    tol = 1e-12 * max(1.0, abs(t_obs))
    d_num, d_den = b_num - a_num, b_den - a_den
    sa_num, sa_den = a_num.sum(), a_den.sum()
    sb_num, sb_den = b_num.sum(), b_den.sum()
    for rows in _chunk_rows(n_perm, a_num.size):
        swap = rng.integers(0, 2, size=(rows, a_num.size)).astype(float)
        # swapping user i moves d_i from B's totals into A's
        ma = _ratio(sa_num + swap @ d_num, sa_den + swap @ d_den)
        mb = _ratio(sb_num - swap @ d_num, sb_den - swap @ d_den)
        exceed += int(np.sum(np.abs(mb - ma) >= abs(t_obs) - tol))
    return (1 + exceed) / (1 + n_perm)


# ---------------------------------------------------------------------------
# Intervals and paired tests for the offline comparison (Table 1)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanCI:
    """A mean over users with its 95% (``confidence``) percentile bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float
    n_users: int


@dataclass(frozen=True)
class PairedDiff:
    """Mean of B − A over the same users: bootstrap interval and sign-flip p-value."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_users: int


def _finite_users(*arrays: ArrayLike) -> list[NDArray[np.float64]]:
    """The arrays restricted to the users (positions) where every one of them is finite:
    a user skipped by one per-user term (R-Score's zero baseline) drops out of all."""
    arrs = [np.asarray(a, dtype=float).ravel() for a in arrays]
    if len({a.size for a in arrs}) != 1:
        raise ValueError(f"length mismatch: {[a.size for a in arrs]} users")
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrs])
    return [a[keep] for a in arrs]


def bootstrap_mean(values: ArrayLike, n_boot: int = 2000, seed: int = 0,
                   confidence: float = 0.95) -> MeanCI:
    """Mean of per-user ``values`` (``nan`` entries = skipped users) with a percentile
    bootstrap interval: ``n_boot`` resamples of the users with replacement from
    ``numpy.random.default_rng(seed)``. All ``nan``: every figure ``nan``, 0 users."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    (x,) = _finite_users(values)
    if x.size == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    reps = np.concatenate([x[rng.integers(0, x.size, size=(rows, x.size))].mean(axis=1)
                           for rows in _chunk_rows(n_boot, x.size)])
    low, high = _percentile_ci(reps, confidence)
    return MeanCI(float(x.mean()), low, high, int(x.size))


def paired_difference(a_per_user: ArrayLike, b_per_user: ArrayLike, n_boot: int = 2000,
                      seed: int = 0, *, n_perm: int | None = None,
                      confidence: float = 0.95) -> PairedDiff:
    """B − A on the same users (user i in position i of both): the mean difference, its
    paired bootstrap interval (:func:`bootstrap_mean` of the per-user differences) and the
    two-sided sign-flip permutation p-value of :func:`bootstrap_relative_lift` (``n_perm``
    defaults to ``n_boot``). Users where either value is ``nan`` are left out of both.
    Identical arms give diff 0, an interval [0, 0] and p = 1."""
    a, b = _finite_users(a_per_user, b_per_user)
    if a.size == 0:
        return PairedDiff(math.nan, math.nan, math.nan, math.nan, 0)
    ci = bootstrap_mean(b - a, n_boot, seed, confidence)
    ones = np.ones_like(a)
    p = _sign_flip_p(a, ones, b, ones, float(b.mean() - a.mean()), n_boot if n_perm is None else n_perm,
                     np.random.default_rng([seed, 1]))
    return PairedDiff(ci.mean, ci.ci_low, ci.ci_high, float(p), int(a.size))
