"""The interest-revisit judge (paper §2.2, App. B.2.1 Table 5).

Decides, for (earlier, later) session summaries of the same user, whether the later
session revisits the same specific interest. MATCH pairs make the revisit positives the
resonance scorer is trained on.

    pairs = candidate_pairs(sessions_df, embeddings, k=3)     # pruned by embedding similarity
    judge = make_judge(cfg.judge)                              # embedding | hf | openai
    verdict = judge(pairs.earlier_summary, pairs.later_summary, pairs.similarity)
    verdict.labels, verdict.parsed_ok, verdict.failed          # MATCH/NO_MATCH per pair

Backends:
- ``embedding``: cosine of the MiniLM embeddings >= ``threshold`` (the cheap default);
- ``hf``: a local causal LM prompted with Table 5, its ``<label>`` parsed;
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, Ray Serve
  LLM, a hosted API) over httpx, with a timeout and retries with exponential backoff.

Output that cannot be parsed counts as NO_MATCH (a missed positive costs less than a false
one) and is counted, never raised. An empty summary never matches anything.
Candidate pruning keeps the number of judged pairs linear in sessions: each later session
is compared only with its ``k`` most similar earlier sessions (among the ``max_history``
most recent ones) of the same user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icebreaker_ray.isg.parse import parse_revisit_label
from icebreaker_ray.isg.prompts import revisit_judge_prompt
from icebreaker_ray.rid.noise import strip_greetings

log = logging.getLogger(__name__)

MATCH, NO_MATCH = "MATCH", "NO_MATCH"
PAIR_COLUMNS = ("user_id", "earlier_session_id", "later_session_id", "earlier_summary",
                "later_summary", "similarity")


def clean_summary(text: object, max_chars: int) -> str:
    """A summary as every RID module and the server use it: a string, stripped, at most
    ``max_chars`` long (an enormous summary is cut, not rejected; ``None`` becomes empty),
    without greeting clauses (:func:`icebreaker_ray.rid.noise.strip_greetings`: "Hey
    there / Good! You? / I just started Mistborn" is about Mistborn)."""
    if not isinstance(text, str):
        return ""
    return strip_greetings(text.strip()[:max_chars])


# ----------------------------------------------------------------------------- candidates


def candidate_pairs(sessions: pd.DataFrame, embeddings: np.ndarray, k: int,
                    max_history: int = 1000, block: int = 512) -> pd.DataFrame:
    """(earlier, later) pairs of the same user to judge, pruned by embedding similarity.

    ``sessions`` has user_id, session_id, ts, summary; ``embeddings`` its L2-normalized rows.
    Each session is a "later" session for its ``k`` most similar earlier sessions among the
    ``max_history`` most recent ones, so a user with n sessions yields at most n*k pairs and
    costs O(n * max_history) dot products. Users with fewer than two sessions yield none.
    Ties in ``ts`` are broken by session_id, so "earlier" is a strict order.
    """
    if len(sessions) != len(embeddings):
        raise ValueError(f"{len(sessions)} sessions but {len(embeddings)} embeddings")
    order = sessions.assign(_row=np.arange(len(sessions))).sort_values(
        ["user_id", "ts", "session_id"], kind="stable")
    out: dict[str, list] = {c: [] for c in PAIR_COLUMNS}
    for uid, grp in order.groupby("user_id", sort=False):
        rows = grp["_row"].to_numpy()
        n = len(rows)
        if n < 2:
            continue
        emb = embeddings[rows]
        sids = grp["session_id"].to_numpy()
        summ = grp["summary"].to_numpy()
        for start in range(1, n, block):
            stop = min(n, start + block)
            lo = max(0, start - max_history)
            sims = emb[start:stop] @ emb[lo:stop].T  # later x earlier-window
            for j in range(start, stop):
                first = max(lo, j - max_history)
                cand = sims[j - start, first - lo: j - lo]
                take = min(k, len(cand))
                top = np.argpartition(-cand, take - 1)[:take] if take < len(cand) else np.arange(len(cand))
                for t in top:
                    i = first + int(t)
                    out["user_id"].append(uid)
                    out["earlier_session_id"].append(sids[i])
                    out["later_session_id"].append(sids[j])
                    out["earlier_summary"].append(summ[i])
                    out["later_summary"].append(summ[j])
                    out["similarity"].append(float(cand[t]))
    return pd.DataFrame(out, columns=list(PAIR_COLUMNS))


# ----------------------------------------------------------------------------- backends


@dataclass
class Verdict:
    labels: list[str]
    parsed_ok: list[bool]
    # Requests that failed after every retry (openai); their label is NO_MATCH.
    failed: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.failed:
            self.failed = [False] * len(self.labels)


def _empty_mask(earlier: Sequence[str], later: Sequence[str]) -> np.ndarray:
    return np.array([not (a or "").strip() or not (b or "").strip()
                     for a, b in zip(earlier, later, strict=True)], bool)


class EmbeddingJudge:
    """MATCH iff cosine(earlier, later) >= threshold (similarities come with the pairs)."""

    name = "embedding"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, earlier, later, similarity) -> Verdict:
        sim = np.asarray(similarity, float)
        match = (sim >= self.threshold) & ~_empty_mask(earlier, later)
        return Verdict([MATCH if m else NO_MATCH for m in match], [True] * len(sim))


class _PromptJudge:
    """Shared by the LLM backends: Table 5 prompt per pair, parse, empty pairs skipped."""

    name = "llm"

    def complete(self, prompts: list[str]) -> tuple[list[str | None], list[bool]]:
        """Raw completions (None on failure) and per-prompt request failure flags."""
        raise NotImplementedError

    def __call__(self, earlier, later, similarity=None) -> Verdict:
        earlier, later = list(earlier), list(later)
        empty = _empty_mask(earlier, later)
        idx = [i for i in range(len(earlier)) if not empty[i]]
        labels, ok, failed = [NO_MATCH] * len(earlier), [True] * len(earlier), [False] * len(earlier)
        if idx:
            texts, fails = self.complete([revisit_judge_prompt(earlier[i], later[i]) for i in idx])
            for i, text, fail in zip(idx, texts, fails, strict=True):
                labels[i], ok[i] = parse_revisit_label(text)
                failed[i] = fail
        return Verdict(labels, ok, failed)


class HFJudge(_PromptJudge):
    """A local transformers causal LM answering the Table 5 prompt (greedy, batched)."""

    name = "hf"

    def __init__(self, model: str, max_new_tokens: int = 24, batch_size: int = 16,
                 cache: str | None = None) -> None:
        from icebreaker_ray.models import load_generator

        self.model, self.tok = load_generator(model, cache=cache)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def complete(self, prompts):
        import torch

        outs: list[str | None] = []
        for s in range(0, len(prompts), self.batch_size):
            chunk = prompts[s: s + self.batch_size]
            if self.tok.chat_template:
                texts = [self.tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                      add_generation_prompt=True) for p in chunk]
            else:
                texts = chunk
            enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=1024)
            with torch.no_grad():
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tok.pad_token_id)
            outs += self.tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return outs, [False] * len(prompts)


class OpenAIJudge(_PromptJudge):
    """Any OpenAI-compatible chat completions endpoint, one request per pair.

    Timeouts, connection errors, 429 and 5xx are retried ``max_retries`` times with
    exponential backoff (``backoff_s * 2**attempt``); a pair whose request still fails is
    NO_MATCH with ``failed=True`` (the stage fails if too many do). Other 4xx are not retried.
    """

    name = "openai"

    def __init__(self, url: str, model: str, timeout_s: float = 30.0, max_retries: int = 3,
                 backoff_s: float = 0.5, api_key: str | None = None, max_tokens: int = 64) -> None:
        import httpx

        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else (
            base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions"))
        self.model, self.max_retries, self.backoff_s, self.max_tokens = model, max_retries, backoff_s, max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.retries = 0  # retried requests, for the stage metrics

    def _one(self, prompt: str) -> str | None:
        import httpx

        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0.0, "max_tokens": self.max_tokens}
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.post(self.endpoint, json=body)
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise httpx.HTTPStatusError(f"status {resp.status_code}", request=resp.request,
                                                response=resp)
                resp.raise_for_status()
                return resp.json()["choices"][0]["message"]["content"]
            except (httpx.TimeoutException, httpx.TransportError, httpx.HTTPStatusError) as exc:
                retryable = not isinstance(exc, httpx.HTTPStatusError) or (
                    exc.response.status_code == 429 or exc.response.status_code >= 500)
                if not retryable or attempt == self.max_retries:
                    log.warning("judge request failed after %d attempt(s): %s", attempt + 1, exc)
                    return None
                self.retries += 1
                time.sleep(self.backoff_s * 2**attempt)
            except (KeyError, IndexError, TypeError, ValueError):
                return ""  # a 200 with a malformed body: unparseable, counted as such
        return None

    def complete(self, prompts):
        texts = [self._one(p) for p in prompts]
        return texts, [t is None for t in texts]


def make_judge(jcfg, cache: str | None = None):
    """The judge backend named in the ``judge`` config section."""
    if jcfg.backend == "embedding":
        return EmbeddingJudge(jcfg.threshold)
    if jcfg.backend == "hf":
        return HFJudge(jcfg.hf_model or "smollm2-135m-instruct", jcfg.max_new_tokens,
                       min(jcfg.batch_size, 16), cache)
    if jcfg.backend == "openai":
        if not jcfg.openai_url:
            raise ValueError("judge.backend=openai needs judge.openai_url (an OpenAI-compatible base URL)")
        import os

        return OpenAIJudge(jcfg.openai_url, jcfg.openai_model, jcfg.timeout_s, jcfg.max_retries,
                           jcfg.backoff_s, api_key=os.environ.get("OPENAI_API_KEY"))
    raise ValueError(f"unknown judge backend {jcfg.backend!r}")
