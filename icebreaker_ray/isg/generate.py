"""Starter generation with a causal LM: sample N candidate lists, parse, filter, keep K.

    engine = EngineSpec.from_config(cfg).load("runs/demo/sft/model")   # hf | llamacpp
    [res] = generate(engine, [["One Piece cosplay", "sourdough starter"]], embed,
                     GenerationParams(k=4, num_candidates=8))
    res.starters      # -> ['Which One Piece arc ...?', ...] (K starters, filtered)
    res.reason        # -> 'ok' | 'merged' | 'too_few_valid'

One function serves every caller: evaluation, mining (Algorithm 1 line 1 samples the
candidate lists), serving and the training-free baselines of the paper:

* **PE** — the base model prompted with the user's raw session summaries;
* **PE+RID** — the base model prompted with the trigger interests ``I*`` (§2.2);
* **SFT / DPO** — the tuned model prompted with ``I*``.

The three differ only in the model and in which texts are passed as ``interests``.
Sampling goes through a generation engine (:mod:`icebreaker_ray.isg.engines`); this module
holds the ``hf`` engine's sampler (:func:`sample_chat`) and what every engine shares.
Model output is never trusted: every candidate goes through
:func:`~icebreaker_ray.isg.parse.parse_starters` and the rule filter, and nothing here
raises on garbage output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from icebreaker_ray.isg.filters import EmbedFn, FilterParams, SafetyFilter
from icebreaker_ray.isg.parse import parse_starters
from icebreaker_ray.isg.prompts import generator_messages

if TYPE_CHECKING:
    from icebreaker_ray.config import Config
    from icebreaker_ray.isg.engines import Engine


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of one call; :meth:`from_config` reads ``generation`` + ``filter``."""

    k: int = 4
    num_candidates: int = 8
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 96
    batch_size: int = 8
    max_chars: int = 64
    filter: FilterParams | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> GenerationParams:
        g = cfg.generation
        return cls(
            k=g.K, num_candidates=g.num_candidates, temperature=g.temperature, top_p=g.top_p,
            max_new_tokens=g.max_new_tokens, batch_size=g.batch_size, max_chars=cfg.filter.max_chars,
            filter=FilterParams.from_config(cfg, g.K),
        )

    def filter_params(self) -> FilterParams:
        return self.filter or FilterParams(k=self.k, max_chars=self.max_chars)


@dataclass
class Candidate:
    """One sampled list: raw text, parse status and what survived the filter."""

    text: str
    status: str
    kept: list[str]
    complete: bool  # parsed, and K starters passed the filter
    parsed: int = 0  # starters parsed from the text, before the filter


@dataclass
class GenerationResult:
    """The filtered list for one user, plus every candidate behind it.

    ``reason``: ``"ok"`` (a candidate list passed with K starters), ``"merged"`` (no
    single candidate did; K starters were pooled from several, through the same filter)
    or ``"too_few_valid"`` (fewer than K valid starters in all candidates).
    """

    starters: list[str]
    reason: str
    candidates: list[Candidate] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)

    @property
    def pass_rate(self) -> float:
        """Share of candidate lists that parsed and passed the filter with K starters."""
        return sum(c.complete for c in self.candidates) / max(len(self.candidates), 1)


def sample_chat(
    model: Any,
    tok: Any,
    conversations: Sequence[list[dict[str, str]]],
    *,
    num_return: int = 1,
    temperature: float = 0.9,
    top_p: float = 0.95,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    seed: int | None = None,
    do_sample: bool = True,
    on_step: Callable[[dict[int, tuple[str, bool]]], None] | None = None,
) -> list[list[str]]:
    """Sample ``num_return`` completions per chat, about ``batch_size`` sequences per forward.

    Prompts are rendered with the tokenizer's chat template and left-padded, so one
    ``model.generate`` call serves a whole batch. Each prompt is prefilled once and its
    KV cache repeated for its ``num_return`` samples (the prompt is most of the tokens a
    sample reads: prefilling it once per sample took a fifth of the time, bench_sampling.py).
    Returns the decoded completions, one list per conversation. ``on_step`` (streaming)
    gets ``{i * num_return + j: (text so far, finished)}`` after each step of each call
    (see :mod:`icebreaker_ray.isg.engines`).
    """
    import copy

    import torch

    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    prompts = [
        tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        for conv in conversations
    ]
    per_call = max(1, min(num_return, batch_size))  # samples of one prompt per generate call
    prompts_per_call = max(1, batch_size // per_call)
    sampling = dict(temperature=temperature, top_p=top_p) if do_sample else {}
    out: list[list[str]] = [[] for _ in prompts]
    if seed is not None:
        torch.manual_seed(seed)
    for start in range(0, len(prompts), prompts_per_call):
        idx = range(start, min(start + prompts_per_call, len(prompts)))
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.no_grad():
            # Prefill all but the last prompt token (generate feeds that one), with the
            # positions generate gives left-padded rows (RoPE models would not mind a
            # shift; models with absolute positions would).
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            prefix = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                           position_ids=positions[:, :-1], use_cache=True).past_key_values
            left = num_return
            while left:
                n = min(per_call, left)
                left -= n
                cache = copy.deepcopy(prefix) if left else prefix  # generate extends it in place
                cache.batch_repeat_interleave(n)
                first = num_return - left - n  # index of the first sample of this call
                seqs = [idx[row // n] * num_return + first + row % n for row in range(len(idx) * n)]
                gen = model.generate(
                    input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                    past_key_values=cache, do_sample=do_sample, max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id, **sampling,
                    streamer=_step_streamer(tok, seqs, on_step) if on_step else None,
                )
                texts = tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
                for row, text in enumerate(texts):
                    out[idx[row // n]].append(text)
    return out


def _step_streamer(tok: Any, seqs: list[int], on_step: Callable) -> Any:
    """A transformers streamer for a whole batch: ``put`` gets the prompt ids once, then one
    token per row per step; it reports each row's text as sequence ``seqs[row]``."""
    from transformers.generation.streamers import BaseStreamer

    stop = {i for i in (tok.eos_token_id, tok.pad_token_id) if i is not None}

    class StepStreamer(BaseStreamer):
        def __init__(self) -> None:
            self.prompt_seen = False
            self.tokens: list[list[int]] = [[] for _ in seqs]
            self.done = [False] * len(seqs)

        def put(self, value) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            news = {}
            for row, token in enumerate(value.reshape(-1).tolist()):
                if self.done[row]:
                    continue
                if token in stop:
                    self.done[row] = True
                else:
                    self.tokens[row].append(int(token))
                news[seqs[row]] = (tok.decode(self.tokens[row], skip_special_tokens=True), self.done[row])
            if news:
                on_step(news)

        def end(self) -> None:
            news = {seqs[r]: (tok.decode(t, skip_special_tokens=True), True)
                    for r, t in enumerate(self.tokens) if not self.done[r]}
            if news:  # rows cut off by max_new_tokens end here
                on_step(news)

    return StepStreamer()


def select_list(texts: Sequence[str], safety: SafetyFilter, k: int,
                grounding: Sequence[str] | None = None, *, stop_early: bool = False
                ) -> GenerationResult:
    """The one list-selection policy (evaluation grades it, the server and the precomputed
    store serve it): parse and filter each sampled candidate in order; the first that
    keeps K starters is the list, else the valid starters of all candidates pooled.

    ``grounding``: the texts the lists were written from (the prompt's interests), for the
    filter's invented-entity rule. ``stop_early`` (the server): do not filter the
    candidates after the first complete one; the list is the same, but ``candidates`` and
    ``rejections`` then cover only those read (evaluation counts them all)."""
    candidates, rejections = [], Counter()
    for text in texts:
        parsed = parse_starters(text)
        res = safety.filter(parsed.starters, grounding, k=k)
        rejections.update(res.counts)
        complete = parsed.status != "empty" and res.complete
        candidates.append(Candidate(text, parsed.status, res.kept, complete, len(parsed.starters)))
        if stop_early and complete:
            break
    for c in candidates:
        if c.complete:
            return GenerationResult(c.kept, "ok", candidates, rejections)
    pooled = safety.filter([s for c in candidates for s in c.kept], grounding, k=k).kept
    reason = "merged" if len(pooled) >= k else "too_few_valid"
    return GenerationResult(pooled[:k], reason, candidates, rejections)


def generate(
    engine: Engine,
    interests: Sequence[Sequence[str]],
    embed: EmbedFn,
    params: GenerationParams | None = None,
    *,
    seed: int | None = None,
    safety: SafetyFilter | None = None,
) -> list[GenerationResult]:
    """K filtered starters per user from ``num_candidates`` sampled lists (batched).

    ``interests[i]`` is the prompt input of user ``i``: trigger interests for PE+RID,
    SFT and DPO, raw session summaries for the PE baseline. Never raises on model
    output; a user whose candidates hold fewer than K valid starters gets what there
    is, with ``reason="too_few_valid"``.
    """
    params = params or GenerationParams()
    safety = safety or SafetyFilter(embed, params.filter_params())
    convs = [generator_messages(list(x), k=params.k, max_chars=params.max_chars) for x in interests]
    samples = engine.sample(
        convs, num_return=params.num_candidates, temperature=params.temperature,
        top_p=params.top_p, max_new_tokens=params.max_new_tokens, seed=seed,
    )
    return [select_list(texts, safety, params.k, list(x))
            for texts, x in zip(samples, interests, strict=True)]


def invented_rate(results: Sequence[GenerationResult]) -> float:
    """Share of all parsed starters the filter rejected as invented entities."""
    parsed = sum(c.parsed for r in results for c in r.candidates)
    return sum(r.rejections["invented_entity"] for r in results) / max(parsed, 1)


def format_pass_rate(results: Sequence[GenerationResult]) -> float:
    """Share of all sampled lists that parse and pass the filter with K starters."""
    cands = [c for r in results for c in r.candidates]
    return sum(c.complete for c in cands) / max(len(cands), 1)
