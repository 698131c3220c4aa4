"""Re-evaluation of a finished stage as a Ray job:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/evaluate.py --config configs/demo-ml100k.yaml --stage stage2 [--set key=value ...]
"""

import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this from an uploaded copy of the repository: use that copy's package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptmrec.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
