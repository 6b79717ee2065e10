"""A small grid sweep of model and training settings, ranked on the validation split, logged to MLflow.

``python -m pipeline sweep --config C --grid train.learning_rate=0.001,0.002 --grid model.dropout=0.2,0.3
--seeds 42,1`` trains every combination of the grid's values (a *point*) once per seed, each a real
train stage (``pipeline.stages.train``) on the config's one preprocessing, in this process. Points
are ranked by the mean over their seeds of a validation metric read at each trial's best epoch
(default: the metric early stopping watches), never by the test split, which stays unseen until
``evaluate``. Only ``model.*`` and ``train.*`` keys can vary: the preprocessing is shared, and
``runtime`` is fixed once TensorFlow starts.

Outputs, in ``artifacts/<name>/sweep/<started>/``: ``trial-NNN/`` (each trial's ``history.json``,
``training_curves.png``, ``manifest.json``; no model file), ``results.json``, ``results.md`` (the
ranking) and ``sweep.png`` (each point's trials and mean). MLflow: a parent run ``sweep-<name>`` with
the grid, the ranking and the plot; each trial's train run nested under it (all its config values
as params, its per-epoch metrics), logging no model and registering nothing. The chosen setting is
then trained by the train stage with the printed ``--set`` options: training is deterministic on a
CPU, so it reproduces its trial.
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import faults
from pipeline.artifacts import read_json, replacing_file
from pipeline.config import ConfigError, PipelineConfig, load_config, parse_override

SWEEPABLE = ("model.", "train.")
METRICS = ("val_loss", "val_accuracy")


def _log(message: str) -> None:
    print(f"sweep: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Axis:
    """One swept key and its values as written (``0.001``), each parsed as YAML like ``--set``."""

    key: str
    values: tuple[str, ...]


@dataclass
class Trial:
    """One training of a point with one seed, and what it measured (None until it has run)."""

    index: int
    point: int  # the grid point (index into ``points``)
    seed: int
    overrides: tuple[str, ...]  # ``key=value`` of the point
    value: float | None = None  # the ranked metric at the best epoch
    best_epoch: int | None = None
    epochs_run: int | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    seconds: float | None = None
    run_id: str | None = None
    error: str | None = None  # why the trial failed; the sweep goes on without it


@dataclass
class SweepResult:
    output_dir: Path
    metric: str
    seeds: list[int]
    trials: list[Trial]
    points: list[dict[str, Any]] = field(default_factory=list)  # ranked, best first
    run: Any = None  # the parent MLflow run

    @property
    def failed(self) -> list[Trial]:
        return [t for t in self.trials if t.error is not None]


def split_values(text: str) -> list[str]:
    """``0.1,0.2`` -> ``["0.1", "0.2"]``; commas inside brackets or quotes stay (``[1, 2],[3]``)."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_grid(items: Sequence[str]) -> list[Axis]:
    """``--grid key=v1,v2`` items -> axes; a clear ``ConfigError`` for anything a sweep cannot vary."""
    if not items:
        raise ConfigError("a sweep needs at least one --grid KEY=V1,V2,... (e.g. --grid train.learning_rate=0.001,0.002)")
    axes: list[Axis] = []
    for item in items:
        key, _ = parse_override(item)  # the same key syntax and messages as --set
        values = tuple(split_values(item.partition("=")[2]))
        if key == "seed":
            raise ConfigError(f"--grid {item!r}: give seeds with --seeds 42,1,... (each point is trained once per seed)")
        if not key.startswith(SWEEPABLE):
            raise ConfigError(
                f"--grid {item!r}: a sweep varies model.* and train.* keys only; {key} would need its own "
                "preprocessing (data, preprocess) or cannot change once TensorFlow runs (runtime): run those "
                "settings as separate pipelines")
        if any(not value for value in values):
            raise ConfigError(f"--grid {item!r}: an empty value; write the values separated by commas, e.g. {key}=0.1,0.2")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {item!r}: a value is repeated")
        if any(axis.key == key for axis in axes):
            raise ConfigError(f"--grid {item!r}: {key} is already swept by another --grid; give all its values in one")
        axes.append(Axis(key, values))
    return axes


def parse_seeds(text: str | None, default: int) -> list[int]:
    if not text:
        return [default]
    try:
        seeds = [int(part) for part in split_values(text)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected whole numbers separated by commas, e.g. --seeds 42,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def plan(config_path: str | Path | None, overrides: Sequence[str], axes: list[Axis], seeds: list[int]
         ) -> tuple[list[tuple[str, ...]], list[Trial], dict[int, PipelineConfig]]:
    """Every point and trial, each trial's config validated before anything trains."""
    points = [tuple(f"{axis.key}={value}" for axis, value in zip(axes, combo, strict=True))
              for combo in itertools.product(*(axis.values for axis in axes))]
    trials: list[Trial] = []
    configs: dict[int, PipelineConfig] = {}
    for point_index, point in enumerate(points):
        for seed in seeds:
            trial = Trial(index=len(trials) + 1, point=point_index, seed=seed, overrides=point)
            try:
                configs[trial.index] = load_config(config_path, [*overrides, *point, f"seed={seed}"])
            except ConfigError as err:
                raise ConfigError(f"sweep point {' '.join(point)}: {err}") from None
            trials.append(trial)
    return points, trials, configs


def _better(metric: str) -> bool:
    """True when larger values of ``metric`` are better."""
    return metric.endswith("accuracy")


def rank(points: list[tuple[str, ...]], trials: list[Trial], metric: str) -> list[dict[str, Any]]:
    """Points with their trials' mean and spread of ``metric``, best first."""
    ranked = []
    for index, point in enumerate(points):
        values = [t.value for t in trials if t.point == index and t.value is not None]
        # A trial that diverged (NaN or infinite loss) or failed makes its point unrankable: last, no mean.
        usable = all(math.isfinite(v) for v in values) and not any(t.error for t in trials if t.point == index)
        ranked.append({"point": index, "settings": list(point), "values": values,
                       "mean": statistics.fmean(values) if values and usable else None,
                       "stdev": statistics.stdev(values) if len(values) > 1 and usable else None,  # one seed: no spread
                       "val_accuracy": _mean([t.val_accuracy for t in trials if t.point == index]),
                       "val_loss": _mean([t.val_loss for t in trials if t.point == index]) if usable else None,
                       "seconds": _mean([t.seconds for t in trials if t.point == index])})
    # Ties (accuracy on a small validation split moves in steps of 1/documents; means of such steps
    # differ in the last bits) go to the lower val_loss.
    sign = -1.0 if _better(metric) else 1.0
    ranked.sort(key=lambda p: (p["mean"] is None, round(sign * (p["mean"] or 0.0), 9), p["val_loss"] or 0.0, p["point"]))
    for position, entry in enumerate(ranked, start=1):
        entry["rank"] = position
    return ranked


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def markdown(result: SweepResult, config_name: str) -> str:
    seeds = result.seeds
    lines = [f"# Sweep of {config_name}: {len(result.points)} point{'s' * (len(result.points) != 1)} x {len(seeds)} "
             f"seed{'s' * (len(seeds) != 1)} ({', '.join(map(str, seeds))})",
             "", f"Ranked by the mean of {result.metric} at each trial's best epoch (validation split).", "",
             f"| rank | settings | {result.metric} mean | spread (sd) | val_accuracy | val_loss | seconds per trial |",
             "|---|---|---|---|---|---|---|"]
    for p in result.points:
        lines.append(f"| {p['rank']} | {' '.join(p['settings'])} | {_fmt(p['mean'])} | {_fmt(p['stdev'])} | "
                     f"{_fmt(p['val_accuracy'])} | {_fmt(p['val_loss'])} | {p['seconds'] or 0:.1f} |")
    unranked = [t for t in result.trials if t.error or (t.value is not None and not math.isfinite(t.value))]
    if unranked:
        lines += ["", "Not ranked (their points have no mean):", ""]
        lines += [f"- trial {t.index} ({' '.join(t.overrides)}, seed {t.seed}): "
                  + (f"failed: {t.error}" if t.error else f"diverged ({result.metric} {t.value})") for t in unranked]
    return "\n".join(lines) + "\n"


def run(config_path: str | Path | None, overrides: Sequence[str], grid: Sequence[str], seeds_text: str | None = None,
        metric: str | None = None) -> SweepResult:
    """Train every trial of the grid, rank the points, write and log the results (module docstring)."""
    import keras

    from pipeline.evaluation.metrics import plot_sweep
    from pipeline.stages import train
    from pipeline.tracking import connect, stage_run

    base = load_config(config_path, overrides)
    axes = parse_grid(grid)
    seeds = parse_seeds(seeds_text, base.seed)
    metric = metric or base.train.early_stopping.monitor
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric}: a sweep ranks on the validation split: one of {', '.join(METRICS)}")
    if base.train.distribute.strategy == "multi_worker":
        raise ConfigError("a sweep trains in one process; train.distribute.strategy=multi_worker needs several")
    prep_dir, _ = train.preprocess_outputs(base)  # a clear error before anything trains
    stats = read_json(prep_dir / "stats.json")
    if not stats["documents"].get("validation"):
        raise ConfigError(f"the validation split in {prep_dir} is empty: a sweep ranks on it; preprocess with "
                          "preprocess.split.validation > 0")
    points, trials, configs = plan(config_path, overrides, axes, seeds)
    out_dir = base.stage_dir("sweep") / time.strftime("%Y%m%d-%H%M%S")
    result = SweepResult(out_dir, metric, seeds, trials)
    out_dir.mkdir(parents=True, exist_ok=True)
    _log(f"{len(trials)} trials: {len(points)} points ({' x '.join(f'{len(a.values)} {a.key}' for a in axes)}) "
         f"x {len(seeds)} seed{'s' * (len(seeds) > 1)}, ranked by {metric} on the validation split; outputs in {out_dir}")

    mlflow = connect()
    config_name = str(config_path) if config_path else "the built-in defaults"
    with stage_run(base, "sweep", {"han.sweep.grid": " ".join(grid), "han.sweep.metric": metric},
                   run_name=f"sweep-{base.name}") as parent:
        result.run = parent
        mlflow.log_params({"sweep.grid": " | ".join(grid), "sweep.seeds": ",".join(map(str, seeds)),
                           "sweep.metric": metric, "sweep.trials": len(trials)})
        started = time.perf_counter()
        word2vec: dict[str, Any] = {}  # vectors learned by a trial, for the trials with the same seed (train.run_trial)
        for trial in trials:
            settings = " ".join(trial.overrides)
            _log(f"trial {trial.index}/{len(trials)}: {settings} seed {trial.seed}")
            keras.backend.clear_session(free_memory=True)  # each trial builds its graphs anew
            try:
                trained = train.run_trial(
                    configs[trial.index], out_dir / f"trial-{trial.index:03d}",
                    run_name=f"trial-{trial.index} {settings} seed {trial.seed}",
                    tags={"han.sweep.run_id": parent.info.run_id, "han.sweep.point": settings,
                          "han.sweep.seed": str(trial.seed)}, word2vec_cache=word2vec)
                _record(trial, trained, metric)
            except Exception as err:  # one bad point (a wrong path, a diverging rate) must not cost the others
                trial.error = f"{type(err).__name__}: {err}"
                shutil.rmtree(out_dir / f"trial-{trial.index:03d}.resume", ignore_errors=True)  # its checkpoints
                _log(f"trial {trial.index}/{len(trials)} FAILED ({trial.error}); going on with the others")
            result.points = rank(points, trials, metric)
            _write_results(result, out_dir, config_name, overrides, axes)
            faults.point("sweep:trial_recorded")
            finished = trials.index(trial) + 1
            left = f"about {(time.perf_counter() - started) / finished * (len(trials) - finished) / 60:.1f} min left"
            if trial.error is not None:
                continue
            mlflow.log_metric(metric, trial.value, step=trial.index)
            ranked = [t for t in trials if t.value is not None and math.isfinite(t.value)]
            best = (max if _better(metric) else min)(ranked, key=lambda t: t.value) if ranked else None
            _log(f"trial {trial.index}/{len(trials)}: {metric} {trial.value:.4f} at epoch {trial.best_epoch} "
                 f"({trial.seconds:.1f}s of training); "
                 + (f"best trial so far {best.index} ({best.value:.4f}); " if best else "") + left)
        if len(result.failed) == len(trials):
            raise RuntimeError(f"every trial of the sweep failed; the first: {trials[0].error} (results in {out_dir})")
        plot_sweep(result.points, metric, out_dir / "sweep.png", higher_is_better=_better(metric))
        for name in ("results.json", "results.md", "sweep.png"):
            mlflow.log_artifact(str(out_dir / name), "sweep")
        best = result.points[0]
        if best["mean"] is not None:
            mlflow.log_metric(f"best_{metric}", best["mean"])
            mlflow.set_tag("han.sweep.best", " ".join(best["settings"]))
        if result.failed:
            mlflow.set_tag("han.sweep.failed_trials", ",".join(str(t.index) for t in result.failed))
    return result


def _write_results(result: SweepResult, out_dir: Path, config_name: str, overrides: Sequence[str], axes: list[Axis]) -> None:
    """``results.json`` and ``results.md`` as they stand: rewritten after every trial, so a sweep that
    fails or is interrupted keeps what its finished trials measured (unfinished ones have no value)."""
    results = {
        "config": config_name, "overrides": list(overrides), "grid": [{"key": a.key, "values": list(a.values)} for a in axes],
        "seeds": result.seeds, "metric": result.metric, "mlflow_run_id": result.run.info.run_id,
        "finished_trials": sum(t.value is not None for t in result.trials),
        "failed_trials": [t.index for t in result.failed],
        "points": result.points, "trials": [vars(t) | {"overrides": list(t.overrides)} for t in result.trials]}
    # Each replaced whole: a full disk keeps the previous trial's results, not half of this one's.
    with replacing_file(out_dir / "results.json") as handle:
        json.dump(results, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    with replacing_file(out_dir / "results.md") as handle:
        handle.write(markdown(result, config_name))


def _record(trial: Trial, trained, metric: str) -> None:
    manifest = trained.manifest
    history = read_json(trained.output_dir / "history.json")["history"]
    at_best = manifest["best_epoch"] - 1
    trial.best_epoch, trial.epochs_run = manifest["best_epoch"], manifest["epochs_run"]
    trial.seconds = manifest["train_seconds"]
    trial.run_id = manifest["mlflow"]["run_id"]
    trial.val_loss, trial.val_accuracy = history["val_loss"][at_best], history["val_accuracy"][at_best]
    trial.value = history[metric][at_best]  # run() checked that the validation split is not empty


def train_command(config_path: str | None, overrides: Sequence[str], settings: Sequence[str]) -> str:
    """The train-stage command line (shell-quoted) that trains a point with the config's seed."""
    sets = [*overrides, *settings]
    return " ".join(["python -m pipeline train", *([f"--config {shlex.quote(str(config_path))}"] if config_path else []),
                     *(f"--set {shlex.quote(s)}" for s in sets)])
