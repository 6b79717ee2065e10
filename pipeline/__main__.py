"""Command line: ``python -m pipeline <stage> [--config PATH] [--set key.path=value ...]``."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable

from pipeline.config import PROJECT_ROOT, ConfigError, PipelineConfig, load_config

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
    """
)

STAGE_HELP = {
    "preprocess": "read, validate/quarantine, split, sentence-split, tokenize and encode the corpus",
    "train": "train the HAN on the preprocessed corpus (logs to MLflow)",
    "evaluate": "score the trained model on the test split against a TF-IDF baseline, apply the gate",
    "explain": "write per-document attention explanations, an HTML report and faithfulness metrics",
    "run": "the whole pipeline: preprocess -> train -> evaluate -> explain",
    "predict": "classify raw text (with --explain: show the sentences the model attended to)",
}

# Stages that a later issue builds; they say so instead of pretending to work.
NOT_BUILT = {
    "train": "#4 (training and evaluation stages)",
    "evaluate": "#4 (training and evaluation stages)",
    "explain": "#5 (explanations and faithfulness)",
    "predict": "#4 (the raw-text model) and #5 (explanations)",
}


class NotBuiltYet(RuntimeError):
    pass


def _not_built(stage: str) -> NotBuiltYet:
    return NotBuiltYet(f"{stage}: not built yet (planned in issue {NOT_BUILT[stage]})")


def cmd_preprocess(config: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.stages import preprocess

    result = preprocess.run(config, force=args.force)
    counts = result.manifest["counts"]
    print(f"preprocess: {counts['input']:,} input = {counts['kept']:,} kept + {counts['quarantined']:,} quarantined")
    print(f"preprocess: outputs in {result.output_dir}")
    return 0


def cmd_not_built(stage: str) -> Callable[[PipelineConfig, argparse.Namespace], int]:
    def command(config: PipelineConfig, args: argparse.Namespace) -> int:
        raise _not_built(stage)

    return command


def cmd_run(config: PipelineConfig, args: argparse.Namespace) -> int:
    """Run every stage that exists, in order, and list the ones still to come."""
    status = cmd_preprocess(config, args)
    missing = [stage for stage in ("train", "evaluate", "explain") if stage in NOT_BUILT]
    for stage in missing:
        print(str(_not_built(stage)), file=sys.stderr)
    if missing:
        print(f"run: finished the stages that exist; {', '.join(missing)} still to come.")
    return status


COMMANDS: dict[str, Callable[[PipelineConfig, argparse.Namespace], int]] = {
    "preprocess": cmd_preprocess,
    "train": cmd_not_built("train"),
    "evaluate": cmd_not_built("evaluate"),
    "explain": cmd_not_built("explain"),
    "run": cmd_run,
    "predict": cmd_not_built("predict"),
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
        if name in ("preprocess", "run"):
            stage.add_argument("--force", action="store_true",
                               help="redo preprocessing even when inputs and config are unchanged")
        if name == "predict":
            stage.add_argument("text", nargs="?", help="the text to classify")
            stage.add_argument("--file", help="read the text from this file")
            stage.add_argument("--explain", action="store_true", help="show the top sentences and their weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        return COMMANDS[args.stage](config, args)
    except NotBuiltYet as err:
        print(str(err), file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:
        if os.environ.get("HAN_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        print("(set HAN_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
