"""Stage 1 as a Ray job:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/recommendation_stage.py --config configs/demo-ml100k.yaml [--set key=value ...]
"""

import sys

from ptmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["stage1", *sys.argv[1:]]))
