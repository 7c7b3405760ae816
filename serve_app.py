"""Entry point for the Ray Serve CLI: ``serve run serve_app:app`` / ``serve build serve_app:app``.

    serve run serve_app:app                                   # 127.0.0.1:8000
    ICEBREAKER_RUN=runs/demo serve run serve_app:app
    serve build serve_app:app -o configs/serve.yaml           # then: serve deploy configs/serve.yaml

Environment: ``ICEBREAKER_CONFIG`` (preset path or name, default configs/local-cpu.yaml),
``ICEBREAKER_RUN`` (run directory; default run.storage_path/run.name when it exists),
``ICEBREAKER_MODEL`` (generator override), and the API key variable named by
``serve.api_key_env`` (ICEBREAKER_API_KEY). ``icebreaker serve`` does the same and also
chooses the bind address (127.0.0.1 unless an API key is set).
"""

from __future__ import annotations

import os
from pathlib import Path

from icebreaker_ray.config import load_config
from icebreaker_ray.pipeline import default_out
from icebreaker_ray.serve.app import build_app

cfg = load_config(os.environ.get("ICEBREAKER_CONFIG", "configs/local-cpu.yaml"))
run_dir = os.environ.get("ICEBREAKER_RUN") or (default_out(cfg) if Path(default_out(cfg)).is_dir() else None)
app = build_app(cfg, run_dir=run_dir, model=os.environ.get("ICEBREAKER_MODEL") or None)
