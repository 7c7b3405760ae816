"""Teachers that distil the coverage-oriented corpus D_cov for SIT (§2.3.1, Table 4).

    teacher = make_teacher(cfg)          # cfg.teacher.backend: sim | grounded | hf | openai
    teacher.distill([["One Piece cosplay", "sourdough starter"]])
    # -> [['Which One Piece character is easy to cosplay?', ...]]   (5-20 filtered starters)

Every backend answers in the Table 4 format ``<think> … </think><sug> q1 && … </sug>``
(:meth:`Teacher.complete`); :meth:`Teacher.distill` then parses it and applies the same
rule filter as everywhere else, grounded in the interests the answer was written from (a
starter with a name found neither in ordinary English nor in those interests is dropped),
so a backend only has to write text.

* ``sim`` — stands in for a large teacher LLM on simulated data. It knows the world the
  way an LLM knows the real one: through the public topic catalog (subject names,
  aliases, facets, phrasing templates). Each trigger interest is mapped to its closest
  catalog subjects by embedding similarity; starters are written from those subjects'
  starter templates plus related subjects of the same category (Table 4 rules 4-5:
  association and generalization). It never reads the hidden world state.
* ``grounded`` — any text, on CPU, no LLM: key phrases picked from each trigger interest
  with the embedder (KeyBERT-style: candidate n-grams of the user's own words scored by
  cosine to the interest, then maximal marginal relevance for diversity) and placed into
  many question forms, so the starters reuse the user's real entities and invent none.
  The default on your own logs (``auto``).
* ``hf`` — a local transformers model prompted with Table 4, batched sampling.
* ``openai`` — any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, Ray Serve
  LLM, llama.cpp's ``llama-server``, a hosted API) over httpx, with a timeout and retries
  with exponential backoff.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from icebreaker_ray.isg.filters import (
    EmbedFn,
    FilterParams,
    SafetyFilter,
    grounding_vocabulary,
    invented_words,
)
from icebreaker_ray.isg.parse import parse_starters
from icebreaker_ray.isg.prompts import THINK_CLOSE, THINK_OPEN, render_completion, teacher_prompt

if TYPE_CHECKING:
    from icebreaker_ray.config import Config, TeacherSection

log = logging.getLogger(__name__)


class Teacher:
    """One interface for every backend: ``complete`` writes text, ``distill`` cleans it."""

    name = "teacher"

    def __init__(self, embed: EmbedFn, filter_params: FilterParams, min_q: int = 5,
                 max_q: int = 20) -> None:
        self.embed = embed
        self.min_q, self.max_q = min_q, max_q
        self.safety = SafetyFilter(embed, filter_params)

    def prompts(self, interests: Sequence[Sequence[str]]) -> list[str]:
        return [teacher_prompt(list(x), self.safety.params.max_chars, self.min_q, self.max_q)
                for x in interests]

    def complete(self, interests: Sequence[Sequence[str]]) -> list[str]:
        """Raw Table 4 answers, one per interest set ("" when the backend failed)."""
        raise NotImplementedError

    def distill(self, interests: Sequence[Sequence[str]]) -> list[list[str]]:
        """Parsed and filtered starters (at most ``max_q``) for each interest set, grounded
        in that set: a starter naming something that is neither ordinary English nor in the
        interests it was written from is dropped (the rule the generator's own lists pass),
        so SIT never teaches the generator to name what its prompt does not hold."""
        return [self.safety.filter(parse_starters(t).starters, list(items)).kept
                for items, t in zip(interests, self.complete(interests), strict=True)]


# ----------------------------------------------------------------------------- sim


def _subject_text(subject: Any) -> str:
    return f"{subject.name} ({', '.join(subject.aliases)}): {', '.join(subject.facets)}; {subject.category.name}"


def _seed_of(texts: Sequence[str], seed: int) -> int:
    digest = hashlib.sha256(("\x1f".join(texts) + f"|{seed}").encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SimTeacher(Teacher):
    """The simulated world's phrasing bank as a teacher (simulated data only)."""

    name = "sim"

    def __init__(self, embed: EmbedFn, filter_params: FilterParams, min_q: int = 5,
                 max_q: int = 20, subjects_per_interest: int = 1, related_subjects: int = 2,
                 seed: int = 0) -> None:
        from icebreaker_ray.sim.catalog import load_catalog

        super().__init__(embed, filter_params, min_q, max_q)
        self.catalog = load_catalog()
        # Interests are matched against every subject, so that a functional ("fix my
        # grammar") or sensitive interest is recognized as such and left out, as a
        # careful teacher would, instead of being forced onto the nearest hobby.
        self.subjects = list(self.catalog.subjects)
        self.subject_emb = np.asarray(embed([_subject_text(s) for s in self.subjects]), np.float32)
        self.subjects_per_interest = subjects_per_interest
        self.related_subjects = related_subjects
        self.seed = seed

    def match(self, interest: str) -> list[int]:
        """Indices of the regular catalog subjects closest to one interest (cosine);
        empty when the closest subject is functional or sensitive."""
        v = np.asarray(self.embed([interest]), np.float32)[0]
        order = np.argsort(-(self.subject_emb @ v), kind="stable")
        if not self.subjects[int(order[0])].category.is_regular:
            return []
        regular = [int(i) for i in order if self.subjects[int(i)].category.is_regular]
        return regular[: self.subjects_per_interest]

    def complete(self, interests: Sequence[Sequence[str]]) -> list[str]:
        from icebreaker_ray.sim.catalog import all_starters

        out = []
        for items in interests:
            items = [x for x in items if isinstance(x, str) and x.strip()]
            if not items:
                out.append(f"{THINK_OPEN} no interests given {THINK_CLOSE}{render_completion([])}")
                continue
            rng = np.random.default_rng(_seed_of(items, self.seed))
            n = int(rng.integers(self.min_q, self.max_q + 1))
            direct = list(dict.fromkeys(i for x in items for i in self.match(x)))
            related: list[int] = []
            for i in direct:  # association: other subjects of the same category
                same = [j for j, s in enumerate(self.subjects)
                        if s.category_id == self.subjects[i].category_id and j not in direct]
                # (same category as a regular subject, hence regular too)
                pick = rng.permutation(len(same))[: self.related_subjects]
                related.extend(same[int(p)] for p in pick)
            # Direct subjects get two starters each, related ones one, round robin; a
            # starter naming what the interests do not (a facet, another subject's name)
            # is passed over here, as distill() would drop it (grounding).
            plan = [i for i in direct for _ in range(2)] + related
            starters: list[str] = []
            vocab, zipf = grounding_vocabulary(items), self.safety.params.vocab_min_zipf
            # (zipf 0 turns the rule off: invented_words then finds nothing)
            pools = {i: list(rng.permutation(all_starters(self.subjects[i]))) for i in set(plan)}
            while len(starters) < n and any(pools[i] for i in plan):
                for i in plan:
                    while pools[i] and len(starters) < n:
                        text = str(pools[i].pop())
                        if not invented_words(text, vocab, zipf):
                            starters.append(text)
                            break
            if not direct:  # only functional/sensitive interests: nothing worth suggesting
                out.append(f"{THINK_OPEN} no suitable interests {THINK_CLOSE}{render_completion([])}")
                continue
            names = ", ".join(self.subjects[i].name for i in direct)
            out.append(f"{THINK_OPEN} The user cares about {names}; add related subjects. "
                       f"{THINK_CLOSE}{render_completion(starters)}")
        return out


# ----------------------------------------------------------------------------- grounded

#: Words that neither start nor end a key phrase: English stop words (scikit-learn's list)
#: plus chat fillers and the verbs people wrap their topics in ("i love X", "went to X").
CHAT_FILLERS = frozenset("""
    yeah yea yes yep nope ok okay hi hello hey hiya haha hahaha lol lmao omg wow oh ooh um umm
    uh hmm huh im ive id ill dont didnt doesnt cant wont isnt wasnt arent thats whats theres
    youre hes shes theyre lets gonna wanna gotta kinda sorta like just really pretty very
    lot lots thing things stuff kind sort sure cool nice great awesome good bad fun funny
    love loved loves like liked likes want wanted think thought know knew feel felt get got
    go going gone went make made say said see saw tell told guess mean actually probably
    definitely maybe honestly literally totally right well yeah anyway today tonight
    someone something anything everything nothing people person guy guys time day days
    year years way ways bit favorite best worst new old big little one two three
    friend friends family brother sister mom dad life dream home house question questions
    joined start started try tried use used need needed ask asked talk talking chat chatting
    upset sad happy excited tired bored glad mad angry scared
    weekend morning night week month tomorrow yesterday
    doing saying says trying getting making looking thinking coming taking turning
""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’&+\-]*")
_CLAUSE = re.compile(r"[.,!?;:/()\[\]\"“”…]+|\s-\s|\band\b|\bor\b|\bbut\b", re.IGNORECASE)

#: Question forms a key phrase is placed into (Table 4: varied, specific, short). Each reads
#: right around any noun phrase or activity ("Puerto Rico", "surfing", "the MCU").
TEMPLATES = (
    "What should I know about {p}?", "Tell me something surprising about {p}",
    "What's the most interesting thing about {p}?", "What's the history behind {p}?",
    "Fun facts about {p}?", "What's new with {p} lately?", "Recommend something like {p}?",
    "What's underrated about {p}?", "What's a common myth about {p}?", "Quiz me on {p}?",
    "Can we chat about {p}?", "What do people get wrong about {p}?",
    "Give me a fun fact about {p}", "What makes {p} special?", "What's worth reading about {p}?",
    "How did {p} come about?", "What's the best way to learn about {p}?",
    "Share a little-known fact about {p}", "What's changed about {p} recently?",
    "What would an expert say about {p}?",
)


def _bare(word: str) -> str:
    """Lower case without apostrophes, as chat spells it: "I'm" and "im" are one word."""
    return word.lower().replace("'", "").replace("’", "")


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(_bare(w) for w in ENGLISH_STOP_WORDS) | CHAT_FILLERS


def candidate_phrases(text: str, max_words: int = 3, max_candidates: int = 64,
                      stop: frozenset[str] | None = None) -> list[str]:
    """Word n-grams (1..``max_words``) of ``text`` that could name a topic: runs of
    consecutive words inside one clause with no stop word or filler among them (as
    KeyBERT's stop-word-free n-grams), at least one word of 4+ letters or an acronym, no
    lone past tense or adverb; first occurrence
    kept, case-insensitively deduplicated, in text order.

    >>> candidate_phrases("i went surfing in Puerto Rico with my best friend!")
    ['surfing', 'Puerto', 'Puerto Rico', 'Rico']
    """
    stop = _stop_words() if stop is None else stop
    seen: dict[str, str] = {}
    for clause in _CLAUSE.split(text):
        words = _WORD.findall(clause)
        for i in range(len(words)):
            for n in range(1, max_words + 1):
                gram = words[i:i + n]
                if len(gram) < n:
                    break
                if any(_bare(w) in stop for w in gram):
                    break  # every longer n-gram from here holds the same stop word
                if not any((len(w) >= 4 and w.isalpha()) or (len(w) >= 2 and w.isupper())
                           for w in gram):  # a word of 4+ letters, or an acronym ("MCU")
                    continue
                if n == 1 and gram[0].lower().endswith(("ed", "ly")):
                    continue  # a lone past tense or adverb ("killed", "really") names no topic
                seen.setdefault(" ".join(w.lower() for w in gram), " ".join(gram))
    return list(seen.values())[:max_candidates]


def mmr(doc: np.ndarray, candidates: np.ndarray, top_n: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: greedily the candidate with the best
    (1 - diversity) * cos(candidate, doc) - diversity * max cos(candidate, picked).

    >>> mmr(np.array([1.0, 0.0]), np.array([[1.0, 0.0], [0.99, 0.14], [0.6, 0.8]]), 2, 0.7)
    [0, 2]
    """
    relevance = candidates @ doc
    picked: list[int] = []
    for _ in range(min(top_n, len(candidates))):
        if picked:
            redundancy = (candidates @ candidates[picked].T).max(axis=1)
            score = (1 - diversity) * relevance - diversity * redundancy
            score[picked] = -np.inf
        else:
            score = relevance.copy()
        picked.append(int(np.argmax(score)))
    return picked


class GroundedTeacher(Teacher):
    """Starters made of the user's own key phrases (any text, CPU, no LLM).

    For each trigger interest: :func:`candidate_phrases`, embedded with the interest, the
    ``phrases_per_interest`` best by :func:`mmr` (cosine to the interest, ``diversity``
    against each other); phrases of all interests are then taken round robin (the first
    interest, the highest resonance, first) and each is placed into question forms from
    :data:`TEMPLATES` (a seeded shuffle per phrase; only forms that fit ``max_chars``),
    until ``min_q..max_q`` starters. :meth:`Teacher.distill` applies the rule/safety
    filter, so a phrase on a sensitive topic, or a form that came out too long, is dropped
    there like any teacher's output. An interest with no usable phrase (a "hello?") adds
    nothing; a user with none gets an empty list, which the SIT corpus records.

    >>> t = GroundedTeacher(embed, FilterParams(k=20))                      # doctest: +SKIP
    >>> t.distill([["i went surfing in Puerto Rico with my best friend"]])  # doctest: +SKIP
    [['Any tips on Puerto Rico?', 'What should I know about surfing?', ...]]
    """

    name = "grounded"

    def __init__(self, embed: EmbedFn, filter_params: FilterParams, min_q: int = 5,
                 max_q: int = 20, phrases_per_interest: int = 3, diversity: float = 0.5,
                 seed: int = 0) -> None:
        super().__init__(embed, filter_params, min_q, max_q)
        self.phrases_per_interest, self.diversity, self.seed = phrases_per_interest, diversity, seed
        self.stop = _stop_words()

    def key_phrases(self, interest: str) -> list[str]:
        """The ``phrases_per_interest`` key phrases of one interest text, best first."""
        candidates = candidate_phrases(interest, stop=self.stop)
        if not candidates:
            return []
        emb = np.asarray(self.embed([interest, *candidates]), np.float64)
        picked: list[str] = []
        for i in mmr(emb[0], emb[1:], len(candidates), self.diversity):
            words = set(candidates[i].lower().split())
            # "Rico" adds nothing next to "Puerto Rico" (nor the other way round)
            if not any(words <= set(p.lower().split()) or set(p.lower().split()) <= words
                       for p in picked):
                picked.append(candidates[i])
            if len(picked) == self.phrases_per_interest:
                break
        return picked

    def starters(self, interests: Sequence[str]) -> tuple[list[str], list[str]]:
        """(key phrases, starters) for one user's interests, before the filter."""
        items = [x for x in interests if isinstance(x, str) and x.strip()]
        rng = np.random.default_rng(_seed_of(items, self.seed))
        n = int(rng.integers(self.min_q, self.max_q + 1))
        per = [self.key_phrases(x) for x in items]
        phrases = list(dict.fromkeys(p for i in range(self.phrases_per_interest)
                                     for ps in per if i < len(ps) for p in ps[i:i + 1]))
        limit = self.safety.params.max_chars
        forms = {p: [t.format(p=p) for t in rng.permutation(TEMPLATES)
                     if len(t.format(p=p)) <= limit] for p in phrases}
        out: list[str] = []
        while len(out) < n and any(forms.values()):
            for p in phrases:
                if forms[p] and len(out) < n:
                    out.append(forms[p].pop(0))
        return phrases, out

    def complete(self, interests: Sequence[Sequence[str]]) -> list[str]:
        out = []
        for items in interests:
            phrases, starters = self.starters(list(items))
            think = (f"Key phrases from the user's own words: {', '.join(phrases)}."
                     if phrases else "No usable key phrase in the interests.")
            out.append(f"{THINK_OPEN} {think} {THINK_CLOSE}{render_completion(starters)}")
        return out


# ----------------------------------------------------------------------------- hf


class HFTeacher(Teacher):
    """A local transformers model prompted with Table 4 (batched sampling)."""

    def __init__(self, embed: EmbedFn, filter_params: FilterParams, model_name: str,
                 min_q: int = 5, max_q: int = 20, temperature: float = 0.8,
                 max_new_tokens: int = 512, batch_size: int = 8, dtype: str = "float32") -> None:
        from icebreaker_ray.models import load_generator

        super().__init__(embed, filter_params, min_q, max_q)
        self.name = f"hf:{model_name}"
        self.model, self.tok = load_generator(model_name, dtype=dtype)
        self.temperature, self.max_new_tokens, self.batch_size = temperature, max_new_tokens, batch_size

    def complete(self, interests: Sequence[Sequence[str]]) -> list[str]:
        from icebreaker_ray.isg.generate import sample_chat

        convs = [[{"role": "user", "content": p}] for p in self.prompts(interests)]
        texts = sample_chat(self.model, self.tok, convs, temperature=self.temperature,
                            max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        return [t[0] for t in texts]


# ----------------------------------------------------------------------------- openai


class OpenAITeacher(Teacher):
    """An OpenAI-compatible chat endpoint, with timeout and retries with backoff.

    Retries on connection errors, timeouts, 429 and 5xx; other 4xx are not retried.
    After the last failure the answer is "" (an empty list after parsing) and the
    failure is counted in :attr:`failures`, so one bad request does not sink a corpus.
    """

    RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

    def __init__(self, embed: EmbedFn, filter_params: FilterParams, url: str, model: str,
                 min_q: int = 5, max_q: int = 20, temperature: float = 0.8,
                 max_new_tokens: int = 512, timeout_s: float = 60.0, max_retries: int = 3,
                 backoff_s: float = 1.0, api_key: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(embed, filter_params, min_q, max_q)
        if not url:
            raise ValueError("teacher.openai_url is required for the openai backend")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else (
            f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions")
        self.name = f"openai:{model}"
        self.model = model
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.sleep = sleep
        self.failures = 0
        self.retries = 0

    def _request(self, client: Any, prompt: str) -> str:
        import httpx

        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature, "max_tokens": self.max_new_tokens}
        for attempt in range(self.max_retries + 1):
            try:
                resp = client.post(self.endpoint, json=body, headers=self.headers)
                if resp.status_code in self.RETRY_STATUS:
                    raise httpx.HTTPStatusError(f"status {resp.status_code}", request=resp.request,
                                                response=resp)
                resp.raise_for_status()
                content = resp.json()["choices"][0]["message"]["content"]
                return content if isinstance(content, str) else ""
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code not in self.RETRY_STATUS:
                    log.warning("teacher %s: %s, not retried", self.endpoint, exc)
                    break
                err: Exception = exc
            except (httpx.TransportError, ValueError, KeyError, IndexError, TypeError) as exc:
                err = exc
            if attempt < self.max_retries:
                self.retries += 1
                self.sleep(self.backoff_s * 2**attempt)
            else:
                log.warning("teacher %s failed after %d attempts: %s", self.endpoint, attempt + 1, err)
        self.failures += 1
        return ""

    def complete(self, interests: Sequence[Sequence[str]]) -> list[str]:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            return [self._request(client, p) for p in self.prompts(interests)]


# ----------------------------------------------------------------------------- factory


def make_teacher(cfg: Config, embed: EmbedFn) -> Teacher:
    """The teacher of ``cfg.teacher.backend`` with the configured filter."""
    t: TeacherSection = cfg.teacher
    f = cfg.filter
    params = FilterParams(k=t.max_questions, max_chars=f.max_chars, min_chars=f.min_chars,
                          near_dup_threshold=f.near_dup_threshold,
                          sensitive_threshold=f.sensitive_threshold)
    common = dict(min_q=t.min_questions, max_q=t.max_questions)
    backend = t.backend
    if backend == "auto":  # Config resolves it on load; a hand-built one may not have
        backend = "sim" if cfg.data.source == "sim" else "grounded"
    if backend == "grounded":
        return GroundedTeacher(embed, params, seed=cfg.run.seed, **common)
    if backend == "sim":
        if cfg.data.source != "sim":
            raise ValueError("teacher.backend 'sim' only works on simulated data "
                             "(data.source: sim); use 'grounded' (or 'auto'), 'hf' or "
                             "'openai' on your own logs")
        return SimTeacher(embed, params, subjects_per_interest=t.subjects_per_interest,
                          related_subjects=t.related_subjects, seed=cfg.run.seed, **common)
    if backend == "hf":
        return HFTeacher(embed, params, t.hf_model or cfg.models.generator,
                         temperature=t.temperature, max_new_tokens=t.max_new_tokens,
                         batch_size=t.batch_size, dtype=cfg.models.dtype, **common)
    return OpenAITeacher(embed, params, t.openai_url or "", t.openai_model,
                         temperature=t.temperature, max_new_tokens=t.max_new_tokens,
                         timeout_s=t.timeout_s, max_retries=t.max_retries, backoff_s=t.backoff_s,
                         api_key=os.environ.get(t.api_key_env), **common)
