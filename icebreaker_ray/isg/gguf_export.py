"""GGUF copies of Hugging Face generators, for the ``llamacpp`` engine.

    path = gguf_file("runs/demo/sft/model")          # runs/demo/sft/model-gguf/model-q8_0.gguf
    gguf_file("runs/demo/sft/model", outtype="f32")  # one file per outtype, side by side
    gguf_file("runs/demo/sft/model", outtype="q4_0") # quantized from the f16 copy

Every generator the pipeline trains (SFT, DPO, each iterate round) and the base model's
HF copy (``models.resolve_generator``) is converted the first time an engine loads it, and
the file is kept next to the model folder (``<model>-gguf/``) with a manifest: the model
folder's listing (``io.listing``: file, size, mtime), the converter's version and hash, and
the outtype. A file whose manifest does not match the folder as it is now is stale and
converted again, so a retrained model is never served from an old GGUF.

Why on first load rather than at the end of each training stage: one code path covers
every model an engine may be pointed at (trained ones, a round the gate did not promote, a
user's own HF folder, the base model), an ``hf``-only run never pays for it, and the cost is
seconds (the 135M SFT model: 6.4 s to q8_0) against minutes of training. Concurrent loaders
(the actors of a Ray Data pool) serialize on a file lock; one converts, the others reuse.
A model in storage (``s3://``) is converted next to this node's cached copy (``io.local_dir``).

The converter is llama.cpp's own ``convert_hf_to_gguf.py``, which ships in the
llama-cpp-python source distribution; ``make setup`` downloads that sdist into the cache
(``<cache>/sdist/``), so nothing is fetched at run time. It runs in a subprocess with its
vendored ``gguf-py`` (newer than the ``gguf`` wheel) and needs ``sentencepiece`` importable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

from icebreaker_ray.data import io
from icebreaker_ray.models import _file_lock, cache_dir

#: The llama-cpp-python release whose engine and converter the project uses (pyproject pins it).
LLAMA_CPP_VERSION = "0.3.36"
#: Weight types the converter writes itself.
CONVERTER_OUTTYPES = ("q8_0", "f16", "bf16", "f32")
#: Weight types made from the f16 GGUF by llama.cpp's quantizer (``llama_model_quantize``,
#: what the ``llama-quantize`` tool runs), with the llama.cpp file type of each. On the 135M
#: generator (hidden size 576, not a multiple of the k-quants' 256-blocks) the k-quants keep
#: many tensors at q8_0 or q6_k, so q4_0/q5_0 are the ones that actually shrink it.
QUANTIZED_OUTTYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
                      "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
                      "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                      "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
OUTTYPES = CONVERTER_OUTTYPES + tuple(QUANTIZED_OUTTYPES)
_SDIST = f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
_DOWNLOAD = (f"pip download --no-deps --no-binary :all: llama-cpp-python=={LLAMA_CPP_VERSION} "
             f"-d <cache>/sdist   (make setup does this)")


class GGUFExportError(RuntimeError):
    """The converter is missing or failed; the message says why and what to run."""


def converter_dir(cache: str | None = None) -> Path:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py`` (+ ``conversion/``, ``gguf-py/``),
    unpacked once from the llama-cpp-python sdist in ``<cache>/sdist/``."""
    root = cache_dir(cache)
    target = root / "llama-cpp-convert" / LLAMA_CPP_VERSION
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    # make setup keeps the sdist in ICEBREAKER_CACHE (default ~/.cache/icebreaker-ray); a
    # preset's models.cache_dir may point elsewhere.
    places = dict.fromkeys([root / "sdist" / _SDIST, cache_dir() / "sdist" / _SDIST])
    sdist = next((p for p in places if p.is_file()), None)
    if sdist is None:
        raise GGUFExportError(f"the GGUF converter needs {' or '.join(map(str, places))}; "
                              f"download it with: {_DOWNLOAD}")
    with _file_lock(target.parent / f".{LLAMA_CPP_VERSION}.lock"):
        if (target / "convert_hf_to_gguf.py").is_file():
            return target
        prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                           and m.name[len(prefix):].split("/", 1)[0] in _CONVERTER_FILES
                           and (m.isfile() or m.isdir())]
                for m in members:
                    m.name = m.name[len(prefix):]
                tar.extractall(tmp, members=members, filter="data")
            if not (tmp / "convert_hf_to_gguf.py").is_file():
                raise GGUFExportError(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _converter_id(folder: Path) -> str:
    digest = hashlib.sha256((folder / "convert_hf_to_gguf.py").read_bytes()).hexdigest()[:16]
    return f"llama-cpp-python {LLAMA_CPP_VERSION} convert_hf_to_gguf.py sha256:{digest}"


def gguf_dir(model_dir: str) -> Path:
    """Where the GGUF copies of a local model folder live: ``<model_dir>-gguf/``."""
    return Path(model_dir.rstrip("/") + "-gguf")


def _expected(model_dir: str, outtype: str, converter: str) -> dict:
    return {"source": [list(f) for f in io.listing(model_dir)], "converter": converter,
            "outtype": outtype}


def _fresh(out: Path, manifest: Path, expected: dict) -> bool:
    if not (out.is_file() and manifest.is_file()):
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (all(recorded.get(k) == v for k, v in expected.items())
            and recorded.get("bytes") == out.stat().st_size)


def gguf_file(model_dir: str, outtype: str = "q8_0", cache: str | None = None) -> str:
    """A current GGUF of the HF model folder ``model_dir`` (local path), converted if
    missing or stale (see module docstring). Returns its path."""
    if outtype not in OUTTYPES:
        raise ValueError(f"GGUF outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    src = Path(model_dir)
    if not (src / "config.json").is_file():
        raise GGUFExportError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    folder = gguf_dir(str(src.resolve()))
    out, manifest = folder / f"model-{outtype}.gguf", folder / f"manifest-{outtype}.json"
    conv = converter_dir(cache)
    expected = _expected(str(src), outtype, _converter_id(conv))
    if _fresh(out, manifest, expected):
        return str(out)
    with _file_lock(folder / f".{outtype}.lock"):
        expected = _expected(str(src), outtype, _converter_id(conv))  # may have changed meanwhile
        if _fresh(out, manifest, expected):
            return str(out)
        started = time.perf_counter()
        tmp = folder / f".model-{outtype}.tmp-{uuid.uuid4().hex[:8]}.gguf"
        try:
            if outtype in QUANTIZED_OUTTYPES:
                _quantize(gguf_file(model_dir, "f16", cache), tmp, outtype)
            else:
                _convert(conv, src, tmp, outtype)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        record = {**expected, "file": out.name, "bytes": out.stat().st_size,
                  "seconds": round(time.perf_counter() - started, 2), "created": time.time()}
        io.write_json(str(manifest), record)
    return str(out)


def _quantize(f16: str, out: Path, outtype: str) -> None:
    """llama.cpp's quantizer from the f16 GGUF (in process: it is a C call)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED_OUTTYPES[outtype])
    params.nthread = max(os.cpu_count() or 1, 1)
    rc = llama_cpp.llama_model_quantize(f16.encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise GGUFExportError(f"quantizing {f16} to {outtype} failed (llama_model_quantize returned {rc})")


def _convert(conv: Path, src: Path, out: Path, outtype: str) -> None:
    # The converter puts its own gguf-py first on sys.path unless NO_LOCAL_GGUF is set.
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, str(conv / "convert_hf_to_gguf.py"), str(src), "--outfile", str(out),
           "--outtype", outtype]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        hint = ""
        if "sentencepiece" in tail:
            hint = " (the converter needs sentencepiece: pip install sentencepiece)"
        raise GGUFExportError(f"converting {src} to GGUF ({outtype}) failed{hint}:\n{tail}")
