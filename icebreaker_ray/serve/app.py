"""The Ray Serve application: four deployments composed with ``.bind()`` (DESIGN §7).

    app = build_app(load_config("configs/local-cpu.yaml"), run_dir="runs/demo")
    url = run_local(cfg, run_dir="runs/demo")           # serve.start + serve.run, non-blocking

    HTTP -> Ingress (FastAPI, web.py)
              -> InterestDistiller   embeddings + resonance scorer + gating  -> I*
              -> StarterGenerator    N candidate lists per request, continuous batching, streaming
              -> ListSelector        the evaluated list policy (isg.generate.select_list), R_util scores

Each deployment gets its resources and ``autoscaling_config`` from
``serve.deployments.<Name>`` (keys not given there come from :data:`DEFAULTS`, sized so
the whole application fits a 2-CPU machine). The HTTP server binds to ``serve.host``
only when an API key is configured (env var ``serve.api_key_env``); without a key it
binds to 127.0.0.1 and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from icebreaker_ray.config import Config, ConfigError, DeploymentSection
from icebreaker_ray.serve.artifacts import Artifacts, event_store_path, locate
from icebreaker_ray.serve.components import (
    Distilled,
    GenerationQueue,
    GenJob,
    GenUpdate,
    InterestDistillerCore,
    ListSelectorCore,
    Pick,
    candidates_per_request,
)

log = logging.getLogger(__name__)

APP_NAME = "icebreaker"
LOOPBACK = "127.0.0.1"

#: Per-deployment defaults; ``serve.deployments.<Name>`` overrides any key of them.
DEFAULTS: dict[str, DeploymentSection] = {
    "Ingress": DeploymentSection(num_cpus=0.1, min_replicas=1, max_replicas=2,
                                 target_ongoing_requests=16, max_ongoing_requests=64),
    "InterestDistiller": DeploymentSection(num_cpus=0.25, min_replicas=1, max_replicas=2,
                                           num_threads=1),
    "StarterGenerator": DeploymentSection(num_cpus=0.5, min_replicas=1, max_replicas=1,
                                          target_ongoing_requests=8, max_ongoing_requests=32),
    "ListSelector": DeploymentSection(num_cpus=0.25, min_replicas=1, max_replicas=2,
                                      num_threads=1),
}


def deployment_settings(cfg: Config, name: str) -> DeploymentSection:
    given = cfg.serve.deployments.get(name)
    merged = DEFAULTS[name].model_dump()
    if given is not None:
        merged.update(given.model_dump(exclude_unset=True))
    settings = DeploymentSection.model_validate(merged)
    if settings.min_replicas > settings.max_replicas:
        raise ConfigError(f"serve.deployments.{name}: min_replicas {settings.min_replicas} > "
                          f"max_replicas {settings.max_replicas}")
    return settings


def deployment_options(cfg: Config, name: str) -> dict:
    """``Deployment.options(...)`` kwargs for ``name`` from the config."""
    d = deployment_settings(cfg, name)
    return {
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        "autoscaling_config": {"min_replicas": d.min_replicas, "max_replicas": d.max_replicas,
                               "target_ongoing_requests": d.target_ongoing_requests},
        "max_ongoing_requests": d.max_ongoing_requests,
    }


def _replica_setup(cfg: Config, name: str) -> None:
    """Offline model loading and the configured torch thread count, in a replica."""
    from icebreaker_ray.models import set_offline

    set_offline(cfg.models.offline)
    threads = deployment_settings(cfg, name).num_threads
    if threads:
        import torch

        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- deployments


@serve.deployment
class InterestDistiller:
    """Embeddings + resonance scorer + activity-aware gating -> trigger interests I*."""

    def __init__(self, cfg: Config, art: Artifacts) -> None:
        _replica_setup(cfg, "InterestDistiller")
        self.core = InterestDistillerCore(cfg, art)

    def distill(self, user_id: str | None, summaries: list[str] | None,
                k: int | None = None) -> Distilled:
        return self.core.distill(user_id, summaries, k)

    def known_users(self) -> list[str]:
        return self.core.known_users()


@serve.deployment
class StarterGenerator:
    """Samples N candidate lists per request with the configured engine. A request joins
    the engine's running batch as soon as it arrives (continuous batching on llamacpp: no
    batch window to wait for, no request waiting for another batch to end); streaming
    callers get each step's news."""

    def __init__(self, cfg: Config, art: Artifacts) -> None:
        from icebreaker_ray.isg.engines import EngineSpec
        from icebreaker_ray.isg.generate import GenerationParams

        _replica_setup(cfg, "StarterGenerator")
        spec = EngineSpec.from_config(cfg, threads=deployment_settings(cfg, "StarterGenerator").num_threads)
        self.queue = GenerationQueue(spec.load(art.generator), GenerationParams.from_config(cfg),
                                     candidates_per_request(cfg), cfg.serve.max_batch_size,
                                     split_alone=cfg.serve.split_alone)

    async def sample(self, job: GenJob) -> list[str]:
        """The candidate texts of one request."""
        return await asyncio.wrap_future(self.queue.submit(job))

    async def stream(self, job: GenJob) -> AsyncIterator[GenUpdate]:
        """Progress of one request (first token, finished raw starters), then its texts."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:  # from the engine's thread; keeps the order of the calls
            loop.call_soon_threadsafe(updates.put_nowait, item)

        future = self.queue.submit(job, put)
        future.add_done_callback(put)
        while True:
            item = await updates.get()
            if isinstance(item, Future):
                yield GenUpdate(texts=item.result())  # raises what generation raised
                return
            yield item


@serve.deployment
class ListSelector:
    """The evaluated list policy + R_util scores -> the K-list (cold-start fill)."""

    def __init__(self, cfg: Config, art: Artifacts) -> None:
        _replica_setup(cfg, "ListSelector")
        self.core = ListSelectorCore(cfg, art)

    def select(self, user_id: str | None, history: list[str], interests: list[str],
               candidates: list[str], k: int, profile: str | None = None) -> list[Pick]:
        return self.core.select(user_id, history, interests, candidates, k, profile)

    def screen(self, shown: list[str], new: list[str], interests: list[str]) -> list[str]:
        return self.core.screen(shown, new, interests)

    def cold_start(self, k: int) -> list[Pick]:
        return self.core.cold_start(k)


@serve.deployment
@serve.ingress()
class Ingress:
    """FastAPI front door: validation, limits, API key, cache, feedback store, demo page."""

    def __init__(self, distiller: DeploymentHandle, generator: DeploymentHandle,
                 selector: DeploymentHandle, cfg: Config, art: Artifacts, store_path: str,
                 key_sha256: str | None) -> None:
        from icebreaker_ray.serve.store import EventStore
        from icebreaker_ray.serve.web import Handles, StarterService

        _replica_setup(cfg, "Ingress")
        self.cfg, self.key_sha256 = cfg, key_sha256
        self.service = StarterService(
            cfg, Handles(distiller, generator, selector), EventStore(store_path),
            art.model_version, has_scorer=art.scorer_dir is not None,
            has_ranker=art.ranker_dir is not None)

    def __serve_build_asgi_app__(self):
        from icebreaker_ray.serve.web import make_http_app

        return make_http_app(self.service, self.key_sha256, self.cfg.serve.max_body_bytes)


# ----------------------------------------------------------------------------- building


def api_key(cfg: Config) -> str | None:
    return os.environ.get(cfg.serve.api_key_env) or None


def build_app(cfg: Config, run_dir: str | None = None, model: str | None = None,
              key: str | None = None) -> Application:
    """The composed application. ``key`` (default: the env var ``serve.api_key_env``)
    turns on the ``X-API-Key`` check; only its SHA-256 reaches the replicas."""
    from icebreaker_ray.serve.web import key_digest

    art = locate(cfg, run_dir, model)
    key = key or api_key(cfg)

    def bound(deployment, name: str, *args):
        return deployment.options(name=name, **deployment_options(cfg, name)).bind(*args)

    return bound(
        Ingress, "Ingress",
        bound(InterestDistiller, "InterestDistiller", cfg, art),
        bound(StarterGenerator, "StarterGenerator", cfg, art),
        bound(ListSelector, "ListSelector", cfg, art),
        cfg, art, event_store_path(cfg, art.run_dir), key_digest(key) if key else None,
    )


def http_host(cfg: Config, key: str | None) -> str:
    """``serve.host``, unless it is not loopback and no API key is configured: then
    127.0.0.1, with a log line saying why."""
    from icebreaker_ray.serve.web import is_loopback

    host = cfg.serve.host
    if key is None and not is_loopback(host):
        log.warning("serve.host is %s but no API key is set (env %s): binding to %s only. "
                    "Set %s to serve other machines.", host, cfg.serve.api_key_env, LOOPBACK,
                    cfg.serve.api_key_env)
        return LOOPBACK
    return host


def run_local(cfg: Config, run_dir: str | None = None, model: str | None = None,
              blocking: bool = False, key: str | None = None) -> str:
    """Start Ray (if needed), Serve's HTTP proxy and the application; returns its URL.
    ``blocking`` keeps serving until Ctrl-C, then shuts Serve and Ray down."""
    from icebreaker_ray.raykit import init_ray

    key = key or api_key(cfg)
    app = build_app(cfg, run_dir, model, key)
    init_ray(cfg)
    host = http_host(cfg, key)
    serve.start(http_options={"host": host, "port": cfg.serve.port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{LOOPBACK if host == '0.0.0.0' else host}:{cfg.serve.port}"
    log.info("serving on %s (docs: %s/docs)", url, url)
    if blocking:
        _wait_for_interrupt(url)
    return url


def _wait_for_interrupt(url: str) -> None:
    print(f"serving on {url} (demo page: {url}/, API docs: {url}/docs); Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        from icebreaker_ray.raykit import shutdown

        serve.shutdown()
        shutdown()
