"""Helpers for tests that start real Ray processes (not a test module).

    with TwoNodeCluster() as cluster:            # `ray start --head` + a second `ray start`
        cluster.submit(["python", "jobs/pipeline.py", ...], working_dir=ROOT)
        cluster.nodes()                          # node id -> labels, from `ray list nodes`

Everything a test starts here runs in a session of its own (``start_new_session``), and
cleanup ends exactly those sessions: Ray's daemons (GCS, raylet, dashboard) and the
workers they fork inherit the session of the ``ray start`` that launched them. ``ray
stop`` is never used: it ends *every* Ray process on the machine, including other
people's runs and the pytest session's own local Ray.

Ray 2.60 turns on token authentication for ``ray start`` clusters; every CLI call here
runs with ``RAY_AUTH_MODE=token`` (see ENVIRONMENT.md) instead of turning auth off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")

#: Not uploaded with ``--working-dir``: the virtualenv, run outputs, caches, git history.
UPLOAD_EXCLUDES = [".venv", "runs", ".cache", ".git", ".pytest_cache", ".ruff_cache",
                   "*.egg-info", "__pycache__"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Ray address (so nothing joins the pytest
    session's local Ray by accident), offline, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


# ----------------------------------------------------------------------------- processes


def session_pids(sid: int) -> list[int]:
    """Pids of the live processes in session ``sid`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the ")" that closes the command name: state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def end_session(sid: int, grace_s: float = 10.0) -> None:
    """SIGTERM every process of session ``sid``, then SIGKILL what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = session_pids(sid)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not wait_until(lambda: not session_pids(sid), wait):
            continue
        return


def wait_until(predicate: Callable[[], object], timeout_s: float, every_s: float = 0.2):
    """Poll ``predicate`` until it returns something truthy (returned) or time runs out (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(every_s)


def run(cmd: Sequence[str], timeout_s: float, popen=subprocess.Popen, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion with stdout+stderr captured together; a timeout kills it
    and fails with the output's tail."""
    proc = popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout_s}s: {' '.join(cmd)}\n{out[-6000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


class Sessions:
    """Processes started in sessions of their own, all ended by :meth:`close`."""

    def __init__(self) -> None:
        self.sids: list[int] = []

    def popen(self, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(list(cmd), start_new_session=True, **kwargs)
        self.sids.append(proc.pid)  # a new session's id is its leader's pid
        return proc

    def run(self, cmd: Sequence[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
        """:func:`run` in a tracked session: for commands that leave daemons behind."""
        return run(cmd, timeout_s, popen=self.popen, **kwargs)

    def close(self) -> None:
        for sid in reversed(self.sids):
            end_session(sid)


def actor_processes(class_part: str, state: str | None = None) -> list[dict]:
    """Actors of the connected Ray whose class name contains ``class_part`` (e.g.
    "RayTrainWorker", "EmbedActor": Ray Data names its pool actors
    ``MapWorker(MapBatches(EmbedActor))``), with "ActorID", "Pid", "State", "NumRestarts".

    Read from the GCS actor table: the state API (``ray.util.state``) needs the dashboard,
    which the tests' local Ray does not start.
    """
    from ray._private.state import actors

    return [a for a in actors(actor_state_name=state).values() if class_part in a["ActorClassName"]]


# ----------------------------------------------------------------------------- cluster


class TwoNodeCluster:
    """A real Ray cluster of two nodes on this machine: a head (``head_cpus`` CPUs, the
    dashboard for job submission) and a worker node (``worker_cpus`` CPUs, the custom
    resource ``worker_node`` and the label ``icebreaker-role=worker``)."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 2,
                 object_store_bytes: int = 400 * 1024**2) -> None:
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.object_store_bytes = object_store_bytes
        # Short path: Ray's unix sockets live under it (108-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="ibr-ray-", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = clean_env(RAY_AUTH_MODE="token")
        self.sessions = Sessions()

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray(self, *args: str, timeout_s: float = 180) -> str:
        # `ray start` leaves daemons behind: its session is tracked and ended on close()
        runner = self.sessions.run if args[0] == "start" else run
        out = runner([RAY, *args], timeout_s, env=self.env, cwd=self.temp_dir)
        if out.returncode != 0:
            raise AssertionError(f"`ray {' '.join(args)}` failed ({out.returncode}):\n{out.stdout[-6000:]}")
        return out.stdout

    def _node_args(self, role: str, cpus: int) -> list[str]:
        return [f"--num-cpus={cpus}", "--num-gpus=0", f"--labels=icebreaker-role={role}",
                f"--object-store-memory={self.object_store_bytes}", f"--temp-dir={self.temp_dir}",
                "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}"]

    def start(self) -> TwoNodeCluster:
        self._ray("start", "--head", f"--port={self.port}", *self._node_args("head", self.head_cpus),
                  "--resources={\"head_node\": 1}", "--include-dashboard=true",
                  "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                  f"--ray-client-server-port={free_port()}")
        self._ray("start", f"--address={self.gcs_address}", *self._node_args("worker", self.worker_cpus),
                  "--resources={\"worker_node\": 1}")
        if not wait_until(lambda: len(self.nodes()) == 2, 60, every_s=2):
            raise AssertionError(f"the second node did not join: {self.nodes()}")
        return self

    def nodes(self) -> dict[str, dict[str, str]]:
        """Alive nodes: node id -> labels (as the state API reports them)."""
        rows = json.loads(self._ray("list", "nodes", f"--address={self.dashboard_url}",
                                    "--format=json", "--detail", "--filter", "state=ALIVE"))
        return {r["node_id"]: r.get("labels") or {} for r in rows}

    def node_id(self, role: str) -> str:
        [nid] = [n for n, labels in self.nodes().items() if labels.get("icebreaker-role") == role]
        return nid

    def submit(self, entrypoint: Sequence[str], working_dir: Path,
               timeout_s: float = 2400) -> subprocess.CompletedProcess:
        """``ray job submit`` (blocking: streams the job's logs, exit 0 iff it succeeded)."""
        runtime_env = {"excludes": UPLOAD_EXCLUDES}
        cmd = [RAY, "job", "submit", f"--address={self.dashboard_url}", f"--working-dir={working_dir}",
               f"--runtime-env-json={json.dumps(runtime_env)}", "--", *entrypoint]
        return run(cmd, timeout_s, env=self.env, cwd=str(working_dir))

    def close(self) -> None:
        self.sessions.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> TwoNodeCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
