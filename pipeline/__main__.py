"""Command line: ``python -m pipeline <stage> [--config PATH] [--set key.path=value ...]``."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable

from pipeline.artifacts import DiskFullError, is_disk_full
from pipeline.config import PROJECT_ROOT, ConfigError, PipelineConfig, load_config
from pipeline.runtime import apply_runtime
from pipeline.tracking import (
    check_reachable,
    check_store_writable,
    describe_store_error,
    tracking_uri,
    unclosed_runs,
    unclosed_runs_note,
)

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"

DESCRIPTION = textwrap.dedent(
    """\
    han-pipeline: train, evaluate and explain a Hierarchical Attention Network
    (Yang et al., 2016) for long-document classification.

    Every stage reads a YAML config (default: configs/default.yaml, the built-in
    demo corpus) and writes to $HAN_ARTIFACTS_DIR/<name>/<stage>/ (default
    artifacts/), logging to MLflow at $MLFLOW_TRACKING_URI (default
    sqlite:///mlflow.db in the project). Dataset paths may use ${HAN_DATA_DIR}.
    """
)

EPILOG = textwrap.dedent(
    """\
    examples:
      python -m pipeline run
      HAN_DATA_DIR=../shared/data python -m pipeline preprocess --config configs/bbc.yaml
      python -m pipeline preprocess --set preprocess.vocab.min_count=3 --set seed=7
      python -m pipeline train --set train.epochs=5 --set train.optimizer=sgd
      python -m pipeline predict --explain "Some text. Several sentences."
      python -m pipeline predict --file doc.txt --model models:/han-demo@champion
      python -m pipeline serve --set serve.port=8080
      python -m pipeline sweep --config configs/bbc.yaml --grid model.dropout=0.2,0.3 --seeds 42,1
      python -m pipeline init-config data/reviews.csv   # writes configs/reviews.yaml from the data
    """
)

STAGE_HELP = {
    "preprocess": "read, validate/quarantine, split, sentence-split, tokenize and encode the corpus",
    "train": "train the HAN on the preprocessed corpus (logs to MLflow)",
    "evaluate": "score the trained model on the test split against a TF-IDF baseline, apply the gate",
    "promote": "make the evaluated model the registry's challenger, and the champion when its gate passed",
    "explain": "write per-document attention explanations, an HTML report and faithfulness metrics",
    "run": "the whole pipeline: preprocess -> train -> evaluate -> promote -> explain",
    "predict": "classify raw text (with --explain: show the sentences the model attended to)",
    "serve": "serve the champion over REST (MLflow scoring app, uvicorn) on 127.0.0.1 (serve.port, default 5001)",
    "sweep": "train every combination of --grid values (once per --seeds seed), rank them on the validation split, "
             "log to MLflow",
}

def cmd_preprocess(config: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.stages import preprocess

    preprocess.run(config, force=args.force)  # its lines (counts, outputs) went to stderr as it ran
    return 0


def cmd_train(config: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.stages import train

    result = train.run(config, force=args.force)
    if not result.chief:
        print("train: this worker's part is done; the chief (worker 0) writes the model and logs to MLflow")
        return 0
    tracked = result.manifest["mlflow"]
    if not result.skipped:  # the stage said the best epoch and where the outputs are; a skip, why and which run
        print(f"train: MLflow run {tracked['run_id']}, registered {tracked['registered_model']} "
              f"version {tracked['registered_version']}")
    return 0


def cmd_evaluate(config: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.stages import evaluate

    result = evaluate.run(config)  # the stage said the metrics, the baseline's and the gate's verdict
    print(f"evaluate: metrics in {result.output_dir / 'metrics.json'}")
    return 0


def cmd_promote(config: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.stages import promote

    promote.run(config)  # the stage said the verdict, the champion and the challenger
    return 0


def cmd_serve(config: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.serving.serve import serve_command

    command = serve_command(config)
    print(f"serve: {command.model_uri} (version {command.version}) at {command.url}/invocations", flush=True)
    print(f"serve: try  curl -s {command.url}/invocations -H 'Content-Type: application/json' "
          """-d '{"dataframe_records": [{"text": "First sentence. Second one."}]}'""", flush=True)
    if args.print_command:
        print(" ".join(command.argv))
        return 0
    os.execve(command.argv[0], command.argv, command.env)  # the server replaces this process (Ctrl-C stops it)


def cmd_explain(config: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.stages import explain

    texts = labels = None
    if getattr(args, "text", None) is not None or getattr(args, "file", None) is not None:
        texts, labels = explain.read_texts(getattr(args, "text", None), getattr(args, "file", None))
    explain.run(config, texts, labels)  # the stage said the faithfulness figures and where the report is
    return 0


def cmd_predict(config: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.serving import predict

    texts = predict.read_inputs(args.text, args.file)
    results = predict.predict(config, texts, model_uri=args.model)
    for result in results:
        print(predict.render(result, explain=args.explain, top=args.top))
    return 0 if all(result.get("error") is None for result in results) else 2


def cmd_sweep(config: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.stages import sweep
    from pipeline.tracking import run_url

    result = sweep.run(args.config, args.overrides, args.grid, args.seeds, args.metric)
    print(sweep.markdown(result, args.config), end="")
    best = result.points[0]
    if best["mean"] is not None:
        print(f"sweep: best {' '.join(best['settings'])} ({result.metric} {best['mean']:.4f}); results in {result.output_dir}")
        print(f"sweep: to train it: {sweep.train_command(args.config, args.overrides, best['settings'])}")
    print(f"sweep: MLflow run {result.run.info.run_id}; with `make ui` at {run_url(result.run)}")
    if result.failed:
        print(f"sweep: {len(result.failed)} of {len(result.trials)} trials failed (listed above, and tagged "
              "han.sweep.failed_trials on the sweep's MLflow run)", file=sys.stderr)
        return 2
    return 0


def cmd_run(config: PipelineConfig, args: argparse.Namespace) -> int:
    """preprocess -> train -> evaluate -> promote -> explain, nested under one MLflow pipeline run."""
    from pipeline.tracking import log_pipeline_summary, pipeline_run, run_url

    if config.train.distribute.strategy == "multi_worker":
        raise RuntimeError("`run` does every stage in one process, but train.distribute.strategy=multi_worker trains on "
                           "several: run `python -m pipeline preprocess` once, `python -m pipeline train` on every worker "
                           "(each with its TF_CONFIG), then `evaluate`, `promote` and `explain` once "
                           "(docs/distributed-training.md)")
    stages = ["preprocess", "train", "evaluate", "promote", "explain"]
    with pipeline_run(config, stages) as run:
        for stage in stages:
            COMMANDS[stage](config, args)
        log_pipeline_summary(config, stages)
    print(f"run: done. MLflow pipeline run {run.info.run_id} (experiment {config.tracking.experiment or config.name}).")
    print(f"run: to look at it, start `make ui` and open {run_url(run)}")
    return 0


COMMANDS: dict[str, Callable[[PipelineConfig, argparse.Namespace], int]] = {
    "preprocess": cmd_preprocess,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "promote": cmd_promote,
    "explain": cmd_explain,
    "run": cmd_run,
    "predict": cmd_predict,
    "serve": cmd_serve,
    "sweep": cmd_sweep,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, help_text in STAGE_HELP.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="PATH",
                           help="YAML config (default: configs/default.yaml, the built-in demo corpus)")
        stage.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                           help="override one config value, e.g. --set preprocess.vocab.min_count=3 (repeatable)")
        if name in ("preprocess", "train", "run"):
            stage.add_argument("--force", action="store_true",
                               help="redo the stage even when its inputs and config are unchanged")
        if name == "explain":
            source = stage.add_mutually_exclusive_group()
            source.add_argument("--text", help="explain this text instead of the test split")
            source.add_argument("--file", help="explain a file instead of the test split: .txt = one document, "
                                               ".jsonl = one {\"text\": ..., \"label\": ...} per line")
        if name == "predict":
            stage.add_argument("text", nargs="?", help="the text to classify")
            stage.add_argument("--file", help="read the text from this file")
            stage.add_argument("--explain", action="store_true", help="show the top sentences and their weights")
            stage.add_argument("--top", type=int, default=3, metavar="K", help="sentences shown with --explain (default 3)")
            stage.add_argument("--model", metavar="URI",
                               help="an MLflow model URI, e.g. models:/han-demo@champion "
                                    "(default: the model of the last train stage of --config)")
        if name == "sweep":
            stage.epilog = ("Needs the config's preprocessing (make preprocess). Each trial is a real train stage in this "
                            "process; trials register no model, and the test split is never used. Outputs in "
                            "$HAN_ARTIFACTS_DIR/<name>/sweep/<started>/ (results.json, results.md, sweep.png), the "
                            "command that trains the best setting at the end. docs/sweeps.md.")
            stage.add_argument("--grid", action="append", default=[], metavar="KEY.PATH=V1,V2",
                               help="a model.* or train.* key and the values to try, comma-separated (repeatable: "
                                    "every combination is trained), e.g. --grid train.learning_rate=0.001,0.002")
            stage.add_argument("--seeds", metavar="S1,S2",
                               help="train each combination once per seed and rank by the mean (default: the config's seed)")
            stage.add_argument("--metric", choices=("val_loss", "val_accuracy"),
                               help="the validation metric to rank by, read at each trial's best epoch "
                                    "(default: train.early_stopping.monitor)")
        if name == "serve":
            stage.add_argument("--print-command", action="store_true",
                               help="print the server command line (uvicorn) instead of running it")
    init = sub.add_parser(
        "init-config", help="inspect a dataset and write a starting config for it (configs/NAME.yaml)",
        description=textwrap.dedent("""\
            Look at the first 2,000 records of a dataset (csv, jsonl, parquet, a folder of
            <label>/*.txt or a .zip/.tar.gz of one), guess the format and the text, label, id
            and split fields, print what it found and what it doubts, and write a config with
            only what differs from configs/default.yaml, plus the CPU settings of
            configs/bbc.yaml. Check the printout and the file, then run the pipeline on it.
            Refuses to overwrite an existing file without --force."""),
        epilog="example:\n  python -m pipeline init-config data/reviews.csv\n"
               "  make pipeline CONFIG=configs/reviews.yaml\n(make config DATA=data/reviews.csv does the first; "
               "docs/own-data.md walks through it)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("path", help="the data: a file, a folder or an archive (inside $HAN_DATA_DIR it is written as "
                                   "${HAN_DATA_DIR}/...)")
    init.add_argument("--name", help="the config's name, also its artifacts folder (default: from the file name)")
    init.add_argument("--output", metavar="PATH", help="where to write the config (default: configs/NAME.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite the output file when it exists")
    return parser


def cmd_init_config(args: argparse.Namespace) -> int:
    from pipeline.data.inspect import render, write_config

    found, output = write_config(args.path, name=args.name, output=args.output, force=args.force)
    print(render(found))
    shown = os.path.relpath(output) if not os.path.relpath(output).startswith("..") else str(output)
    print(f"init-config: wrote {shown}; check it, then: make pipeline CONFIG={shown}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unclosed_runs.clear()  # main runs more than once in a process (tests, Airflow)
    try:
        if args.stage == "init-config":  # writes a config; reads none
            return cmd_init_config(args)
        config = load_config(args.config, args.overrides)
        apply_runtime(config.resolved().runtime)  # before TensorFlow starts (its thread pools are fixed then); auto from the data
        check_reachable(tracking_uri())  # a tracking server that is down fails the command now, not after the work
        if args.stage not in ("predict", "serve"):  # and so does a store that cannot be written (locked, full)
            check_store_writable(tracking_uri())
        return COMMANDS[args.stage](config, args)
    except Exception as err:
        known = (ConfigError, FileNotFoundError, ValueError, RuntimeError, OSError)
        store_error = describe_store_error(err)  # SQLAlchemy's "database is locked", said plainly
        if os.environ.get("HAN_DEBUG") or not (store_error or isinstance(err, known)
                                               or type(err).__module__.startswith("mlflow")):
            raise
        if store_error is not None:
            err = store_error
        elif is_disk_full(err) and not isinstance(err, DiskFullError):
            err = f"the disk is full ({err}); free some space or set HAN_ARTIFACTS_DIR / MLFLOW_TRACKING_URI to a larger disk"
        print(f"error: {err}{unclosed_runs_note()}", file=sys.stderr)
        print("(set HAN_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
