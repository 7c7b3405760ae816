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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


def _address(cfg: Config | None, address: str | None) -> str | None:
    return address or (cfg.ray.address if cfg else None) or os.environ.get("RAY_ADDRESS") or None


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
        ray.init(**init_kwargs)
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


def fit_on_ray(loop, loop_config: dict, *, num_workers: int, run_name: str, storage_path: str,
               max_failures: int = 0, use_gpu: bool = False, cpus_per_worker: int = 1,
               keep_checkpoints: int | None = 2):
    """Run ``loop(config)`` on ``num_workers`` Ray Train workers (TorchTrainer: DDP over
    gloo on CPU, NCCL on GPU) and return the ``ray.train.Result``.

    Rerunning with the same ``run_name`` and ``storage_path`` resumes: the loop reads
    ``ray.train.get_checkpoint()``. ``storage_path`` may be a local dir or a URI.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=run_name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints)),
    )
    return trainer.fit()
