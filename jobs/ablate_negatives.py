"""Ray job: the `ablate-negatives` stage. Same options as `icebreaker ablate-negatives --help`.

    ray job submit --working-dir . -- python jobs/ablate_negatives.py --config configs/gpu-cluster.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from icebreaker_ray.cli import job  # noqa: E402

if __name__ == "__main__":
    job("ablate-negatives")
