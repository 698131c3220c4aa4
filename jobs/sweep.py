"""A Ray Tune sweep as a Ray job:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/sweep.py --config configs/sweep-ml100k.yaml [--set key=value ...]
"""

import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this from an uploaded copy of the repository: use that copy's package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptmrec.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
