"""Starting or joining Ray, the same way for every stage, job script and test.

    init_ray(cfg)          # local instance by default; RAY_ADDRESS or ray.address joins a cluster
    node_id()              # the node a task/actor runs on (stage manifests record them)

Ray 2.60 turns on token authentication for clusters started with ``ray start --head``.
Drivers joining such a cluster need ``RAY_AUTH_MODE=token``: when an address is given
and a token file exists, the variable is set here instead of turning auth off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from icebreaker_ray.config import Config

log = logging.getLogger(__name__)

# Environment every Ray worker of this project gets: never reach a model hub, keep
# thread pools at one per worker process (workers are already one per core).
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
}


# The address init_ray exported for a local instance it started (not a user's cluster).
_exported_address: str | None = None


def _address(cfg: Config | None, address: str | None) -> str | None:
    env = os.environ.get("RAY_ADDRESS")
    if env and env == _exported_address:
        env = None  # our own earlier local instance, since shut down
    return address or (cfg.ray.address if cfg else None) or env or None


def init_ray(cfg: Config | None = None, address: str | None = None, **kwargs) -> None:
    """Connect to a cluster (explicit address, config, or RAY_ADDRESS) or start a local Ray.

    Idempotent: a second call in the same process is a no-op.
    """
    import ray

    if ray.is_initialized():
        return
    target = _address(cfg, address)
    env = dict(WORKER_ENV)
    if cfg is not None and not cfg.models.offline:
        env.pop("HF_HUB_OFFLINE")
        env.pop("TRANSFORMERS_OFFLINE")
    for key in ("ICEBREAKER_CACHE", "RAY_AUTH_MODE"):
        if key in os.environ:
            env[key] = os.environ[key]
    init_kwargs = {
        "namespace": cfg.ray.namespace if cfg else "icebreaker",
        "runtime_env": {"env_vars": env},
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        **kwargs,
    }
    if target and target != "local":
        if (Path.home() / ".ray" / "auth_token").exists():
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        ray.init(address=target, **init_kwargs)
    else:
        if cfg is not None and cfg.ray.num_cpus:
            init_kwargs.setdefault("num_cpus", cfg.ray.num_cpus)
        init_kwargs.setdefault("include_dashboard", False)
        # "local" starts a fresh instance even when `ray start` left a cluster running on
        # this machine (address=None would join it). Export the new instance's address so
        # libraries that autodetect a cluster later (Ray Train, Serve) find this one.
        global _exported_address
        ray.init(address="local", **init_kwargs)
        _exported_address = ray.get_runtime_context().gcs_address
        os.environ["RAY_ADDRESS"] = _exported_address
    log.info("ray: %s", ray.cluster_resources())


def node_id() -> str:
    """The id of the Ray node running the caller ('' outside Ray)."""
    import ray

    if not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if _exported_address and os.environ.get("RAY_ADDRESS") == _exported_address:
        del os.environ["RAY_ADDRESS"]


def report_due(epoch: int, epochs: int, every: int) -> bool:
    """Whether a Ray Train loop reports (and checkpoints) after 0-based ``epoch`` of
    ``epochs``: every ``every`` epochs and always after the last. Every rank must call
    ``ray.train.report`` at the same epochs.

    >>> [e for e in range(7) if report_due(e, 7, 3)]
    [2, 5, 6]
    """
    return (epoch + 1) % every == 0 or epoch == epochs - 1


def fit_on_ray(loop, loop_config: dict, *, num_workers: int, run_name: str, storage_path: str,
               max_failures: int = 0, use_gpu: bool = False, cpus_per_worker: int = 1,
               keep_checkpoints: int | None = 2):
    """Run ``loop(config)`` on ``num_workers`` Ray Train workers (TorchTrainer: DDP over
    gloo on CPU, NCCL on GPU) and return the ``ray.train.Result``.

    Rerunning with the same ``run_name`` and ``storage_path`` resumes: the loop reads
    ``ray.train.get_checkpoint()``. ``storage_path`` may be a local dir or a URI
    (:func:`icebreaker_ray.data.io.train_storage`).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from icebreaker_ray.data.io import train_storage

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=run_name, **train_storage(storage_path),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints)),
    )
    return trainer.fit()


def split_blocks(table: pa.Table, actors: int, batch_size: int) -> list[pa.Table]:
    """``table`` cut into equal slices of at most ``batch_size`` rows, as many as a multiple
    of ``actors``: a small table is otherwise one block, which keeps all but one actor of a
    pool idle, and 3 blocks on 2 actors leave one idle for the last third of the work."""
    n = max(actors, -(-table.num_rows // batch_size), 1)
    n = -(-n // actors) * actors
    step = max(1, -(-table.num_rows // n))
    return [table.slice(i, step) for i in range(0, table.num_rows, step)] or [table]


def map_actor_pool(table: pa.Table, actor, kwargs: dict[str, Any], actors: int, batch_size: int,
                   empty: pa.Schema) -> pa.Table:
    """Ray Data map_batches of ``actor`` over ``table`` on a fixed-size actor pool;
    returns the concatenated output (``empty``'s schema when nothing came back)."""
    return map_blocks(split_blocks(table, actors, batch_size), actor, kwargs, actors, empty)


def map_blocks(blocks: list[pa.Table], actor, kwargs: dict[str, Any], actors: int,
               empty: pa.Schema) -> pa.Table:
    """:func:`map_actor_pool` over ready-cut blocks: each block is one batch (one call)."""
    import pyarrow as pa
    import ray

    ds = ray.data.from_arrow(blocks).map_batches(
        # batch_size=None: the block is the batch. A row count would let Ray Data bundle
        # small blocks back into one batch for one actor.
        actor, fn_constructor_kwargs=kwargs, batch_size=None, batch_format="pyarrow",
        # One batch in flight per actor: the first actor to finish loading its model
        # would otherwise take every queued batch while the others are still starting.
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1), num_cpus=1,
    )
    parts = [p for p in (ray.get(ref) for ref in ds.to_arrow_refs()) if p.num_rows]
    return pa.concat_tables(parts) if parts else empty.empty_table()
