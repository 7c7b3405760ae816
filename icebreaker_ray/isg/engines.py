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
  The part every prompt shares (the chat template and the system prompt, up to where the
  last message's text begins) is decoded once and kept in the KV cache across calls: each
  prompt's sequence starts from a copy of those cells and prefills only the rest.
* ``vllm`` — GPU presets only; sampling runs through Ray Data LLM / Ray Serve LLM
  (:mod:`icebreaker_ray.isg.vllm`), not through this interface.

Serving takes requests one by one, whenever they come: :func:`make_batcher` wraps an engine
in a batcher whose ``submit`` returns a future. On llamacpp it is a
:class:`ContinuousBatcher` (a request's prompt joins the running decode loop at its next
step, its sequences leave it when they finish: continuous batching); on other engines a
:class:`StaticBatcher` (the requests that are pending when the engine is free go into one
``sample`` call). Neither waits for company. A request alone in the continuous batcher
may decode half of its samples on a second context with half of the threads
(``serve.split_alone``, :class:`_SideLane`): on 2 CPU cores two one-sequence decodes side
by side beat one decode of two sequences.

Both CPU engines render the prompt with the HF tokenizer's chat template, tokenize and
detokenize with it, so they read and write the same tokens; they sample with temperature,
transformers' default top-k (50) and top-p. ``on_step`` (the server's streaming) receives,
after each decoding step, ``{sequence: (text so far, finished)}`` for the sequences that
advanced; sequence ``i * num_return + j`` is sample ``j`` of conversation ``i``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

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
        # Tokens whose KV cells the context's last sequence id keeps between calls.
        self.prefix: list[int] = []
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
            self.ctx, self.prefix = None, []
        n_ctx, n_seq = max(n_ctx, have_ctx, 512), max(n_seq, have_seq)
        self.ctx, self.ctx_size = self.new_context(n_ctx, n_seq, self.threads), (n_ctx, n_seq)
        return self.ctx

    def new_context(self, n_ctx: int, n_seq: int, threads: int):
        """A fresh llama.cpp context on this engine's weights (the caller frees it, unless
        it is the engine's own, see :meth:`_context`)."""
        ll = self.ll
        p = ll.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch = n_ctx, n_ctx, min(n_ctx, 512)
        p.n_seq_max = n_seq
        p.n_threads = p.n_threads_batch = threads
        # One cache shared by all sequences: the copies of a prompt point at its cells
        # instead of each holding its own.
        p.kv_unified = True
        p.no_perf = True
        ctx = ll.llama_init_from_model(self.model, p)
        if not ctx:
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} cells, {n_seq} sequences")
        return ctx

    def sample(self, conversations, *, num_return=1, temperature=0.9, top_p=0.95,
               max_new_tokens=96, seed=None, do_sample=True, on_step=None):
        if num_return < 1 or max_new_tokens < 1:
            raise ValueError("num_return and max_new_tokens must be >= 1")
        prompts = _prompt_ids(self.tok, conversations)
        prefix = _shared_prefix(self.tok, conversations, prompts)
        seed = random.randrange(2**31) if seed is None else seed
        per_call = max(1, self.batch_size // num_return)
        out: list[list[str]] = []
        for start in range(0, len(prompts), per_call):
            group = list(range(start, min(start + per_call, len(prompts))))
            out += self._group(prompts, group, prefix, num_return, temperature, top_p,
                               max_new_tokens, seed, do_sample, on_step)
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

    def _cached_prefix(self, ctx, prefix: list[int]) -> int:
        """Make the context's last sequence hold the KV cells of ``prefix`` (decoded alone,
        so its cells are the same whichever call computed them) and drop every other
        sequence; returns that sequence's id."""
        ll = self.ll
        mem, keep = ll.llama_get_memory(ctx), self.ctx_size[1] - 1
        if self.prefix == prefix:
            ll.llama_memory_seq_keep(mem, keep)
            return keep
        ll.llama_memory_clear(mem, True)
        self.prefix = []
        if prefix:
            batch = ll.llama_batch_init(len(prefix), 0, 1)
            try:
                for pos, token in enumerate(prefix):
                    _put(batch, pos, token, pos, keep, False)
                batch.n_tokens = len(prefix)
                self._decode(ctx, batch)
            finally:
                ll.llama_batch_free(batch)
            self.prefix = list(prefix)
        return keep

    def _group(self, prompts, group, prefix, n, temperature, top_p, max_new_tokens, seed,
               do_sample, on_step) -> list[list[str]]:
        """Sample ``n`` completions for each prompt index in ``group``, all decoded together."""
        ll = self.ll
        n_seq = len(group) * n
        shared = len(prefix)
        prompt_tokens = sum(len(prompts[i]) - shared for i in group)
        n_ctx = shared + prompt_tokens + n_seq * (max_new_tokens + 1)
        if n_ctx > self.max_context:
            raise EngineError(f"{len(group)} prompts x {n} samples need {n_ctx} KV cells, more "
                              f"than {self.max_context}: lower generation.batch_size")
        ctx = self._context(n_ctx, n_seq + 1)  # + the sequence that keeps the shared prefix
        kept = self._cached_prefix(ctx, prefix)
        mem = ll.llama_get_memory(ctx)
        batch = ll.llama_batch_init(max(prompt_tokens, n_seq), 0, 1)
        # Sample j of prompt i draws from its own generator, seeded by (seed, i, j).
        chains = self._samplers([hash((seed, i, j)) for i in group for j in range(n)],
                                temperature, top_p, do_sample)
        try:
            # Prefill: every prompt once, into the first sequence of its group, from a copy
            # of the shared prefix's cells; logits of its last token only.
            last, k = [], 0
            for g, i in enumerate(group):
                if shared:
                    ll.llama_memory_seq_cp(mem, kept, g * n, -1, -1)
                for pos in range(shared, len(prompts[i])):
                    _put(batch, k, prompts[i][pos], pos, g * n, pos == len(prompts[i]) - 1)
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


# ----------------------------------------------------------------------------- batchers (serving)

JobStepFn = Callable[[dict[int, tuple[str, bool]]], None]


class Batcher(Protocol):
    def submit(self, conversation: list[dict[str, str]], on_step: JobStepFn | None = None,
               seed: int | None = None) -> Future:
        """Queue one request; the future's result is its ``num_return`` completions.
        ``on_step`` receives ``{sample: (text so far, finished)}`` after each step."""
        ...

    def close(self) -> None: ...


def make_batcher(engine: Engine, *, num_return: int, max_requests: int, temperature: float,
                 top_p: float, max_new_tokens: int, split_alone: bool = False) -> Batcher:
    """The serving batcher of ``engine``: continuous batching where the engine has it
    (llamacpp; ``split_alone``: see :class:`ContinuousBatcher`), else pending requests
    batched per engine call."""
    kw = dict(num_return=num_return, temperature=temperature, top_p=top_p,
              max_new_tokens=max_new_tokens)
    if isinstance(engine, LlamaCppEngine):
        return ContinuousBatcher(engine, max_sequences=max_requests * num_return,
                                 split_alone=split_alone, **kw)
    return StaticBatcher(engine, max_requests=max_requests, **kw)


_CLOSE = object()


@dataclass
class _Request:
    conversation: list[dict[str, str]]
    on_step: JobStepFn | None
    seed: int | None
    future: Future = field(default_factory=Future)


def news_by_request(news: dict[int, tuple[str, bool]], num_return: int
                    ) -> dict[int, dict[int, tuple[str, bool]]]:
    """An ``on_step`` report of a call with ``num_return`` samples per conversation, split
    per conversation: sequence ``s`` is sample ``s % num_return`` of conversation
    ``s // num_return``.

    >>> news_by_request({0: ("a", False), 3: ("b", True)}, 2)
    {0: {0: ('a', False)}, 1: {1: ('b', True)}}
    """
    per: dict[int, dict[int, tuple[str, bool]]] = {}
    for seq, value in news.items():
        per.setdefault(seq // num_return, {})[seq % num_return] = value
    return per


class _QueueThread:
    """What both batchers share: a queue of requests and the one thread that owns the
    engine and runs the subclass's ``_loop`` until :meth:`close`."""

    def _start(self, name: str) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def submit(self, conversation, on_step=None, seed=None) -> Future:
        request = _Request(conversation, on_step, seed)
        self.queue.put(request)
        return request.future

    def close(self) -> None:
        self.queue.put(_CLOSE)
        self.thread.join()

    def _loop(self) -> None:
        raise NotImplementedError


class StaticBatcher(_QueueThread):
    """Any engine, one ``sample`` call at a time: when the engine is free, the requests
    pending (at most ``max_requests``) go into the next call together. A request that
    arrives while a call runs waits for it to end."""

    def __init__(self, engine: Engine, *, num_return: int, max_requests: int, temperature: float,
                 top_p: float, max_new_tokens: int) -> None:
        self.engine, self.n, self.max_requests = engine, num_return, max_requests
        self.sampling = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        self._start("static-batcher")

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is _CLOSE:
                return
            batch = [first]
            while len(batch) < self.max_requests:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is _CLOSE:
                    self.queue.put(_CLOSE)
                    break
                batch.append(item)

            def route(news, batch=batch):
                for i, part in news_by_request(news, self.n).items():
                    if batch[i].on_step is not None:
                        batch[i].on_step(part)

            try:
                texts = self.engine.sample([r.conversation for r in batch], num_return=self.n,
                                           seed=batch[0].seed, on_step=route, **self.sampling)
            except BaseException as exc:  # handed to every caller of the batch
                for r in batch:
                    r.future.set_exception(exc)
                continue
            for r, t in zip(batch, texts, strict=True):
                r.future.set_result(t)


@dataclass
class _Live:
    """A request inside the continuous batch: its sequence ids, KV cells and samples."""

    request: _Request
    prompt: list[int]
    seqs: list[int]
    cells: int
    chains: list[Any]
    tokens: list[list[int]]
    done: list[bool]
    rows: list[int]
    lanes: list[int] = field(default_factory=list)  # per sample: 0 the main context, 1 the side lane


class _SideLane:
    """A second llama.cpp context on the same weights, with its own thread(s), that
    decodes part of a request's samples in parallel with the main context.

    One ``llama_decode`` of two sequences costs about twice one of a single sequence on a
    2-core CPU (the matmuls of a tiny batch do not reuse the weights they read), while two
    one-thread contexts each decoding one sequence run side by side. So a request alone
    in the batcher decodes its samples split over the two contexts; as soon as another
    request is waiting, the side lane's sequences move back into the main context (their
    KV cells copied with ``llama_state_seq_get_data``/``set_data``, their samplers kept)
    and everything decodes together again, which is faster from about three sequences on.
    """

    def __init__(self, engine: LlamaCppEngine, n_ctx: int, n_seq: int, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.ll, self.n_ctx, self.threads = engine.ll, n_ctx, threads
        self.ctx = engine.new_context(n_ctx, n_seq, threads)
        self.mem = self.ll.llama_get_memory(self.ctx)
        self.batch = self.ll.llama_batch_init(n_ctx, 0, 1)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="llamacpp-side-lane")
        self.job: _Live | None = None  # the request whose samples it decodes
        self.moves = 0  # sequences moved in or out (tests, logs)

    def copy_in(self, src_ctx, src_seq: int, dst_seq: int) -> None:
        """Copy sequence ``src_seq`` of ``src_ctx`` into this lane's ``dst_seq``."""
        _copy_seq(self.ll, src_ctx, src_seq, self.ctx, dst_seq)
        self.moves += 1

    def move_out(self, seq: int, dst_ctx, dst_seq: int) -> None:
        """Move this lane's ``seq`` into ``dst_seq`` of ``dst_ctx``."""
        _copy_seq(self.ll, self.ctx, seq, dst_ctx, dst_seq)
        self.ll.llama_memory_seq_rm(self.mem, seq, -1, -1)
        self.moves += 1

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)


def _copy_seq(ll, src_ctx, src_seq: int, dst_ctx, dst_seq: int) -> None:
    """Copy one sequence's KV cells from one context to another on the same weights."""
    import ctypes

    size = ll.llama_state_seq_get_size(src_ctx, src_seq)
    buf = (ctypes.c_uint8 * size)()
    if ll.llama_state_seq_get_data(src_ctx, buf, size, src_seq) != size:
        raise EngineError(f"llama.cpp could not read the KV cells of sequence {src_seq}")
    if ll.llama_state_seq_set_data(dst_ctx, buf, size, dst_seq) == 0:
        raise EngineError(f"llama.cpp could not restore a sequence's KV cells ({size} bytes)")


class ContinuousBatcher(_QueueThread):
    """llama.cpp continuous batching for serving. One thread owns the engine's context
    and loops: requests that arrived join at the next step (their prompt is prefilled in
    the same ``llama_decode`` as one token of every running sequence, from the cached
    shared prefix), each of a request's ``num_return`` samples decodes on its own
    sequence, and a request leaves the batch, freeing its sequences and KV cells, as soon
    as all of its samples have finished. At most ``max_sequences`` sequences run at once;
    a request that does not fit waits for room. The engine must not be used for anything
    else while the batcher runs.

    ``split_alone``: a request that arrives to an idle batcher decodes the second half of
    its samples on a :class:`_SideLane` (half of the engine's threads each) until another
    request comes or its first half is done; needs ``num_return`` >= 2 and 2+ threads."""

    def __init__(self, engine: LlamaCppEngine, *, num_return: int, max_sequences: int,
                 temperature: float, top_p: float, max_new_tokens: int,
                 max_prompt_tokens: int = 1024, split_alone: bool = False) -> None:
        if num_return < 1 or max_new_tokens < 1:
            raise ValueError("num_return and max_new_tokens must be >= 1")
        self.e, self.n = engine, num_return
        self.max_sequences = max(max_sequences, num_return)
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        per_request = max_prompt_tokens + num_return * (max_new_tokens + 1)
        self.n_ctx = min(engine.max_context,
                         max_prompt_tokens + (self.max_sequences // num_return) * per_request)
        self.side_threads = engine.threads // 2 if split_alone and num_return > 1 else 0
        self.side_ctx = per_request + 64
        self.side: _SideLane | None = None
        self._start("llamacpp-batcher")

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        ll, e = self.e.ll, self.e
        ctx = e._context(self.n_ctx, self.max_sequences + 1)  # + the shared prefix's sequence
        self.keep = e.ctx_size[1] - 1
        self.mem = ll.llama_get_memory(ctx)
        batch = ll.llama_batch_init(e.ctx_size[0], 0, 1)
        self.pending: deque[_Request] = deque()
        self.live: list[_Live] = []
        self.free = list(range(self.max_sequences))
        self.cells_free = e.ctx_size[0] - len(e.prefix)
        if self.side_threads:
            try:
                self.side = _SideLane(e, self.side_ctx, self.n, self.side_threads)
            except EngineError:  # serving goes on in one context
                log.warning("no second llama.cpp context: lone requests will not be split",
                            exc_info=True)
        closing = False
        try:
            while True:
                # Wait for work only when nothing is running; else take what has arrived.
                while not closing:
                    try:
                        item = self.queue.get(block=not self.live and not self.pending)
                    except queue.Empty:
                        break
                    if item is _CLOSE:
                        closing = True
                    else:
                        self.pending.append(item)
                if closing and not self.live:
                    for r in self.pending:
                        r.future.set_exception(RuntimeError("the batcher was closed"))
                    return
                admitted: list[_Live] = []
                try:
                    self._step(ctx, batch, admitted)
                except Exception as exc:  # fail what was running, start over with a clean cache
                    log.exception("llama.cpp batch step failed")
                    for job in [*self.live, *admitted]:
                        self._release(job, self.free)
                        if not job.request.future.done():
                            job.request.future.set_exception(exc)
                    self.live = []
                    ll.llama_memory_clear(self.mem, True)
                    e.prefix = []
                    self.cells_free = e.ctx_size[0]
                    if self.side is not None:
                        ll.llama_memory_clear(self.side.mem, True)
                        self._unsplit(ctx)
        finally:
            ll.llama_batch_free(batch)
            for job in self.live:
                self._release(job, self.free)
            if self.side is not None:
                self.side.close()

    def _step(self, ctx, batch, admitted: list[_Live]) -> None:
        """Admit what fits, decode one token of every running sequence together with the
        new prompts, sample, report, and finish the requests that are done."""
        ll, e, side = self.e.ll, self.e, self.side
        if side is not None and side.job is not None and (
                self.pending or not any(not job.done[j] and job.lanes[j] == 0
                                        for job in self.live for j in range(self.n))):
            self._merge(ctx)  # company arrived, or the main context's half is done
        rows = 0
        while self.pending and len(self.free) >= self.n:
            request = self.pending[0]
            try:
                prompt = _prompt_ids(e.tok, [request.conversation])[0]
                alone = not self.live and not admitted
                if alone:  # idle: the cached prefix may change
                    e._cached_prefix(ctx, _shared_prefix(e.tok, [request.conversation], [prompt]))
                    self.cells_free = e.ctx_size[0] - len(e.prefix)
                shared = (len(e.prefix) if prompt[:len(e.prefix)] == e.prefix
                          and len(prompt) > len(e.prefix) else 0)
                need = len(prompt) - shared + self.n * (self.max_new_tokens + 1)
                split = (side is not None and alone and len(self.pending) == 1
                         and len(prompt) + self.n * (self.max_new_tokens + 1) <= side.n_ctx)
                lanes = [int(split and j >= (self.n + 1) // 2) for j in range(self.n)]
                # side-lane samples come back with their own copy of the prompt's cells
                need += sum(lanes) * len(prompt)
                if need > e.ctx_size[0] - len(e.prefix):
                    raise EngineError(f"a prompt of {len(prompt)} tokens does not fit the "
                                      f"batcher's {e.ctx_size[0]} KV cells")
            except Exception as exc:
                self.pending.popleft()
                request.future.set_exception(exc)
                continue
            if need > self.cells_free:
                break  # wait for running requests to free their cells
            self.pending.popleft()
            seqs = [self.free.pop() for _ in range(self.n)]
            seed = random.randrange(2**31) if request.seed is None else request.seed
            job = _Live(request, prompt, seqs, need,
                        e._samplers([hash((seed, 0, j)) for j in range(self.n)],
                                    self.temperature, self.top_p, True),
                        [[] for _ in seqs], [False] * self.n, [0] * self.n, lanes)
            admitted.append(job)
            self.cells_free -= need
            if shared:
                ll.llama_memory_seq_cp(self.mem, self.keep, seqs[0], -1, -1)
            for pos in range(shared, len(prompt)):
                _put(batch, rows, prompt[pos], pos, seqs[0], pos == len(prompt) - 1)
                rows += 1
            job.rows = [rows - 1] * self.n  # every sample starts from the prompt's last logits
        side_rows = 0
        for job in self.live:
            for j, s in enumerate(job.seqs):
                if job.done[j]:
                    continue
                pos = len(job.prompt) + len(job.tokens[j]) - 1
                if job.lanes[j]:  # on the side lane, sample j is its sequence j
                    _put(side.batch, side_rows, job.tokens[j][-1], pos, j, True)
                    job.rows[j] = side_rows
                    side_rows += 1
                else:
                    _put(batch, rows, job.tokens[j][-1], pos, s, True)
                    job.rows[j] = rows
                    rows += 1
        if rows == 0 and side_rows == 0:
            return
        side_decode = None
        if side_rows:  # both contexts decode at once (ctypes lets go of the GIL)
            side.batch.n_tokens = side_rows
            side_decode = side.pool.submit(e._decode, side.ctx, side.batch)
        try:
            if rows:
                batch.n_tokens = rows
                e._decode(ctx, batch)
        finally:
            if side_decode is not None:
                side_decode.result()
        for job in admitted:  # the other samples of a prompt share its cells
            for j, s in enumerate(job.seqs[1:], start=1):
                if job.lanes[j]:
                    side.copy_in(ctx, job.seqs[0], j)
                else:
                    ll.llama_memory_seq_cp(self.mem, job.seqs[0], s, -1, -1)
            if any(job.lanes):
                side.job = job
                ll.llama_set_n_threads(ctx, e.threads - side.threads, e.threads - side.threads)
        fresh = {id(job) for job in admitted}  # their first tokens come from the prompt's logits
        self.live += admitted
        admitted.clear()
        for job in list(self.live):
            news = {}
            for j in range(self.n):
                if job.done[j]:
                    continue
                on_side = job.lanes[j] and id(job) not in fresh
                token = ll.llama_sampler_sample(job.chains[j], side.ctx if on_side else ctx,
                                                job.rows[j])
                if token in e.stop_ids or ll.llama_vocab_is_eog(e.vocab, token):
                    job.done[j] = True
                else:
                    job.tokens[j].append(token)
                    job.done[j] = len(job.tokens[j]) >= self.max_new_tokens
                news[j] = (e._text(job.tokens[j]), job.done[j])
            if job.request.on_step is not None and news:
                try:
                    job.request.on_step(news)
                except Exception:  # one caller's callback must not stop the others
                    log.exception("on_step callback failed")
            if all(job.done):
                self.live.remove(job)
                self._release(job, self.free)
                self.cells_free += job.cells
                job.request.future.set_result([e._text(t) for t in job.tokens])

    def _merge(self, ctx) -> None:
        """Move the side lane's live sequences into the main context and decode everything
        there with all threads again."""
        job, side = self.side.job, self.side
        for j in range(self.n):
            if job.lanes[j]:
                if job.done[j]:
                    self.e.ll.llama_memory_seq_rm(side.mem, j, -1, -1)
                else:
                    side.move_out(j, ctx, job.seqs[j])
                job.lanes[j] = 0
        self._unsplit(ctx)

    def _unsplit(self, ctx) -> None:
        self.side.job = None
        self.e.ll.llama_set_n_threads(ctx, self.e.threads, self.e.threads)

    def _release(self, job: _Live, free: list[int]) -> None:
        """Give a finished (or failed) request's sequences, KV cells and samplers back."""
        if self.side is not None and self.side.job is job:
            for j in range(self.n):
                if job.lanes[j]:
                    self.e.ll.llama_memory_seq_rm(self.side.mem, j, -1, -1)
            self._unsplit(self.e.ctx)
        for s in job.seqs:
            self.e.ll.llama_memory_seq_rm(self.mem, s, -1, -1)
        for chain in job.chains:
            self.e.ll.llama_sampler_free(chain)
        job.chains = []
        free.extend(job.seqs)
        job.seqs = []


def _shared_prefix(tok: Any, conversations: Sequence[list[dict[str, str]]],
                   prompts: Sequence[list[int]]) -> list[int]:
    """The tokens every prompt starts with, up to where the last message's text begins
    (the chat template and the messages before it, e.g. the system prompt): the common
    prefix of the prompts and of the first conversation rendered with that text emptied.
    At least one token of every prompt is left to prefill (its logits start sampling)."""
    if not prompts:
        return []
    last = conversations[0][-1]
    probe = _prompt_ids(tok, [[*conversations[0][:-1], {**last, "content": ""}]])[0]
    n = min(len(probe), *(len(p) - 1 for p in prompts))
    for p in prompts:
        n = next((j for j in range(n) if p[j] != probe[j]), n)
    return list(probe[:max(n, 0)])


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
