"""The `ptmrec` command: one subcommand per job, each taking `--config FILE` and `--set key=value`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from ptmrec.config import ConfigError, load_config

EPILOG = """\
Every run is described by one YAML config (see configs/); any key can be overridden:
  ptmrec prepare --config configs/amazon-baby.yaml --set data.uri=s3://bucket/data/baby
Artifacts are read and written by URI: a local path, file://… or s3://bucket/prefix (S3 settings come
from the config's `storage` section or the standard AWS_* environment variables).
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config (YAML), e.g. configs/demo-ml100k.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set recommender.name=lightgcn (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptmrec", description="PTMRec: knowledge-guided parameter-efficient tuning of pre-trained "
        "vision-language models for multimodal recommendation.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="raw data → WebDataset shards + manifest.json at data.uri",
                       description="Read the source named by data.source (mmrec directory, MovieLens-100K "
                       "from the recbole wheel, or the synthetic catalogue) and write item and interaction "
                       "shards plus manifest.json to data.uri. Shards already correct are not rewritten.")
    _add_config_args(p)

    p = sub.add_parser("stage1", help="recommendation stage: frozen features + base recommender (Ray Train + DeepSpeed)",
                       description="Extract frozen item features (reused when the encoder settings match), then "
                       "train the base recommender on stage1.num_workers Ray Train workers with DeepSpeed, "
                       "early-stopping on the valid split. Writes <run.uri>/stage1/{model.pt,teacher.pt,"
                       "metrics.json}. A run interrupted after a checkpoint resumes from it when started again.")
    _add_config_args(p)

    p = sub.add_parser("check-config", help="validate a config and print it resolved",
                       description="Load a config with its overrides, validate every key, print it as JSON.")
    _add_config_args(p)

    p = sub.add_parser("s3-server", help="run a local S3-compatible server on 127.0.0.1 (for demos)",
                       description="Start moto's S3-compatible server on 127.0.0.1 and print the environment "
                       "variables that point PTMRec at it; stops on Ctrl-C. Objects live in memory.")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--bucket", action="append", default=[], help="bucket to create at start (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"ptmrec: config error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:
        # Our own errors name the file, key or shard; a traceback would only bury that line.
        if os.environ.get("PTMREC_TRACEBACK"):
            raise
        print(f"ptmrec {args.command}: error: {exc}", file=sys.stderr)
        return 1


def cmd_prepare(args) -> int:
    from ptmrec.data.prepare import prepare

    cfg = load_config(args.config, args.overrides)
    manifest = prepare(cfg, progress=not args.quiet)
    summary = {k: manifest[k] for k in ("dataset", "num_users", "num_items", "num_interactions", "splits",
                                        "modalities")}
    summary["shards"] = {k: len(v) for k, v in manifest["shards"].items()}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_stage1(args) -> int:
    from ptmrec.stages.recommendation import run_recommendation_stage

    cfg = load_config(args.config, args.overrides)
    metrics = run_recommendation_stage(cfg, progress=not args.quiet)
    print(format_metrics(metrics, cfg.eval.ks))
    return 0


def format_metrics(metrics: dict, ks: list[int]) -> str:
    """A stage's metrics.json as a small table."""
    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    lines = [f"{metrics['stage']}: {metrics['model']} on {metrics['dataset']} (best epoch {metrics['best_epoch']}, "
             f"{metrics['wall_s']:.0f} s)", f"{'split':<8}" + "".join(f"{c:>12}" for c in cols)]
    for split in ("valid", "test"):
        lines.append(f"{split:<8}" + "".join(f"{metrics[split].get(c, float('nan')):>12.4f}" for c in cols))
    return "\n".join(lines)


def cmd_check_config(args) -> int:
    cfg = load_config(args.config, args.overrides)
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def cmd_s3_server(args) -> int:
    from ptmrec.config import StorageConfig
    from ptmrec.runtime.local_s3 import LocalS3Server
    from ptmrec.storage import Storage

    with LocalS3Server(port=args.port) as server:
        storage = Storage(StorageConfig(endpoint_url=server.endpoint_url))
        os.environ.update(server.env())
        for bucket in args.bucket:
            storage.ensure_bucket(f"s3://{bucket}")
        print(f"local S3 server on {server.endpoint_url} (pid {server.pid}); export these to use it:")
        for key, value in server.env().items():
            print(f"export {key}={value}")
        sys.stdout.flush()
        try:
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


COMMANDS = {"prepare": cmd_prepare, "stage1": cmd_stage1, "check-config": cmd_check_config, "s3-server": cmd_s3_server}

if __name__ == "__main__":
    sys.exit(main())
