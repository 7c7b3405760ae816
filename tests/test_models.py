"""Model provisioning. The integration tests load the real small models offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icebreaker_ray import models


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(
        models.GENERATORS, "ghost", models.PackagedGGUF("no_such_pkg", "x.gguf", "pip install ghost")
    )
    with pytest.raises(models.ModelNotFoundError, match="pip install ghost"):
        models.resolve_generator("ghost")


def test_missing_local_dir_and_unknown_hub_id_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFoundError, match="does not exist"):
        models.resolve_generator("./no/such/dir")
    with pytest.raises(models.ModelNotFoundError, match="not a Hugging Face model directory"):
        models.resolve_generator(str(tmp_path))
    with pytest.raises(models.ModelNotFoundError, match="Hugging Face cache while offline"):
        models.resolve_generator("nobody/no-such-model-7b")


def test_cache_dir_env_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "c"))
    assert models.cache_dir("/elsewhere") == tmp_path / "c"


def test_tiny_generator_generates(tiny_generator):
    model, tok = models.load_generator(tiny_generator)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    batch = tok(["Hello there"], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == batch["input_ids"].shape[1] + 5


@pytest.mark.integration
def test_smollm2_loads_offline_and_generates_10_tokens():
    model, tok = models.load_generator("smollm2-135m-instruct")
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    messages = [{"role": "user", "content": "Name one fruit."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = tok([prompt], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    new = out[0, batch["input_ids"].shape[1]:]
    assert new.numel() == 10 and tok.decode(new, skip_special_tokens=True).strip()
    # the converted copy is cached: resolving again returns the same directory, fast
    assert models.resolve_generator("smollm2-135m-instruct").endswith("smollm2-135m-instruct")


@pytest.mark.integration
def test_minilm_embeds_offline():
    emb = models.load_embedder("all-minilm-l6-v2")
    vecs = emb.encode(["One Piece cosplay", "Wano arc of One Piece", "index fund fees"],
                      normalize_embeddings=True)
    assert vecs.shape == (3, 384)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2]  # a real model, not noise
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
