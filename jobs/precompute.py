"""Ray job: precompute known users' starter lists for the server. Same options as
`icebreaker precompute --help`.

    ray job submit --working-dir . -- python jobs/precompute.py --config configs/gpu-cluster.yaml --out s3://bucket/prod
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from icebreaker_ray.cli import job  # noqa: E402

if __name__ == "__main__":
    job("precompute")
