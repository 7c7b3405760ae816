"""The rule filter applied to every starter list anywhere in the system.

Table 4 (App. B.2.1) asks the teacher for starters that obey a length limit, a
count, "no medical topics" and "no sensitive, negative, or invasive topics", without
repeating each other. A model does not always obey, so every list — teacher output
for the SIT corpus (§2.3.1), generator samples for list search and PMA (§2.3.2,
Algorithm 1 line 1), and whatever the server is about to show — goes through
:func:`filter_starters` / :class:`SafetyFilter`:

1. junk: empty, no letters, URLs, e-mails, phone numbers, leftover format tags;
2. length: ``min_chars <= len <= max_chars`` (64 for English, vs Table 4's 20 Chinese
   characters);
3. question form: ends with "?" or starts with a request verb ("Recommend ...");
4. sensitive topics, twice: a keyword regex, and an embedding classifier (cosine to
   :data:`SENSITIVE_PROTOTYPES` >= ``sensitive_threshold``);
4b. invented entities (when the caller passes ``grounding``, the texts the starters were
   written from: the user's interests): every word must be ordinary English (Zipf
   frequency >= ``vocab_min_zipf`` in ``wordfreq``'s English list) or appear in the
   grounding texts, so "How do I handle FXM in SMAPI?" written for a user who never
   mentioned either is rejected (App. D's hallucination cases);
5. duplicates: exact (case/space/punctuation-insensitive) and near-duplicates
   (embedding cosine >= ``near_dup_threshold``), keeping the first;
6. at most ``k`` kept, in the original order; the rest are ``over_k``.

Generic starters are *not* rejected here: telling generic from specific is the
ranker's job (eq. 7). The embedding function is injected (production:
all-MiniLM-L6-v2) so tests can use a deterministic fake.

>>> import numpy as np
>>> def embed(texts):  # a toy embedder: one-hot of the first letter
...     v = np.zeros((len(texts), 26)); v[np.arange(len(texts)), [ord(t[0].lower()) % 26 for t in texts]] = 1
...     return v
>>> r = filter_starters(["Best ramen in Osaka?", "best  ramen in osaka ?", "Hi"], embed,
...                     FilterParams(k=4, sensitive_threshold=1.01))
>>> r.kept, dict(r.counts)
(['Best ramen in Osaka?'], {'duplicate': 1, 'too_short': 1})
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from icebreaker_ray.isg.prompts import FORMAT_TAG_RE, STARTER_SEP

if TYPE_CHECKING:
    from icebreaker_ray.config import Config

#: ``embed(texts) -> (len(texts), d)`` array of L2-normalized rows.
EmbedFn = Callable[[Sequence[str]], np.ndarray]

#: Reasons a starter can be rejected, in the order they are checked.
REASONS = (
    "junk",
    "too_long",
    "too_short",
    "not_question",
    "sensitive_keyword",
    "invented_entity",
    "duplicate",
    "sensitive_semantic",
    "near_duplicate",
    "over_k",
)

# -- defaults ---------------------------------------------------------------------------
# Tuned with all-MiniLM-L6-v2 on hand-written probes that are not prototypes: 100
# keyword-free sensitive questions and 244 ordinary interest starters (with hard
# neighbours: budgeting, credit cards, sleep, therapy, courtroom dramas, poker).
# Max cosine to a prototype >= 0.45 rejects 75/100 sensitive probes (31/46 on the two
# sets written after the prototypes were fixed) and 2/244 ordinary starters ("How can
# I lower my phone bill?" 0.452, "How do I bet on myself and start a side business?"
# 0.556). Ordinary starters score 0.20 median, 0.42 at the 99th percentile. At 0.42:
# 82/100 and the same 2 false positives with no margin; at 0.50: 59/100, 1 false
# positive; at 0.60: 34/100. The keyword regex runs first and catches explicit ones.
DEFAULT_SENSITIVE_THRESHOLD = 0.45
DEFAULT_NEAR_DUP_THRESHOLD = 0.9
# See "grounding" below for how 2.5 was chosen.
DEFAULT_VOCAB_MIN_ZIPF = 2.5


@dataclass(frozen=True)
class FilterParams:
    """Rule-filter settings. ``k`` is the target list length K (Algorithm 1)."""

    k: int
    max_chars: int = 64
    min_chars: int = 8
    near_dup_threshold: float = DEFAULT_NEAR_DUP_THRESHOLD
    require_question_form: bool = True
    sensitive_threshold: float = DEFAULT_SENSITIVE_THRESHOLD
    # Words rarer than this (Zipf scale: 3 = once per million words) must come from the
    # grounding texts; 0 turns the rule off.
    vocab_min_zipf: float = DEFAULT_VOCAB_MIN_ZIPF

    @classmethod
    def from_config(cls, cfg: Config, k: int) -> FilterParams:
        """The ``filter`` section of a config, for lists of ``k`` starters."""
        f = cfg.filter
        return cls(k=k, max_chars=f.max_chars, min_chars=f.min_chars,
                   near_dup_threshold=f.near_dup_threshold,
                   sensitive_threshold=f.sensitive_threshold, vocab_min_zipf=f.vocab_min_zipf)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 1 <= self.min_chars <= self.max_chars:
            raise ValueError(
                f"need 1 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}"
            )
        if not -1.0 <= self.near_dup_threshold <= 1.0:
            raise ValueError(
                f"near_dup_threshold must be in [-1, 1], got {self.near_dup_threshold}"
            )


@dataclass
class FilterResult:
    """What survived (``kept``, at most k, original order) and why the rest did not."""

    kept: list[str]
    rejected: list[tuple[str, str]]
    counts: Counter[str] = field(default_factory=Counter)
    k: int = 0

    @property
    def complete(self) -> bool:
        """True when the list has exactly K starters."""
        return len(self.kept) == self.k


# -- question form ----------------------------------------------------------------------

#: Imperative request verbs that make a starter a request rather than a question
#: ("Recommend some popular anime openings in 2025." — Table 3).
REQUEST_VERBS = frozenset(
    """
    analyze analyse brainstorm break build calculate check choose compare create
    debug decode define demonstrate describe design discuss draft estimate evaluate
    explain explore find give guess guide help identify imagine introduce list make
    map name outline pick plan predict quiz rank rate recommend review share show
    sketch solve suggest summarize summarise teach tell translate walk write
    """.split()
)
_FIRST_WORD_RE = re.compile(r"[A-Za-z']+")
_TRAILING_CLOSERS = " \t\"'”’»)]}*_~.!"


def is_question_form(text: str) -> bool:
    """True if ``text`` ends with "?" or starts with a request verb (optionally "Please").

    >>> is_question_form("Explain the Rust borrow checker simply"), is_question_form("Cats.")
    (True, False)
    """
    if not isinstance(text, str):
        return False
    stripped = text.strip()
    if stripped.rstrip(_TRAILING_CLOSERS).endswith(("?", "？")) or stripped.endswith(("?", "？")):
        return True
    words = _FIRST_WORD_RE.findall(stripped[:40].lower())
    if words and words[0] == "please":
        words = words[1:]
    return bool(words) and words[0] in REQUEST_VERBS


# -- junk ---------------------------------------------------------------------------------

# Explicit links only: a bare brand like "Booking.com" or "ASP.NET" is allowed.
_URL_RE = re.compile(r"(?:https?://|www\.)\S+|\b[a-z0-9-]+\.[a-z]{2,6}/\S*", re.IGNORECASE)
_EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_PHONE_RE = re.compile(
    r"(?:\+\d{1,3}[\s.-]?)?\(?\d{2,4}\)?[\s.-]\d{3,4}[\s.-]\d{3,4}\b|\b\d{10,}\b"
)
# Chat special tokens (<|im_end|>), closing tags and common markup; not "vector<int>".
_LEFTOVER_RE = re.compile(
    r"<\|[^<>|]{0,40}\|>|</\s*[A-Za-z][\w-]{0,20}\s*>"
    r"|<\s*(?:br|p|div|span|html|answer|question|output|assistant|user|system|starters?"
    r"|suggestions?)\s*/?>",
    re.IGNORECASE,
)


def _is_junk(text: str) -> bool:
    if not text:
        return True
    letters = sum(ch.isalpha() for ch in text)
    visible = sum(not ch.isspace() for ch in text)
    if letters == 0 or letters < 0.4 * visible:
        return True
    if any(ord(ch) < 32 or ch == "\ufffd" for ch in text):
        return True
    if STARTER_SEP in text or FORMAT_TAG_RE.search(text) or _LEFTOVER_RE.search(text):
        return True
    return bool(_URL_RE.search(text) or _EMAIL_RE.search(text) or _PHONE_RE.search(text))


# -- sensitive topics ----------------------------------------------------------------------

#: Keyword patterns for medical / mental-health / financial-distress / legal / gambling
#: topics (Table 4 rules 3 and 9). Word boundaries are added around each; the few
#: look-arounds keep ordinary interests ("technical debt", "the Great Depression",
#: "Arrested Development") allowed.
SENSITIVE_KEYWORDS = (
    # medical
    r"symptoms?",
    r"diagnos(?:is|es|ed|e)",
    r"medications?",
    r"prescriptions?",
    r"dosages?",
    r"doses?",
    r"overdos(?:e|es|ed|ing)",
    r"pains?",
    r"painful",
    r"illness(?:es)?",
    r"diseases?",
    r"infections?",
    r"tumou?rs?",
    r"cancer",
    r"chemotherapy",
    r"antibiotics?",
    r"antidepressants?",
    r"opioids?",
    r"painkillers?",
    r"rash(?:es)?",
    r"fever",
    r"sexually transmitted",
    r"hiv",
    r"eating disorders?",
    r"anorexia",
    r"bulimia",
    # mental-health crises
    r"(?<!great )depression",
    r"depressed",
    r"suicid(?:e|al)",
    r"self[- ]harm(?:ing)?",
    r"kill (?:myself|himself|herself|themselves)",
    r"panic attacks?",
    r"anxiety disorders?",
    r"addiction",
    r"rehab",
    # financial distress
    r"(?<!technical )(?<!tech )debts?",
    r"bankrupt(?:cy|cies)?",
    r"loan defaults?",
    r"defaulted",
    r"foreclosures?",
    r"evictions?",
    r"evicted",
    r"payday loans?",
    r"debt collectors?",
    r"collection agenc(?:y|ies)",
    # legal trouble
    r"lawsuits?",
    r"sued",
    r"arrest(?:ed)?(?! development)",
    r"criminal record",
    r"divorce lawyers?",
    r"custody battle",
    r"dui",
    # gambling
    r"gambl(?:e|ing|er)",
    r"sports betting",
    r"betting odds",
)
SENSITIVE_KEYWORD_RE = re.compile(r"\b(?:" + "|".join(SENSITIVE_KEYWORDS) + r")\b", re.IGNORECASE)

#: Prototype sentences for the semantic classifier: a starter whose embedding has
#: cosine >= ``sensitive_threshold`` to any of them is rejected. Varied phrasings on
#: purpose, many without the keywords above, so the two checks complement each other.
SENSITIVE_PROTOTYPES = (
    # medical symptoms
    "Why does my chest hurt and feel heavy when I lie down?",
    "I've had a high fever and a pounding headache for days",
    "I found a hard lump on my body, is it serious?",
    "I feel dizzy, my heart is racing and I can't breathe properly",
    "There is blood when I cough or go to the toilet",
    "My child has a fever and won't stop vomiting",
    "My arm keeps going numb and my vision is blurry",
    # medication
    "How many sleeping pills would be too many to take at once?",
    "Is it dangerous to mix my prescription pills with alcohol?",
    "How can I get strong painkillers without a doctor's prescription?",
    "Can I change the dose of my medicine on my own?",
    # mental-health crises
    "I want to end my life and don't know who to talk to",
    "I keep hurting myself on purpose when I'm upset",
    "Everyone would be better off if I were gone",
    "I feel worthless and empty and haven't left bed in weeks",
    "I hear voices telling me to do things",
    "I've stopped eating because I hate my body",
    # debts and money trouble
    "I can't afford even the minimum payments on my maxed-out credit cards",
    "Debt collectors keep calling me about money I owe",
    "The bank is going to repossess my car because I'm behind on payments",
    "How do I keep my lender from finding out I'm behind on payments?",
    "I can't pay rent and my landlord is going to evict me",
    # legal trouble
    "I was arrested by the police, what happens to me now?",
    "I'm being sued and got a court summons",
    "How do I get criminal charges against me dropped?",
    "My ex is fighting me in court for custody of our kids",
    "Someone is blackmailing me with private photos",
    # gambling and addiction
    "I keep chasing my casino losses and have lost everything",
    "I can't stop betting money I don't have",
    "I'm hiding my drinking and drug use from my family",
    # abuse, withdrawal, poisoning
    "My partner hits me and I'm scared to go home",
    "I get the shakes and sweats whenever I try to stop drinking",
    "My kid swallowed something poisonous, what do I do?",
    "A mole on my skin changed color and started bleeding",
)


# -- grounding (invented entities) ------------------------------------------------------
# A word is grounded when it is ordinary English or the user's own. "Ordinary" is a Zipf
# frequency (log10 of occurrences per billion words) from wordfreq's English list, which
# is built from web, subtitle, news and social-media text, so "podcast", "wifi", "anime"
# and "playlist" are in it (a dictionary such as GCIDE has none of these). The threshold
# is a trade: at 2.5 "sourdough" (2.78), "MCU" (2.98) and "Coldplay" (3.05) pass without
# grounding and "FXM" (1.12), "SMAPI" (0), "jujutsu" (1.99) and "Kubernetes" (2.25) need
# the user to have written them.

_WORD_RE = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
_POSSESSIVE_RE = re.compile(r"['\u2019]s$")
_SUFFIXES = ("s", "es", "ies", "ers", "er", "ing", "ed", "ly")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``, possessive 's dropped (letters only; hyphens and
    digits split words).

    >>> words("Which of FX's FX-6 tracks?")
    ['which', 'of', 'fx', 'fx', 'tracks']
    """
    return [_POSSESSIVE_RE.sub("", w.casefold()) for w in _WORD_RE.findall(text)]


def _stems(word: str) -> set[str]:
    """``word`` and its crude stems ("cosplayers" -> cosplayer, cosplay), for matching a
    starter's word against the grounding texts' words."""
    out = {word}
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            out.add(stem + "y" if suffix == "ies" else stem)
    return out


def grounding_vocabulary(texts: Iterable[str]) -> frozenset[str]:
    """Every word of ``texts`` with its stems."""
    return frozenset(stem for text in texts for w in words(text) for stem in _stems(w))


@lru_cache(maxsize=262_144)
def word_zipf(word: str) -> float:
    """Zipf frequency of a lower-cased word in English (0 when unseen)."""
    from wordfreq import zipf_frequency

    return float(zipf_frequency(word, "en"))


def invented_words(text: str, vocabulary: frozenset[str], min_zipf: float) -> list[str]:
    """Words of ``text`` that are neither ordinary English (Zipf >= ``min_zipf``) nor in
    ``vocabulary`` (from :func:`grounding_vocabulary`)."""
    return [w for w in words(text)
            if word_zipf(w) < min_zipf and not (_stems(w) & vocabulary)]


def _as_unit_rows(x: np.ndarray, n: int) -> np.ndarray:
    """Validate an embed() result and re-normalize its rows (cheap; guards bad embedders)."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"embed() must return a ({n}, d) array, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def _normalize_ws(text: str) -> str:
    return " ".join(text.split())


def _dedupe_key(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.casefold())


def _rule_reason(text: str, params: FilterParams,
                 grounded: frozenset[str] | None = None) -> str | None:
    """The first embedding-free rule ``text`` breaks, or None. ``grounded``: the words of
    the grounding texts (None: no grounding rule)."""
    if _is_junk(text):
        return "junk"
    if len(text) > params.max_chars:
        return "too_long"
    if len(text) < params.min_chars:
        return "too_short"
    if params.require_question_form and not is_question_form(text):
        return "not_question"
    if SENSITIVE_KEYWORD_RE.search(text):
        return "sensitive_keyword"
    if grounded is not None and params.vocab_min_zipf > 0 and invented_words(
            text, grounded, params.vocab_min_zipf):
        return "invented_entity"
    return None


class SafetyFilter:
    """The rule filter bound to one embedder; prototype embeddings are computed once.

    >>> sf = SafetyFilter(embed, FilterParams(k=4))          # doctest: +SKIP
    >>> sf.filter(["Best index funds for a beginner?"]).kept  # doctest: +SKIP
    ['Best index funds for a beginner?']
    """

    def __init__(self, embed: EmbedFn, params: FilterParams) -> None:
        if not callable(embed):
            raise TypeError("embed must be a callable texts -> (n, d) array")
        self.embed = embed
        self.params = params
        self._prototypes: np.ndarray | None = None

    @property
    def prototype_embeddings(self) -> np.ndarray:
        """Embeddings of :data:`SENSITIVE_PROTOTYPES` (computed on first use, then cached)."""
        if self._prototypes is None:
            self._prototypes = _as_unit_rows(
                self.embed(list(SENSITIVE_PROTOTYPES)), len(SENSITIVE_PROTOTYPES)
            )
        return self._prototypes

    def sensitive_scores(self, texts: Sequence[str]) -> np.ndarray:
        """Max cosine of each text to the sensitive prototypes (the semantic classifier)."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        emb = _as_unit_rows(self.embed(list(texts)), len(texts))
        return (emb @ self.prototype_embeddings.T).max(axis=1)

    @staticmethod
    def embedded_text(starter: str) -> str:
        """The form of ``starter`` that :meth:`filter` embeds (whitespace normalized), so a
        caller with a caching embedder can embed a request's texts in one batch first."""
        return _normalize_ws(starter)

    def is_safe(self, text: str) -> bool:
        """True if a single text passes every rule except the list-level ones (dup, k)."""
        if not isinstance(text, str):
            return False
        text = _normalize_ws(text)
        if _rule_reason(text, self.params) is not None:
            return False
        return bool(self.sensitive_scores([text])[0] < self.params.sensitive_threshold)

    def filter(self, starters: Sequence[str] | None,
               grounding: Sequence[str] | None = None, k: int | None = None) -> FilterResult:
        """Filter one starter list; see the module docstring for the rules and their order.

        ``grounding``: the texts the starters were written from (a user's interests, or
        the summaries a baseline was prompted with); given, starters with invented words
        are rejected. None (e.g. the server's catalog cold-start list) skips that rule.
        ``k``: the list length for this call (default ``params.k``; a server answers any K).
        """
        p = self.params
        k = p.k if k is None else k
        grounded = None if grounding is None else grounding_vocabulary(grounding)
        result = FilterResult(kept=[], rejected=[], counts=Counter(), k=k)

        def reject(text: str, reason: str) -> None:
            result.rejected.append((text, reason))
            result.counts[reason] += 1

        if starters is None or isinstance(starters, str):
            starters = [] if starters is None else [starters]

        # Pass 1: rules that need no embedding, and exact duplicates.
        survivors: list[tuple[str, str]] = []  # (original, whitespace-normalized)
        seen: set[str] = set()
        for raw in starters:
            original = raw if isinstance(raw, str) else repr(raw)
            text = _normalize_ws(raw) if isinstance(raw, str) else ""
            reason = _rule_reason(text, p, grounded)
            if reason is None:
                key = _dedupe_key(text)
                reason = "duplicate" if key in seen else None
                seen.add(key)
            if reason is None:
                survivors.append((original, text))
            else:
                reject(original, reason)
        if not survivors:
            return result

        # Pass 2: one embed() call for the semantic classifier and near-duplicates.
        emb = _as_unit_rows(self.embed([t for _, t in survivors]), len(survivors))
        sens = (emb @ self.prototype_embeddings.T).max(axis=1)
        accepted: list[int] = []  # survivors that passed everything (kept or over_k)
        for i, (original, text) in enumerate(survivors):
            if sens[i] >= p.sensitive_threshold:
                reject(original, "sensitive_semantic")
            elif accepted and float((emb[accepted] @ emb[i]).max()) >= p.near_dup_threshold:
                reject(original, "near_duplicate")
            else:
                accepted.append(i)
                if len(result.kept) < k:
                    result.kept.append(text)
                else:
                    reject(original, "over_k")
        return result


def filter_starters(
    starters: Sequence[str] | None, embed: EmbedFn, params: FilterParams,
    grounding: Sequence[str] | None = None,
) -> FilterResult:
    """Apply the rule filter to one list (see module docstring).

    Embeds the prototypes on every call; for many lists build one :class:`SafetyFilter`.
    """
    return SafetyFilter(embed, params).filter(starters, grounding)


def is_safe(text: str, embed: EmbedFn, params: FilterParams) -> bool:
    """Single-text check: passes junk, length, question-form and both sensitive checks."""
    return SafetyFilter(embed, params).is_safe(text)
