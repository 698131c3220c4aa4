"""The `ptmrec` command: one subcommand per job, each taking `--config FILE` and `--set key=value`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from ptmrec.config import ConfigError, InputError, load_config

EPILOG = """\
Every run is described by one YAML config (see configs/); any key can be overridden:
  ptmrec prepare --config configs/amazon-baby.yaml --set data.uri=s3://bucket/data/baby
Artifacts are read and written by URI: a local path, file://… or s3://bucket/prefix (S3 settings come
from the config's `storage` section or the standard AWS_* environment variables).
"""


def _add_config_args(p: argparse.ArgumentParser, stage: bool = False) -> None:
    p.add_argument("--config", required=True, help="run config (YAML), e.g. configs/demo-ml100k.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set recommender.name=lightgcn (repeatable)")
    if stage:  # commands that read a finished stage
        p.add_argument("--stage", default="stage1", help="stage1, stage2 or stage2-<mode> (default: stage1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptmrec", description="PTMRec: knowledge-guided parameter-efficient tuning of pre-trained "
        "vision-language models for multimodal recommendation.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="pipeline: show every line of the jobs' output (Ray's CLI chatter, W&B's banners)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_training_commands(sub)
    _add_result_commands(sub)
    _add_cluster_commands(sub)
    return parser


def _add_training_commands(sub) -> None:
    """The stages and the searches over them."""
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

    p = sub.add_parser("stage2", help="knowledge-guided stage: adapters tuned with BPR + KT (Ray Train + DeepSpeed)",
                       description="Load stage 1's teacher from <run.uri>/stage1/, insert the adapter named by "
                       "stage2.adapter.name into the encoders and tune it (and the recommender, at "
                       "stage2.recommender_lr) with BPR + stage2.kt.weight x KT on item-centric batches; re-encode the "
                       "catalogue each epoch and evaluate as stage 1. stage2.mode picks the paper's comparisons: "
                       "ptmrec | no_kt | joint | full_finetune. Writes <run.uri>/stage2[-mode]/ and report.md/png. "
                       "With stage2.adapter.top_layers=k and stage2.layer_cache=true, the frozen layers below the "
                       "adapter run once per item into <run.uri>/features/layers-*/ (reused while encoder, "
                       "placement and data hold) and every step runs only the top k layers.")
    _add_config_args(p)

    p = sub.add_parser("compare", help="frozen baseline vs ptmrec vs no_kt vs joint (vs full_finetune) in one table",
                       description="Run stage 1 and stage 2 in each mode on one data set, then write one table "
                       "(report.md, report.png) under the run URI. A stage finished under the run URI with the same "
                       "settings is reused; one finished with other settings is trained again (as ptmrec pipeline "
                       "does).")
    _add_config_args(p)
    p.add_argument("--modes", nargs="*", default=["ptmrec", "no_kt", "joint"],
                   choices=["ptmrec", "no_kt", "joint", "full_finetune"],
                   help="stage-2 modes to run; `--modes` with none trains stage 1 only (a frozen baseline over "
                        "--seeds, e.g. for another recommender.reg_weight or an ID-only model); stage-2 runs already "
                        "finished under the run URI are reported either way")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="run the comparison once per seed (run.seed=SEED, run name and URI suffixed -seedSEED) "
                        "and print one table of mean ± std over the seeds with paired deltas against each seed's "
                        "frozen stage 1, the paired t-test's p-value and the seeds each mode beats it on; with two or more "
                        "modes, ptmrec paired against each other mode (no_kt isolates the knowledge transfer); then "
                        "each seed's rows (chosen epoch; where stage 2 kept its start, its best adapted epoch too); "
                        "also written to <run.uri>-seeds.md. The seeds "
                        "share the base run's frozen features and layer caches (run.features_uri)")
    p.add_argument("--against", metavar="RUN_URI", default=None,
                   help="with --seeds: the run.uri of another finished `compare --seeds` over the same seeds and from "
                        "the same stage 1 (e.g. another stage-2 setting, kept apart under its own run.uri); its "
                        "stage-2 runs join both tables as '<mode> (...) @ <its name>' and ptmrec here is paired "
                        "against them by seed. Nothing of it is trained")

    p = sub.add_parser("sweep", help="Ray Tune search over adapters, KT and the stage schedule (ASHA on valid), "
                       "or a grid of stage-1 runs (sweep.stage: stage1)",
                       description="Search the config's sweep.space (dotted keys → values): stage 1 is trained once "
                       "per distinct stage-1 setting and shared; with sweep.stage: stage2 (default) each Ray Tune "
                       "trial runs stage 2 and reports every epoch, and ASHA stops weak trials on the valid metric; "
                       "with sweep.stage: stage1 the trials are the stage-1 runs themselves (every combination, "
                       "each early-stopped on valid: a tuned frozen baseline). The best trial is chosen by valid, "
                       "its test metric shown beside it (sweep.select: test reproduces MMRec's pick-by-test, "
                       "labelled as test-set leakage). Started again, a sweep reuses its finished (and ASHA-stopped) "
                       "trials and runs only the rest, an interrupted trial resuming from its checkpoint. Writes "
                       "<run.uri>/sweep-<name>.json, .csv and .png.")
    _add_config_args(p)


def _add_result_commands(sub) -> None:
    """What a finished stage gives back: metrics, recommendations, serving files, the report."""
    p = sub.add_parser("evaluate", help="re-evaluate a finished stage from the run URI (full ranking, valid + test)",
                       description="Rebuild a finished stage's recommender with its cached features (frozen for "
                       "stage1, adapted for stage2) and rank every item for every user, MMRec's protocol; writes "
                       "<run.uri>/<stage>/eval.json.")
    _add_config_args(p, stage=True)

    p = sub.add_parser("recommend", help="top-K items for users, in the data's own ids, from a finished stage",
                       description="Score the whole catalogue for each given user with a finished stage's model "
                       "(the one evaluation ranks with: frozen features for stage1, adapted for stage2), leave out "
                       "the user's training items, and print the top K items with their scores, in the ids of the "
                       "prepared data (e.g. MovieLens user and item ids, ASINs for MMRec data with id mappings).")
    _add_config_args(p, stage=True)
    p.add_argument("--user", action="append", required=True, metavar="ID", help="a user id (repeatable)")
    p.add_argument("--k", type=int, default=20, help="items per user (default: 20)")
    p.add_argument("--json", action="store_true", help="print JSON lines {user, items, scores} instead of a table")
    p.add_argument("--items-file", default=None, metavar="FILE",
                   help="rank new items instead of the catalogue: a CSV or Parquet file with an `item` column, `text` "
                        "for a text tower and `image` (paths relative to the file) for an image tower; scored "
                        "through the stage's encoder (adapted for stage2) without retraining")

    p = sub.add_parser("export", help="serving files of a finished stage: Parquet representations + a faiss index",
                       description="Write <run.uri>/<stage>/export/: users.parquet and items.parquet (the data's own "
                       "ids, the representations whose dot products are the scores, and the item features the stage "
                       "scores with, adapted ones for stage2), items.faiss (an HNSW inner-product index over the "
                       "items) and export.json, written last, with the index's recall@K against exact scoring.")
    _add_config_args(p, stage=True)
    p.add_argument("--k", type=int, default=20, help="K of the index's recall@K check (default: 20)")

    p = sub.add_parser("report", help="(re)write report.md and report.png from a run's metrics",
                       description="Collect every stage's metrics.json under run.uri and write the side-by-side "
                       "report (Markdown table + PNG plot).")
    _add_config_args(p)


def _add_cluster_commands(sub) -> None:
    """The whole run as Ray jobs, the config check and the local S3 server."""
    p = sub.add_parser("pipeline", help="the whole run: prepare → stage1 → stage2 as three `ray job submit` jobs",
                       description="Start a local Ray cluster (unless --address names one) and the local S3 server "
                       "(when run.uri is s3:// on localhost), submit prepare, the recommendation stage and the "
                       "knowledge-guided stage as separate Ray jobs, stream their logs, stop at the first failure, "
                       "and print the stage-1 vs stage-2 table. Finished stages are reused unless --force.")
    _add_config_args(p)
    p.add_argument("--address", default=None, help="Ray job server, e.g. http://127.0.0.1:8265 (default: start one)")
    p.add_argument("--force", action="store_true", help="redo stages whose outputs already exist")

    p = sub.add_parser("check-config", help="validate a config and print it resolved",
                       description="Load a config with its overrides, validate every key (types, ranges, names "
                       "against the registries, metric and ks, URI schemes, sweep keys), print it as JSON. Exit "
                       "status 2 and one line naming the key for a bad one; a note when stage 2 could not run "
                       "with it. Every other command runs the same checks before any work.")
    _add_config_args(p)

    p = sub.add_parser("s3-server", help="run a local S3-compatible server on 127.0.0.1 (for demos)",
                       description="Start moto's S3-compatible server on 127.0.0.1 and print the environment "
                       "variables that point PTMRec at it; stops on Ctrl-C. Objects live in memory.")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--bucket", action="append", default=[], help="bucket to create at start (repeatable)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"ptmrec: config error: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"ptmrec {args.command}: bad input: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:
        # Our own errors name the file, key or shard; a traceback would only bury that line.
        if os.environ.get("PTMREC_TRACEBACK"):
            raise
        print(f"ptmrec {args.command}: error: {exc}", file=sys.stderr)
        return 1


def checked_config(args, stage2: bool | None = False):
    """The command's config, loaded and checked before any work (`ptmrec.checks`). `stage2`: the command
    runs stage 2 (None: only if it is a stage-2 sweep)."""
    from ptmrec.checks import check_config

    cfg = load_config(args.config, args.overrides)
    check_config(cfg, stage2=cfg.sweep.stage == "stage2" if stage2 is None else stage2)
    return cfg


def cmd_prepare(args) -> int:
    from ptmrec.data.prepare import prepare

    cfg = checked_config(args)
    manifest = prepare(cfg, progress=not args.quiet)
    summary = {k: manifest[k] for k in ("dataset", "num_users", "num_items", "num_interactions", "splits",
                                        "modalities")}
    summary["shards"] = {k: len(v) for k, v in manifest["shards"].items()}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_stage1(args) -> int:
    from ptmrec.stages.recommendation import run_recommendation_stage

    cfg = checked_config(args)
    metrics = run_recommendation_stage(cfg, progress=not args.quiet)
    print(format_metrics(metrics, cfg.eval.ks))
    return 0


def format_metrics(metrics: dict, ks: list[int]) -> str:
    """A stage's metrics.json as a small table."""
    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    lines = [f"{metrics['stage']}{' (' + metrics['mode'] + ')' if 'mode' in metrics else ''}: {metrics['model']} on "
             f"{metrics['dataset']} (best epoch {metrics['best_epoch']}, {metrics['wall_s']:.0f} s)", f"{'split':<8}" + "".join(f"{c:>12}" for c in cols)]
    for split in (s for s in ("valid", "valid_a", "valid_b", "test") if s in metrics):
        lines.append(f"{split:<8}" + "".join(f"{metrics[split].get(c, float('nan')):>12.4f}" for c in cols))
    return "\n".join(lines)


def cmd_stage2(args) -> int:
    from ptmrec.stages.report import write_report
    from ptmrec.stages.knowledge import run_knowledge_stage
    from ptmrec.storage import Storage

    cfg = checked_config(args, stage2=True)
    metrics = run_knowledge_stage(cfg, progress=not args.quiet)
    print(format_metrics(metrics, cfg.eval.ks))
    report = write_report(Storage(cfg.storage), cfg.run.uri, cfg.eval.ks, cfg.eval.metric)
    print(report or "")
    return 0


def cmd_compare(args) -> int:
    from ptmrec.stages.report import collect, seeds_report
    from ptmrec.stages.features import features_root
    from ptmrec.uris import absolute_uri

    # fail on a bad config before any work; with no stage-2 mode an ID-only model (bpr, lightgcn) is a fine baseline
    base = checked_config(args, stage2=bool(args.modes))
    if base.stage2.output:
        # The report and the seed table find each mode in its own folder; one named folder would hold the
        # modes in turn and a finished stage2/ would be taken for this setting's result.
        raise ConfigError(f"{args.config}: stage2.output: compare writes each mode to stage2/ or "
                          f"stage2-<mode>/; leave it null (use another run.uri to keep a second setting apart)")
    if args.against and not args.seeds:
        raise ConfigError("--against pairs runs by seed: give --seeds too")
    against = absolute_uri(args.against).rstrip("/") if args.against else None
    other = _against_runs(base, against, args.seeds) if against else None  # a wrong URI fails before any work
    if not args.seeds:
        print(_compare_one(base, args.modes, quiet=args.quiet))
        return 0
    per_seed = {}
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.overrides, f"run.seed={seed}", f"run.name={base.run.name}-seed{seed}",
                                        f"run.uri={base.run.uri}-seed{seed}",
                                        f"run.features_uri={features_root(base)}"])  # one extraction for all seeds
        print(f"== seed {seed}: {cfg.run.uri}", flush=True)
        _compare_one(cfg, args.modes, quiet=args.quiet)
        per_seed[seed] = collect(_storage(cfg), cfg.run.uri)
    if other is not None:
        per_seed = _joined(against, per_seed, other)
    text = seeds_report(base.run.name, per_seed, base.eval.ks, base.eval.metric)
    _storage(base).write_text(f"{base.run.uri}-seeds.md", text)
    print(text)
    return 0


def _against_runs(base, against: str, seeds: list[int]) -> dict:
    """seed -> the finished runs of the compare at `against` (its stage 1 first)."""
    from ptmrec.stages.report import collect, other_starts

    other = {seed: collect(_storage(base), f"{against}-seed{seed}") for seed in seeds}
    _against_checked(against, other_starts, other, seeds, against.rsplit("/", 1)[-1])
    return other


def _joined(against: str, per_seed: dict, other: dict) -> dict:
    from ptmrec.stages.report import with_other_runs

    return _against_checked(against, with_other_runs, per_seed, other, against.rsplit("/", 1)[-1])


def _against_checked(against: str, check, *args):
    """`check(*args)`, its ValueError (a run missing or from another start) as one line naming --against."""
    try:
        return check(*args)
    except ValueError as e:
        raise ConfigError(f"--against {against}: {e}; expected the run.uri of a finished `compare --seeds` over "
                          f"the same seeds and stage 1") from None


def _storage(cfg):
    from ptmrec.storage import Storage

    return Storage(cfg.storage)


def _compare_one(cfg, modes: list[str], quiet: bool) -> str:
    """Stage 1 (unless finished) and stage 2 in each mode of one run; returns its report."""
    import dataclasses

    from ptmrec.stages.report import write_report
    from ptmrec.stages.knowledge import run_knowledge_stage
    from ptmrec.stages.recommendation import run_recommendation_stage

    storage = _storage(cfg)
    if _finished(storage, cfg, "stage1"):
        print(f"stage 1 already finished under {cfg.run.uri}: reusing it")
    else:
        run_recommendation_stage(cfg, progress=not quiet)
    for mode in modes:
        mode_cfg = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, mode=mode))
        if _finished(storage, mode_cfg, "stage2"):
            print(f"stage 2 ({mode}) already finished: reusing it")
        else:
            run_knowledge_stage(mode_cfg, progress=not quiet)
    return write_report(storage, cfg.run.uri, cfg.eval.ks, cfg.eval.metric)


def _finished(storage, cfg, stage: str) -> bool:
    """Whether the run holds `stage` finished with these settings, as `ptmrec pipeline` decides it: a run
    finished with other settings is trained again (its result must not stand for this config's)."""
    from ptmrec.pipeline import JOBS, finished

    marker, done = finished(storage, cfg, next(job for job in JOBS if job.name == stage))
    if done is False:
        print(f"{marker} holds a run with other settings: training it again", flush=True)
    return bool(done)


def cmd_sweep(args) -> int:
    from ptmrec.sweep import format_sweep, run_sweep

    checked_config(args, stage2=None)  # fail on a bad config before Ray starts
    summary = run_sweep(args.config, args.overrides, progress=not args.quiet)
    print(format_sweep(summary))
    best = summary["best"]
    key = summary["metric"].split("/", 1)[1]
    if summary["select"] == "test":
        print(f"trial {best['trial']}: test {key} {best['test'][key]:.4f} (SELECTED ON TEST: MMRec's table protocol, "
              f"for comparison only), valid {key} {best['valid'][key]:.4f}  {best['params']}")
    else:
        chosen_on = best["chosen_on"]
        print(f"best trial {best['trial']}: {chosen_on} {key} {best[chosen_on][key]:.4f} (selected), "
              f"test {key} {best['test'][key]:.4f} (reported)  {best['params']}")
    return 0


def cmd_evaluate(args) -> int:
    from ptmrec.stages.evaluate import evaluate_stage

    cfg = checked_config(args)
    result = evaluate_stage(cfg, args.stage)
    print(format_metrics({"stage": args.stage, "model": cfg.recommender.name, "dataset": cfg.data.uri,
                          "best_epoch": "-", "wall_s": result["wall_s"], **result}, cfg.eval.ks))
    return 0


def cmd_recommend(args) -> int:
    from dataclasses import asdict

    from ptmrec.stages.recommend import recommend, recommend_new_items

    cfg = checked_config(args)
    if args.items_file:
        recs = recommend_new_items(cfg, args.user, args.items_file, k=args.k, stage=args.stage)
    else:
        recs = recommend(cfg, args.user, k=args.k, stage=args.stage)
    for rec in recs:
        if args.json:
            print(json.dumps(asdict(rec)))
            continue
        print(f"user {rec.user} ({args.stage}, {cfg.recommender.name}): top {len(rec.items)}")
        for rank, (item, score) in enumerate(zip(rec.items, rec.scores), start=1):
            print(f"  {rank:>3}. item {item:<16} score {score:.4f}")
    return 0


def cmd_export(args) -> int:
    from ptmrec.stages.export import export_stage

    cfg = checked_config(args)
    summary = export_stage(cfg, args.stage, k=args.k)
    index = summary["index"]
    print(f"{summary['users']} users and {summary['items']} items ({summary['dim']}-d) → "
          f"{cfg.run.uri}/{args.stage}/export/{{{','.join(summary['files'])},export.json}}")
    print(f"index {index['type']}: recall@{args.k} against exact scoring {index[f'recall@{args.k}']:.4f} "
          f"over {index['checked_users']} users (built in {index['build_s']:.1f} s)")
    return 0


def cmd_report(args) -> int:
    from ptmrec.stages.report import write_report
    from ptmrec.storage import Storage

    cfg = checked_config(args)
    text = write_report(Storage(cfg.storage), cfg.run.uri, cfg.eval.ks, cfg.eval.metric)
    if text is None:
        raise ValueError(f"{cfg.run.uri}: no finished stage (no metrics.json) to report on")
    print(text)
    return 0


def cmd_pipeline(args) -> int:
    from ptmrec.pipeline import JobFailed, run_pipeline

    cfg = checked_config(args, stage2=True)
    # A terminated pipeline must still stop the Ray cluster and S3 server it started (they run in their
    # own sessions): turn SIGTERM and SIGHUP into an exit that unwinds the context managers. (A SIGKILL
    # cannot be caught: the kernel stops them then, see `die_with_parent`.)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a closed terminal too
        signal.signal(sig, lambda number, _frame: sys.exit(128 + number))
    start = time.perf_counter()
    try:
        metrics = run_pipeline(cfg, args.config, args.overrides, address=args.address, force=args.force,
                               verbose=args.verbose)
    except JobFailed as exc:
        print(f"ptmrec pipeline: {exc}", file=sys.stderr)
        return exc.status
    print()
    print(format_metrics(metrics["stage1"], cfg.eval.ks))
    print(format_metrics(metrics["stage2"], cfg.eval.ks))
    print()
    print(metrics["report"])
    print(f"report: {cfg.run.uri}/report.md and report.png; "
          f"W&B runs (offline unless WANDB_API_KEY is set): {cfg.tracking.dir}")
    print(f"pipeline finished in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_check_config(args) -> int:
    from ptmrec.checks import stage2_problem

    cfg = checked_config(args)
    print(json.dumps(cfg.to_dict(), indent=2))
    problem = stage2_problem(cfg)
    if problem:  # fine for stage 1 alone; the commands that run stage 2 refuse it
        print(f"ptmrec check-config: note: stage 2 cannot run: {problem}", file=sys.stderr)
    return 0


def cmd_s3_server(args) -> int:
    from ptmrec.config import StorageConfig
    from ptmrec.runtime.local_s3 import LocalS3Server
    from ptmrec.storage import Storage

    # SIGTERM (e.g. `kill`) stops the server as Ctrl-C does: the exit unwinds the `with`, which stops moto
    signal.signal(signal.SIGTERM, lambda _number, _frame: sys.exit(0))
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


COMMANDS = {"prepare": cmd_prepare, "stage1": cmd_stage1, "stage2": cmd_stage2, "compare": cmd_compare,
            "report": cmd_report, "pipeline": cmd_pipeline, "evaluate": cmd_evaluate, "recommend": cmd_recommend, "export": cmd_export, "sweep": cmd_sweep, "check-config": cmd_check_config, "s3-server": cmd_s3_server}

if __name__ == "__main__":
    sys.exit(main())
