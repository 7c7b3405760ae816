"""Starting or joining Ray, the same way for every stage, job script and test.

    init_ray(cfg)          # local instance by default; RAY_ADDRESS or ray.address joins a cluster
    node_id()              # the node a task/actor runs on (stage manifests record them)
    map_actor_pool(table, Actor, kwargs, actors, batch_size)   # Ray Data over an actor pool
    fit_on_ray(loop, config, ...)    # Ray Train TorchTrainer; inside a loop:
    train_epochs(model, loss, n=..., ...)   # the hand-written per-worker epoch loop
    restore_checkpoint(dir), report(metrics, save)   # resume / report, shared with the HF loop

Ray 2.60 turns on token authentication for clusters started with ``ray start --head``.
Drivers joining such a cluster need ``RAY_AUTH_MODE=token``: when an address is given
and a token file exists, the variable is set here instead of turning auth off.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

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


# ----------------------------------------------------------------------------- Ray Train


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
               keep_checkpoints: int | None = 2, worker_env: dict[str, str] | None = None):
    """Run ``loop(config)`` on ``num_workers`` Ray Train workers (TorchTrainer: DDP over
    gloo on CPU, NCCL on GPU; one GPU per worker with ``use_gpu``) and return the
    ``ray.train.Result``. ``worker_env``: environment variables of the worker processes.

    Rerunning with the same ``run_name`` and ``storage_path`` resumes: the loop reads
    ``ray.train.get_checkpoint()`` (see :func:`restore_checkpoint`). ``storage_path`` may be
    a local dir or a URI (:func:`icebreaker_ray.data.io.train_storage`).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from icebreaker_ray.data.io import train_storage

    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=run_name, **train_storage(storage_path),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
                             worker_runtime_env={"env_vars": worker_env} if worker_env else None),
    )
    return trainer.fit()


def restore_checkpoint(local_dir: str) -> str | None:
    """Inside a Ray Train loop: copy the run's latest checkpoint (``ray.train.get_checkpoint()``:
    a resumed run or a restarted worker group) into ``local_dir`` and return it; None on a
    fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        shutil.copytree(d, local_dir)
    return local_dir


def report(metrics: dict[str, Any], save: Callable[[str], None] | None = None) -> None:
    """Inside a Ray Train loop: ``ray.train.report(metrics)``, with a checkpoint of what
    ``save(directory)`` writes when ``save`` is given. Every rank must call this at the same
    points; ranks that pass ``save`` add their files to one checkpoint (rank 0 alone for a
    DDP model, every rank for DeepSpeed's shards)."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if save is not None:
            save(d)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)


def shard_indices(n: int, rank: int, world: int, seed: int | None = None, epoch: int = 0) -> np.ndarray:
    """Rank ``rank``'s rows of ``n`` for one epoch: a shuffle that is the same on every rank
    (seeded by ``seed`` and ``epoch``; row order when ``seed`` is None), padded by wrapping
    around to a multiple of ``world``, every ``world``-th row from ``rank``. Every rank gets
    ceil(n / world) rows, so the same number of batches: DDP's gradient all-reduces and
    the reports stay in step.

    >>> [shard_indices(7, r, 2).tolist() for r in (0, 1)]
    [[0, 2, 4, 6], [1, 3, 5, 0]]
    """
    order = np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)
    if n == 0:
        return order
    return np.resize(order, -(-n // world) * world)[rank::world]


def batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``indices`` cut into consecutive batches of ``batch_size`` (the last may be shorter).

    >>> [b.tolist() for b in batches(shard_indices(7, 1, 2), 2)]
    [[1, 3], [5, 0]]
    """
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


MODEL_FILE = "model.pt"
STATE_FILE = "state.json"


def load_state(directory: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load a :func:`train_epochs` checkpoint directory into ``model``; returns its state:
    ``epoch`` (the last one done, 0-based) and ``losses`` (mean loss per epoch so far)."""
    import torch

    model.load_state_dict(torch.load(Path(directory) / MODEL_FILE, weights_only=True, map_location="cpu"))
    return json.loads((Path(directory) / STATE_FILE).read_text())


def _gather_steps(steps: int) -> list[int]:
    """Every rank's step count (one all-gather; ``[steps]`` outside a process group)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [steps]
    import ray.train.torch

    mine = torch.tensor([steps], device=ray.train.torch.get_device())
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def train_epochs(model: torch.nn.Module,
                 loss: Callable[[torch.nn.Module, np.ndarray, np.random.Generator], torch.Tensor], *,
                 n: int, epochs: int, batch_size: int, every: int, seed: int,
                 optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
                 prepare_kwargs: dict[str, Any] | None = None) -> None:
    """The per-worker loop of a hand-written Ray Train run (the scorer's, the ranker's).

    ``model`` is the unwrapped model; it is restored from the latest checkpoint when there
    is one (epoch, loss history, weights), then wrapped for DDP (``prepare_kwargs`` go to
    DDP) and trained with ``optimizer(ddp_model)``. Each epoch every rank runs the same
    number of batches over its :func:`shard_indices` of the ``n`` rows:
    ``loss(ddp_model, row_indices, rng)`` is the model-specific part, returning the
    batch's loss (``rng`` is seeded by seed, rank and epoch). After the epochs
    :func:`report_due` picks, every rank reports ``epoch``, ``loss`` (the rank's mean over
    its rows), ``steps`` and ``rank_steps`` (every rank's batch count this epoch) and rank
    0 checkpoints ``model.pt`` + ``state.json`` (read back with :func:`load_state`).
    """
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    start, losses = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        restored = restore_checkpoint(os.path.join(tmp, "resume"))
        if restored:
            state = load_state(restored, model)
            start, losses = state["epoch"] + 1, list(state["losses"])
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=prepare_kwargs)
    opt = optimizer(ddp)

    def save(epoch: int) -> Callable[[str], None]:
        def write(d: str) -> None:
            import torch

            torch.save(model.state_dict(), Path(d) / MODEL_FILE)
            # The loss history travels in the checkpoint: Ray keeps only the last few.
            (Path(d) / STATE_FILE).write_text(json.dumps({"epoch": epoch, "losses": losses}))
        return write

    for epoch in range(start, epochs):
        ddp.train()
        rng = np.random.default_rng([seed, rank, epoch])
        total, rows, steps = 0.0, 0, 0
        for idx in batches(shard_indices(n, rank, world, seed, epoch), batch_size):
            batch_loss = loss(ddp, idx, rng)
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
            total, rows, steps = total + float(batch_loss.detach()) * len(idx), rows + len(idx), steps + 1
        losses.append(total / max(rows, 1))
        if report_due(epoch, epochs, every):
            metrics = {"epoch": epoch, "loss": losses[-1], "steps": steps, "rank_steps": _gather_steps(steps)}
            report(metrics, save(epoch) if rank == 0 else None)


# ----------------------------------------------------------------------------- Ray Data


def split_blocks(table: pa.Table, actors: int, batch_size: int) -> list[pa.Table]:
    """``table`` cut into equal slices of at most ``batch_size`` rows, as many as a multiple
    of ``actors``: a small table is otherwise one block, which keeps all but one actor of a
    pool idle, and 3 blocks on 2 actors leave one idle for the last third of the work."""
    n = max(actors, -(-table.num_rows // batch_size), 1)
    n = -(-n // actors) * actors
    step = max(1, -(-table.num_rows // n))
    return [table.slice(i, step) for i in range(0, table.num_rows, step)] or [table]


def map_actor_pool(table: pa.Table, actor, kwargs: dict[str, Any], actors: int, batch_size: int,
                   empty: pa.Schema | None = None, batch_format: str = "pyarrow") -> pa.Table:
    """Ray Data map_batches of ``actor`` over ``table`` on a fixed-size actor pool, in
    batches of at most ``batch_size`` rows (:func:`split_blocks`); returns the concatenated
    output, in no particular order (sort it by a key column). ``batch_format``: what the
    actor takes and returns ("pyarrow", "pandas" or "numpy"). With nothing to return:
    ``empty``'s empty table (no columns without ``empty``)."""
    return map_blocks(split_blocks(table, actors, batch_size), actor, kwargs, actors, empty, batch_format)


def map_blocks(blocks: list[pa.Table], actor, kwargs: dict[str, Any], actors: int,
               empty: pa.Schema | None = None, batch_format: str = "pyarrow") -> pa.Table:
    """:func:`map_actor_pool` over ready-cut blocks: each block is one batch (one call)."""
    import pyarrow as pa
    import ray

    ds = ray.data.from_arrow(blocks).map_batches(
        # batch_size=None: the block is the batch. A row count would let Ray Data bundle
        # small blocks back into one batch for one actor.
        actor, fn_constructor_kwargs=kwargs, batch_size=None, batch_format=batch_format,
        # One batch in flight per actor: the first actor to finish loading its model
        # would otherwise take every queued batch while the others are still starting.
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1), num_cpus=1,
    )
    parts = [p for p in (ray.get(ref) for ref in ds.to_arrow_refs()) if p.num_rows]
    if parts:
        return pa.concat_tables(parts, promote_options="default")
    return empty.empty_table() if empty is not None else pa.table({})


def to_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    """The columns of a :func:`map_actor_pool` result as numpy arrays; a column an actor
    returned as an n-d array (Ray Data's tensor column) comes back n-d."""
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(table).to_batch_format("numpy")
