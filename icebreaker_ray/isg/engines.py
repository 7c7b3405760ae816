"""Generation engines: one interface for mining, evaluation and serving.

    spec = EngineSpec.from_config(cfg)            # generation.engine: hf | llamacpp | vllm
    engine = spec.load("runs/demo/sft/model")
    texts = engine.sample(convs, num_return=8, temperature=0.9, top_p=0.95,
                          max_new_tokens=96, seed=0)
    texts[0]     # -> 8 sampled completions of the first chat, the same for the same seed

* ``hf`` — transformers ``generate`` (:func:`~icebreaker_ray.isg.generate.sample_chat`),
  the reference.
* ``llamacpp`` — llama.cpp (``llama-cpp-python``) on a GGUF of the same HF folder
  (:func:`~icebreaker_ray.isg.gguf_export.gguf_file`). The candidates of a prompt are
  decoded together: the prompt is prefilled once into sequence 0, the KV cache is shared
  with sequences 1..N-1 (``llama_memory_seq_cp``), then every step decodes one token of
  every live sequence in one ``llama_decode``. Several prompts go into one batch the same way.
* ``vllm`` — GPU presets only; sampling runs through Ray Data LLM / Ray Serve LLM
  (:mod:`icebreaker_ray.isg.vllm`), not through this interface.

Both CPU engines render the prompt with the HF tokenizer's chat template, tokenize and
detokenize with it, so they read and write the same tokens; they sample with temperature,
transformers' default top-k (50) and top-p. ``on_step`` (the server's streaming) receives,
after each decoding step, ``{sequence: (text so far, finished)}`` for the sequences that
advanced; sequence ``i * num_return + j`` is sample ``j`` of conversation ``i``.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

StepFn = Callable[[dict[int, tuple[str, bool]]], None]
#: transformers samples from the 50 most likely tokens unless told otherwise; so does llamacpp.
TOP_K = 50
ENGINES = ("hf", "llamacpp", "vllm")


class EngineError(RuntimeError):
    """An engine cannot be built as configured; the message says why and what to change."""


class Engine(Protocol):
    name: str

    def sample(self, conversations: Sequence[list[dict[str, str]]], *, num_return: int = 1,
               temperature: float = 0.9, top_p: float = 0.95, max_new_tokens: int = 96,
               seed: int | None = None, do_sample: bool = True,
               on_step: StepFn | None = None) -> list[list[str]]:
        """``num_return`` completions per conversation (see module docstring)."""
        ...


def default_threads() -> int:
    """Threads for a CPU engine: the process's CPU share as Ray gives it to an actor or
    replica (``OMP_NUM_THREADS``), else every core of the machine."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


@dataclass(frozen=True)
class EngineSpec:
    """How to build an engine for a model folder; small and picklable (Ray actors get it)."""

    kind: Literal["hf", "llamacpp", "vllm"] = "hf"
    dtype: str = "float32"
    cache: str | None = None
    batch_size: int = 8  # sequences decoded together (both CPU engines)
    gguf_outtype: str = "q8_0"
    threads: int | None = None  # None: default_threads()

    @classmethod
    def from_config(cls, cfg: Any, threads: int | None = None) -> EngineSpec:
        g = cfg.generation
        return cls(kind=g.engine, dtype=cfg.models.dtype, cache=cfg.models.cache_dir,
                   batch_size=g.batch_size, gguf_outtype=g.gguf_outtype,
                   threads=threads or g.num_threads)

    def load(self, name: str) -> Engine:
        """The engine over generator ``name`` (alias, HF folder, storage URI or Hub id)."""
        from icebreaker_ray.models import load_generator, load_tokenizer, resolve_generator

        if self.kind == "hf":
            model, tok = load_generator(name, self.dtype, self.cache)
            return HFEngine(model, tok, self.batch_size)
        if self.kind == "llamacpp":
            from icebreaker_ray.isg.gguf_export import gguf_file

            path = resolve_generator(name, self.cache)
            return LlamaCppEngine(gguf_file(path, self.gguf_outtype, self.cache), load_tokenizer(path),
                                  batch_size=self.batch_size, threads=self.threads or default_threads())
        if self.kind == "vllm":
            raise EngineError(
                "generation.engine=vllm samples through Ray Data LLM (batch) and Ray Serve LLM "
                "(serving) on GPUs; see icebreaker_ray/isg/vllm.py. Use hf or llamacpp on CPU.")
        raise EngineError(f"unknown generation.engine {self.kind!r}; one of {', '.join(ENGINES)}")


def _prompt_ids(tok: Any, conversations: Sequence[list[dict[str, str]]]) -> list[list[int]]:
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
               for c in conversations]
    return [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]


class HFEngine:
    """transformers ``generate``: :func:`~icebreaker_ray.isg.generate.sample_chat`."""

    name = "hf"

    def __init__(self, model: Any, tok: Any, batch_size: int = 8) -> None:
        self.model, self.tok, self.batch_size = model, tok, batch_size

    def sample(self, conversations, *, num_return=1, temperature=0.9, top_p=0.95,
               max_new_tokens=96, seed=None, do_sample=True, on_step=None):
        from icebreaker_ray.isg.generate import sample_chat

        return sample_chat(self.model, self.tok, conversations, num_return=num_return,
                           temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                           batch_size=self.batch_size, seed=seed, do_sample=do_sample,
                           on_step=on_step)


class LlamaCppEngine:
    """llama.cpp batched decoding over a GGUF file (see module docstring).

    ``batch_size`` caps the sequences decoded together: a call takes as many prompts at a
    time as fit (at least one, with all of its ``num_return`` samples).
    """

    name = "llamacpp"

    def __init__(self, gguf_path: str, tok: Any, *, batch_size: int = 8, threads: int = 2,
                 max_context: int = 8192) -> None:
        import llama_cpp

        self.ll, self.tok, self.path = llama_cpp, tok, gguf_path
        self.batch_size, self.threads, self.max_context = batch_size, threads, max_context
        _quiet(llama_cpp)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(gguf_path.encode(), params)
        if not self.model:
            raise EngineError(f"llama.cpp could not load {gguf_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.ctx, self.ctx_size = None, (0, 0)
        self.stop_ids = {i for i in (tok.eos_token_id, tok.pad_token_id) if i is not None}

    def close(self) -> None:
        """Free the context and the weights (also on garbage collection)."""
        if getattr(self, "ctx", None):
            self.ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.ll.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the bindings may be gone
            self.close()

    def _context(self, n_ctx: int, n_seq: int):
        """A context with room for ``n_ctx`` cells and ``n_seq`` sequences (grown, never shrunk)."""
        ll = self.ll
        have_ctx, have_seq = self.ctx_size
        if self.ctx is not None and n_ctx <= have_ctx and n_seq <= have_seq:
            return self.ctx
        if self.ctx is not None:
            ll.llama_free(self.ctx)
            self.ctx = None
        n_ctx, n_seq = max(n_ctx, have_ctx, 512), max(n_seq, have_seq)
        p = ll.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch = n_ctx, n_ctx, min(n_ctx, 512)
        p.n_seq_max = n_seq
        p.n_threads = p.n_threads_batch = self.threads
        # One cache shared by all sequences: the copies of a prompt point at its cells
        # instead of each holding its own.
        p.kv_unified = True
        p.no_perf = True
        ctx = ll.llama_init_from_model(self.model, p)
        if not ctx:
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} cells, {n_seq} sequences")
        self.ctx, self.ctx_size = ctx, (n_ctx, n_seq)
        return ctx

    def sample(self, conversations, *, num_return=1, temperature=0.9, top_p=0.95,
               max_new_tokens=96, seed=None, do_sample=True, on_step=None):
        if num_return < 1 or max_new_tokens < 1:
            raise ValueError("num_return and max_new_tokens must be >= 1")
        prompts = _prompt_ids(self.tok, conversations)
        seed = random.randrange(2**31) if seed is None else seed
        per_call = max(1, self.batch_size // num_return)
        out: list[list[str]] = []
        for start in range(0, len(prompts), per_call):
            group = list(range(start, min(start + per_call, len(prompts))))
            out += self._group(prompts, group, num_return, temperature, top_p, max_new_tokens,
                               seed, do_sample, on_step)
        return out

    def _samplers(self, seeds: Sequence[int], temperature: float, top_p: float, do_sample: bool):
        ll = self.ll
        chains = []
        for s in seeds:
            chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
            if do_sample:  # the order of transformers' warpers: top-k, temperature, top-p
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(TOP_K))
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(temperature))
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(top_p, 1))
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(s & 0xFFFFFFFF))
            else:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            chains.append(chain)
        return chains

    def _group(self, prompts, group, n, temperature, top_p, max_new_tokens, seed, do_sample,
               on_step) -> list[list[str]]:
        """Sample ``n`` completions for each prompt index in ``group``, all decoded together."""
        ll = self.ll
        n_seq = len(group) * n
        prompt_tokens = sum(len(prompts[i]) for i in group)
        n_ctx = prompt_tokens + n_seq * (max_new_tokens + 1)
        if n_ctx > self.max_context:
            raise EngineError(f"{len(group)} prompts x {n} samples need {n_ctx} KV cells, more "
                              f"than {self.max_context}: lower generation.batch_size")
        ctx = self._context(n_ctx, n_seq)
        mem = ll.llama_get_memory(ctx)
        ll.llama_memory_clear(mem, True)
        batch = ll.llama_batch_init(max(prompt_tokens, n_seq), 0, 1)
        # Sample j of prompt i draws from its own generator, seeded by (seed, i, j).
        chains = self._samplers([hash((seed, i, j)) for i in group for j in range(n)],
                                temperature, top_p, do_sample)
        try:
            # Prefill: every prompt once, into the first sequence of its group; logits of
            # its last token only.
            last, k = [], 0
            for g, i in enumerate(group):
                for pos, token in enumerate(prompts[i]):
                    _put(batch, k, token, pos, g * n, pos == len(prompts[i]) - 1)
                    k += 1
                last.append(k - 1)
            batch.n_tokens = k
            self._decode(ctx, batch)
            for g in range(len(group)):
                for j in range(1, n):
                    ll.llama_memory_seq_cp(mem, g * n, g * n + j, -1, -1)
            tokens: list[list[int]] = [[] for _ in range(n_seq)]
            done = [False] * n_seq
            rows = [last[s // n] for s in range(n_seq)]  # batch row holding each sequence's logits
            for _ in range(max_new_tokens):
                advanced = []
                for s in range(n_seq):
                    if done[s]:
                        continue
                    token = ll.llama_sampler_sample(chains[s], ctx, rows[s])
                    advanced.append(s)
                    if token in self.stop_ids or ll.llama_vocab_is_eog(self.vocab, token):
                        done[s] = True
                    else:
                        tokens[s].append(token)
                        if len(tokens[s]) >= max_new_tokens:
                            done[s] = True
                if on_step is not None and advanced:
                    on_step({group[s // n] * n + s % n: (self._text(tokens[s]), done[s])
                             for s in advanced})
                live = [s for s in range(n_seq) if not done[s]]
                if not live:
                    break
                for row, s in enumerate(live):
                    _put(batch, row, tokens[s][-1], len(prompts[group[s // n]]) + len(tokens[s]) - 1,
                         s, True)
                    rows[s] = row
                batch.n_tokens = len(live)
                self._decode(ctx, batch)
        finally:
            ll.llama_batch_free(batch)
            for chain in chains:
                ll.llama_sampler_free(chain)
        return [[self._text(tokens[g * n + j]) for j in range(n)] for g in range(len(group))]

    def _decode(self, ctx, batch) -> None:
        rc = self.ll.llama_decode(ctx, batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc} ({batch.n_tokens} tokens)")

    def _text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def _put(batch, row: int, token: int, pos: int, seq: int, logits: bool) -> None:
    batch.token[row] = token
    batch.pos[row] = pos
    batch.n_seq_id[row] = 1
    batch.seq_id[row][0] = seq
    batch.logits[row] = logits


_QUIET = None


def _quiet(ll) -> None:
    """Silence llama.cpp's loader chatter (it logs every tensor to stderr) once per process."""
    global _QUIET
    if _QUIET is None:
        _QUIET = ll.llama_log_callback(lambda level, text, data: None)
        ll.llama_log_set(_QUIET, None)
