"""Data preparation as a Ray job:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/prepare_data.py --config configs/demo-ml100k.yaml [--set key=value ...]
"""

import sys

from ptmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
