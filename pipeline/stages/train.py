"""The train stage: fit the HAN on the preprocessed corpus, resumably, and log it to MLflow.

Input: ``artifacts/<name>/preprocess/`` (the encoded splits, vocabulary, labels, text processor).
Output: ``artifacts/<name>/train/``:

- ``model.keras``: the full model (probabilities + attention weights) with the best epoch's weights;
- ``bundle/``: the model with everything needed to read raw text (``pipeline.serving.bundle``);
- ``history.json``, ``training_curves.png``, ``manifest.json`` (fingerprint, best epoch, MLflow
  run id, registered model version).

Training batches stream from the preprocessed shards through ``tf.data`` (``pipeline.data.shards``),
bucketed by length and padded only to their own maxima, with bounded memory; the order of each
epoch is drawn from ``(seed, epoch)``. Under ``train.distribute`` (``pipeline.training.distribute``) the
chief alone logs, checkpoints and writes outputs. After every epoch the stage
writes a checkpoint to ``artifacts/<name>/train.resume/`` (all model variables, including the
dropout seed states, the optimizer state, history and early-stopping state); a run that is
killed, even with ``kill -9``, continues from its last finished epoch on the next start and ends
with the same weights as an uninterrupted run. Keras' ``BackupAndRestore`` keeps neither the
dropout seed states nor early-stopping state, so the stage keeps its own.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import faults
from pipeline.artifacts import (
    MANIFEST,
    atomic_directory,
    output_hashes,
    outputs_intact,
    read_json,
    read_manifest,
    write_json,
)
from pipeline.config import ModelConfig, PipelineConfig
from pipeline.training.callbacks import BatchProgress, WeightAverage, epoch_line, memory_trim
from pipeline.training.checkpoints import (
    CheckpointMismatch,
    Checkpoints,
    assign_variables,
    variable_items,
    variables_dict,
)
from pipeline.training.optimization import build_optimizer, class_weight_table, current_learning_rate

STAGE_VERSION = 1


class TrainError(RuntimeError):
    """The stage cannot run as configured; the message says what to do."""


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    manifest: dict[str, Any]
    skipped: bool
    chief: bool = True  # False on the other workers of a multi-worker run: they write nothing


def _log(message: str) -> None:
    print(f"train: {message}", file=sys.stderr, flush=True)


def fingerprint(config: PipelineConfig, preprocess_manifest: dict[str, Any]) -> str:
    """What the trained model depends on: the encoded data, the seed, the model and train settings."""
    key = {
        "stage_version": STAGE_VERSION,
        "preprocess": preprocess_manifest.get("fingerprint"),
        "config": config.section_hash("seed", "model", "train"),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def preprocess_outputs(config: PipelineConfig) -> tuple[Path, dict[str, Any]]:
    """The preprocess stage's directory and manifest, or a clear error saying how to make them."""
    directory = config.stage_dir("preprocess")
    manifest = read_manifest(directory)
    if manifest is None or not (directory / "train-00000.npz").is_file():
        raise TrainError(
            f"no preprocessing outputs in {directory}; run `{config.command('preprocess')}` first, "
            f"or `{config.command('pipeline')}` for every stage"
        )
    return directory, manifest


# --------------------------------------------------------------------------- the stage
def run(config: PipelineConfig, force: bool = False) -> TrainResult:
    """Train (or resume, or skip when nothing changed) and return where the outputs are."""
    prep_dir, prep_manifest = preprocess_outputs(config)
    out_dir = config.stage_dir("train")
    key = fingerprint(config, prep_manifest)
    previous = read_manifest(out_dir)
    if not force and previous and previous.get("fingerprint") == key and outputs_intact(out_dir, previous):
        manifest, note = ensure_tracked(config, out_dir, previous)
        _log(f"data and settings unchanged since {previous.get('created')}; nothing to do ({out_dir}; "
             f"MLflow run {manifest['mlflow']['run_id']}); to train again: `{config.command('train', '--force')}`"
             if note is None else note)
        return TrainResult(out_dir, manifest, skipped=True)
    return _fit(config, key, prep_dir, prep_manifest, out_dir, *_splits(config, prep_dir),
                resume_dir=config.artifacts_dir() / "train.resume")


def run_trial(config: PipelineConfig, output_dir: Path, run_name: str, tags: dict[str, str],
              word2vec_cache: dict[str, Any]) -> TrainResult:
    """One trial of a sweep (``pipeline.stages.sweep``), always trained anew.

    Its outputs (``history.json``, ``training_curves.png``, ``manifest.json``; no model file, no bundle) go
    to ``output_dir``, its checkpoints beside it, and its MLflow run, named ``run_name`` and tagged ``tags``,
    logs no model and registers nothing: a sweep compares settings, and the chosen ones are trained again by
    the train stage (the same result on a CPU). ``word2vec_cache`` holds the word vectors earlier trials learned,
    by what they were learned from (``_word2vec_key``): a trial with the same data, embedding settings and seed
    reuses them (the same vectors: word2vec is deterministic from its seed).
    """
    prep_dir, prep_manifest = preprocess_outputs(config)
    return _fit(config, fingerprint(config, prep_manifest), prep_dir, prep_manifest, output_dir,
                *_splits(config, prep_dir), resume_dir=output_dir.with_name(output_dir.name + ".resume"),
                run_name=run_name, tags=tags, word2vec_cache=word2vec_cache, save_model=False)


def _splits(config: PipelineConfig, prep_dir: Path):
    """The labels, the training split (streamed later) and the validation split (read whole)."""
    from pipeline.data.shards import load_split, shard_paths

    labels: list[str] = read_json(prep_dir / "labels.json")
    stats = read_json(prep_dir / "stats.json")
    if bool(stats.get("multilabel")) != config.data.multilabel:
        raise TrainError(f"{prep_dir} holds {'multi' if stats.get('multilabel') else 'single'}-label data but "
                         f"data.multilabel is {str(config.data.multilabel).lower()}; preprocess again "
                         f"(`{config.command('preprocess', '--force')}`)")
    train = TrainSplit(shard_paths(prep_dir, "train"), stats["documents"]["train"],
                       np.array([stats["class_balance"]["train"].get(label, 0) for label in labels]))
    validation = load_split(prep_dir, "validation")
    if train.documents == 0:
        raise TrainError(f"the training split in {prep_dir} is empty; check preprocess.split")
    return labels, train, validation


@dataclass(frozen=True)
class TrainSplit:
    """The training split as the stage streams it: its shards, how many documents, how many per class."""

    paths: list[Path]
    documents: int
    class_counts: np.ndarray


def _setup_determinism(config: PipelineConfig) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def _fit(config, key, prep_dir, prep_manifest, out_dir, labels, train, validation, *, resume_dir: Path,
         run_name: str = "train", tags: dict[str, str] | None = None, word2vec_cache: dict[str, Any] | None = None,
         save_model: bool = True) -> TrainResult:
    import contextlib

    import mlflow

    from pipeline.data.batching import bucketed_batches, document_sizes, make_dataset, without_autotune
    from pipeline.data.shards import TrainingStream, training_dataset
    from pipeline.model.han import build_han, compile_han, load_pretrained_embeddings
    from pipeline.runtime import apply_runtime, memory_mb, release_free_memory
    from pipeline.tracking import log_datasets, stage_run
    from pipeline.training import distribute

    resolved = resolved_config(config, prep_dir)  # every auto setting chosen from the preprocessed corpus
    settings = resolved.train
    started = time.perf_counter()
    apply_runtime(resolved.runtime)
    # The strategy first: MultiWorkerMirroredStrategy must exist before any other TensorFlow work.
    try:
        distribution = distribute.setup(settings.distribute)
    except distribute.DistributeError as err:
        raise TrainError(str(err)) from None
    chief = distribution.is_chief
    if distribution.strategy is not None:
        _log(distribution.describe())
    _setup_determinism(config)
    # Resident memory and the peak so far at each phase of this process: where a training peak comes from.
    memory: list[dict[str, Any]] = []

    def note_memory(phase: str) -> None:
        now = memory_mb()
        if now is not None:
            # The kernel's counters are per-thread and summed lazily, so VmHWM can read a little below an
            # earlier VmHWM or the current VmRSS: the peak so far is the highest reading so far.
            peak = max(now["peak"], now["rss"], *(m["peak"] for m in memory))
            memory.append({"phase": phase, "rss": now["rss"], "peak": peak})

    note_memory("started")
    vocab_tokens: list[str] = read_json(prep_dir / "vocab.json")["tokens"]
    embedding_matrix = None
    if config.model.embedding.pretrained_path:
        embedding_matrix, coverage = load_pretrained_embeddings(
            config.model.embedding.pretrained_path, vocab_tokens, config.model.embedding.dim, seed=config.seed)
        _log(f"pretrained embeddings cover {coverage:.1%} of the vocabulary")
    checkpoints = Checkpoints(resume_dir, key)
    restored = checkpoints.load() if settings.resume else None
    word2vec = None
    if config.model.embedding.word2vec.epochs and restored is None:  # a resumed run restores its embeddings
        learned = _word2vec_key(config, prep_manifest)
        if word2vec_cache is not None and learned in word2vec_cache:
            embedding_matrix, word2vec = word2vec_cache[learned]
            _log("word2vec: the vectors an earlier trial learned from the same data, settings and seed (not learned again)")
        else:
            embedding_matrix, word2vec = _learn_word2vec(config, _word2vec_paths(config, prep_dir, train), vocab_tokens)
            if word2vec_cache is not None:
                word2vec_cache[learned] = (embedding_matrix, word2vec)
    if word2vec is not None:
        note_memory("word vectors learned")
    replicas = distribution.replicas
    global_batch = settings.batch_size * replicas
    rate = settings.learning_rate * (replicas if settings.distribute.scale_learning_rate else 1)

    weights = class_weight_table(train.class_counts) if settings.class_weights == "balanced" else None

    def stream(epoch: int, workers: int = 1, worker: int = 0) -> TrainingStream:
        return TrainingStream(train.paths, documents=train.documents, batch_size=global_batch,
                              bucket_batches=settings.bucket_batches, seed=config.seed, epoch=epoch,
                              shuffle_buffer=settings.shuffle_buffer, class_weights=weights,
                              replicas=replicas, workers=workers, worker=worker, max_steps=settings.max_steps_per_epoch,
                              num_labels=len(labels) if config.data.multilabel else None)

    steps_per_epoch = stream(0).steps
    model_config = resolved.model
    with distribution.scope():
        model = build_han(training_model_config(model_config), vocab_size=len(vocab_tokens), num_classes=len(labels),
                          embedding_matrix=embedding_matrix)
        trainer = compile_han(model, model_config,
                              optimizer=build_optimizer(settings.model_copy(update={"learning_rate": rate}), steps_per_epoch))
        trainer.optimizer.build(trainer.trainable_variables)
        distribute.prepare_trainer(trainer, distribution)
    note_memory("model built")
    average = None
    if settings.ema_decay:
        if distribution.strategy is not None:
            raise TrainError("train.ema_decay is not supported with train.distribute yet; set one of them to null")
        average = WeightAverage(model.trainable_variables, settings.ema_decay)
    has_validation = len(validation) > 0
    monitor = settings.early_stopping.monitor if has_validation else settings.early_stopping.monitor.removeprefix("val_")
    if not has_validation:
        _log(f"the validation split is empty: early stopping and the best epoch use the training {monitor}")
    val_dataset = None
    if has_validation:
        v_sentences, v_longest = document_sizes(validation)
        val_plan = distribute.replica_batches(bucketed_batches(v_sentences * v_longest, config.evaluate.batch_size * replicas),
                                              replicas)
        val_dataset = distribute.distributed_dataset(
            distribution, lambda workers, worker: without_autotune(
                make_dataset(validation, distribute.worker_batches(val_plan, replicas, workers, worker))))

    state: dict[str, Any] = {"epochs_done": 0, "history": {}, "best_epoch": None, "best_value": None, "wait": 0,
                             "seconds": 0.0, "stopped_early": False, "runs": [],
                             "word2vec_seconds": None if word2vec is None else round(word2vec.seconds, 3)}
    best_values = variables_dict(model.variables)
    if restored is not None:
        state, current, best_values = restored
        try:
            assign_variables(model.variables, {k: v for k, v in current.items() if k.startswith("v")})
            assign_variables(trainer.optimizer.variables,
                             {k.removeprefix("opt_"): v for k, v in current.items() if k.startswith("opt_")})
        except CheckpointMismatch as err:
            raise TrainError(str(err)) from None
        if average is not None and not average.restore(current):
            _log("the checkpoint has no weight averages (train.ema_decay): averaging starts again from here")
        _log(f"resuming after epoch {state['epochs_done']} from {checkpoints.directory}")
    elif chief:
        checkpoints.clear()
    distribute.check_agreement(distribution, {"epochs done (from the checkpoint)": state["epochs_done"],
                                              "data and settings fingerprint": int(key[:12], 16)})

    if chief:
        _close_dead_attempts(state["runs"])
    mode_max = monitor.endswith("accuracy")
    tags = {"han.fingerprint": key, "han.preprocess_fingerprint": str(prep_manifest.get("fingerprint")),
            **(tags or {})}
    if state["runs"]:
        tags["han.resumed_from"] = state["runs"][-1]
    # Only the chief logs to MLflow and writes checkpoints and outputs; the other workers train alongside.
    tracked = stage_run(config, "train", tags, run_name=run_name, started=started) if chief else contextlib.nullcontext()
    with tracked as run:
        if chief:
            state["runs"].append(run.info.run_id)
            log_datasets(config, prep_dir, ("train", "validation"))
            # A resumed run re-logs the epochs it inherited, so its curves are whole.
            for epoch_index in range(state["epochs_done"]):
                mlflow.log_metrics({k: v[epoch_index] for k, v in state["history"].items()}, step=epoch_index + 1)
            mlflow.log_params({"train.steps_per_epoch": steps_per_epoch, "data.train_documents": train.documents,
                               "data.validation_documents": len(validation), "model.parameters": model.count_params(),
                               "distribute.kind": distribution.kind, "distribute.replicas": replicas,
                               "distribute.workers": distribution.workers, "train.global_batch_size": global_batch,
                               "train.effective_learning_rate": rate,
                               **{f"resolved.{key}": value for key, value in automatic_settings(config, resolved).items()}})
            if word2vec is not None:
                _log_word2vec(word2vec, vocab_tokens)
        _log(f"{train.documents:,} training / {len(validation):,} validation documents, {len(labels)} classes, "
             f"{model.count_params():,} parameters, {steps_per_epoch} batches per epoch of up to {global_batch}"
             + (f" ({settings.batch_size} per replica x {replicas}, learning rate {rate:g})" if replicas > 1 else ""))

        for epoch in range(state["epochs_done"], settings.epochs):
            if state["stopped_early"]:
                break
            epoch_started = time.perf_counter()
            streams: list[TrainingStream] = []

            def epoch_dataset(workers: int, worker: int, epoch: int = epoch, streams: list = streams):
                streams.append(stream(epoch, workers, worker))
                return training_dataset(streams[-1])

            dataset = distribute.distributed_dataset(distribution, epoch_dataset)
            # The rate the epoch starts with: a schedule steps per batch, and after the last epoch of a
            # cosine decay it is 0, which is not the rate any epoch trained with.
            epoch_rate = current_learning_rate(trainer.optimizer)
            fit = trainer.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, validation_data=val_dataset, verbose=0, shuffle=False,
                              callbacks=[BatchProgress(epoch, settings.epochs, steps_per_epoch),
                                         *memory_trim(config.runtime.malloc_trim_steps),
                                         *([] if average is None else [average.callback()])])
            logs = {name: float(values[-1]) for name, values in fit.history.items()}
            logs["learning_rate"] = epoch_rate
            logs["padding_efficiency"] = streams[-1].padding_efficiency  # this worker's batches
            for name, value in logs.items():
                state["history"].setdefault(name, []).append(value)
            value = logs[monitor]
            best = state["best_value"]
            improved = best is None or (value > best + settings.early_stopping.min_delta if mode_max
                                        else value < best - settings.early_stopping.min_delta)
            if improved:
                state.update(best_epoch=epoch + 1, best_value=value, wait=0)
                if average is None:
                    best_values = variables_dict(model.variables)
                else:  # the averaged weights, which validation read
                    average.swap_in()
                    best_values = variables_dict(model.variables)
                    average.swap_out()
            else:
                state["wait"] += 1
            patience = settings.early_stopping.patience
            if patience and state["wait"] >= patience:
                state["stopped_early"] = True
            state["epochs_done"] = epoch + 1
            state["seconds"] += time.perf_counter() - epoch_started
            if len(memory) and memory[-1]["phase"] in ("started", "word vectors learned", "model built"):
                note_memory("first epoch")  # the training and validation graphs traced, the datasets running
            if chief:
                mlflow.log_metrics(logs, step=epoch + 1)
            print(epoch_line(epoch + 1, settings.epochs, logs, time.perf_counter() - epoch_started, improved),
                  file=sys.stderr, flush=True)
            if chief:
                checkpoints.save(state, itertools.chain(variable_items(model.variables),
                                                        variable_items(trainer.optimizer.variables, prefix="opt_"),
                                                        () if average is None else average.items()),
                                 best_values)
                faults.point("train:checkpointed")
            if state["stopped_early"]:
                _log(f"stopping early: {monitor} has not improved for {patience} epochs")
                break

        assign_variables(model.variables, best_values)
        state["thresholds"] = (decision_thresholds(config, model, validation, labels)
                               if config.data.multilabel and save_model and chief else None)
        # Training is over. The training and validation graphs, the optimizer's moments and the
        # datasets go before the outputs' work (saving, the example prediction, MLflow's check of
        # the logged model) loads the model twice more: IMDB's train stage peaked 0.12-0.15 GB lower.
        note_memory("last epoch")
        trainer = fit = dataset = val_dataset = None
        gc.collect()
        release_free_memory()
        note_memory("released")
        state["memory_mb"] = memory
        if memory:
            _log("memory, resident / peak so far (MB): " + ", ".join(
                f"{m['phase']} {m['rss']:,.0f} / {m['peak']:,.0f}" for m in memory))
        if not chief:
            _log(f"worker {distribution.worker_index} done after {state['epochs_done']} epochs; "
                 "the chief writes the outputs and logs to MLflow")
            return TrainResult(out_dir, {}, skipped=False, chief=False)
        # A sweep trial saves no model: no need to rebuild it with the configured length groups.
        saved = saved_model(model, model_config, len(vocab_tokens), len(labels)) if save_model else model
        result = _write_outputs(config, key, prep_dir, out_dir, saved, labels, state, monitor, run, steps_per_epoch,
                                log_model=save_model)
    checkpoints.clear()
    _log(f"best epoch {state['best_epoch']} of {state['epochs_done']} ({monitor} {state['best_value']:.4f}); "
         f"{state['seconds']:.1f}s of training; outputs in {out_dir}")
    _log(f"total {time.perf_counter() - started:.1f}s in this process")
    return result


def decision_thresholds(config: PipelineConfig, model, validation, labels: list[str]) -> dict[str, Any]:
    """Multi-label: the probability above which each label is predicted (``train.thresholds``), chosen on the
    validation split to maximise F1 (``pipeline.evaluation.metrics.choose_thresholds``); 0.5 without a validation split."""
    from pipeline.config import THRESHOLD_MIN_POSITIVES
    from pipeline.evaluation.metrics import choose_thresholds
    from pipeline.model.han import inference_function
    from pipeline.stages.evaluate import predict_probabilities

    if len(validation) == 0:
        _log("multi-label thresholds: no validation split to choose them on; every label predicted from 0.5")
        return {"labels": labels, "thresholds": [0.5] * len(labels), "info": {"mode": "fixed", "global": 0.5}}
    probabilities = predict_probabilities(inference_function(model), validation, config.evaluate.batch_size)
    thresholds, info = choose_thresholds(validation.labels, probabilities, config.train.thresholds,
                                         THRESHOLD_MIN_POSITIVES)
    _log(f"multi-label thresholds chosen on {len(validation):,} validation documents ({config.train.thresholds}): "
         f"global {info['global']:.2f} (validation micro-F1 {info['validation_micro_f1_at_global']:.4f}), "
         f"{info['own_thresholds']} of {len(labels)} labels with their own "
         f"(from {THRESHOLD_MIN_POSITIVES} validation documents)")
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({"threshold.global": info["global"],
                            "val_micro_f1_at_threshold": info["validation_micro_f1_at_global"]})
    return {"labels": labels, "thresholds": [float(t) for t in thresholds], "info": info}


def resolved_config(config: PipelineConfig, prep_dir: Path) -> PipelineConfig:
    """``config`` with every ``auto`` chosen from the preprocessed corpus in ``prep_dir`` (``PipelineConfig.resolved``:
    the training split's size and sentence lengths, the vocabulary's size); says what it chose."""
    stats = read_json(prep_dir / "stats.json")
    resolved = config.resolved(stats)
    chosen = automatic_settings(config, resolved)
    if chosen:
        _log(f"auto settings for {stats['documents']['train']:,} training documents and a vocabulary of "
             f"{stats['vocabulary']['size']:,} (docs/speed-on-a-cpu.md): "
             + ", ".join(f"{key} {value}" for key, value in chosen.items()))
    return resolved


def automatic_settings(config: PipelineConfig, resolved: PipelineConfig) -> dict[str, Any]:
    """``{dotted key: value}`` of the settings that are ``auto`` in ``config``, as ``resolved`` chose them."""
    keys = (("model", "word_buckets"), ("model", "train_word_buckets"), ("model", "embedding_dropout"),
            ("train", "optimizer"), ("runtime", "intra_op_threads"))
    chosen = {}
    for section, key in keys:
        if getattr(getattr(config, section), key) == "auto":
            value = getattr(getattr(resolved, section), key)
            if key == "train_word_buckets":
                value = training_model_config(resolved.model).word_buckets
            chosen[f"{section}.{key}"] = "default" if value is None else value
    return chosen


def training_model_config(model: ModelConfig) -> ModelConfig:
    """The model settings to train with: ``model.train_word_buckets`` length groups where it is set."""
    if "auto" in (model.word_buckets, model.train_word_buckets):
        model = model.resolved()
    if model.train_word_buckets is None or model.train_word_buckets == model.word_buckets:
        return model
    return model.model_copy(update={"word_buckets": model.train_word_buckets})


def saved_model(trained, model: ModelConfig, vocab_size: int, num_classes: int):
    """The model to save: ``trained`` itself, or the same weights in a graph with ``model.word_buckets`` groups.

    The length groups run the same layers on different slices of a batch, so the two models hold the
    same variables in the same order; only the number of groups (a constant of the graph) differs.
    """
    from pipeline.model.han import build_han

    if "auto" in (model.word_buckets, model.train_word_buckets):
        model = model.resolved()
    if training_model_config(model) is model:
        return trained
    saved = build_han(model, vocab_size=vocab_size, num_classes=num_classes)
    saved.set_weights(trained.get_weights())
    _log(f"saving the weights trained with {model.train_word_buckets} length groups in a model with {model.word_buckets}")
    return saved


def _word2vec_key(config: PipelineConfig, preprocess_manifest: dict[str, Any]) -> str:
    """What learned word vectors depend on: the encoded training split, their settings, the dimension and the seed."""
    return json.dumps([preprocess_manifest.get("fingerprint"), config.model.embedding.word2vec.model_dump(mode="json"),
                       config.model.embedding.dim, config.seed], sort_keys=True)


def _word2vec_paths(config: PipelineConfig, prep_dir: Path, train: TrainSplit) -> list[Path]:
    """The shards word2vec reads (``model.embedding.word2vec.text``): the training split's, then the validation split's."""
    from pipeline.data.shards import shard_paths

    if config.model.embedding.word2vec.text == "train_validation":
        return [*train.paths, *shard_paths(prep_dir, "validation")]
    return list(train.paths)


def _learn_word2vec(config: PipelineConfig, paths: list[Path], vocab_tokens: list[str]):
    from pipeline.model.word2vec import train_word2vec

    settings = config.model.embedding.word2vec
    source = "training and validation splits" if settings.text == "train_validation" else "training split"
    _log(f"word2vec: learning {config.model.embedding.dim}-dimensional vectors for {len(vocab_tokens):,} tokens "
         f"from the {source} ({settings.epochs} epochs, window {settings.window}, {settings.negatives} negatives)")
    result = train_word2vec(paths, len(vocab_tokens), config.model.embedding.dim, epochs=settings.epochs,
                            window=settings.window, negatives=settings.negatives, subsample=settings.subsample,
                            learning_rate=settings.learning_rate, seed=config.seed, progress=_log)
    return result.vectors, result


def _log_word2vec(result, vocab_tokens: list[str]) -> None:
    """Loss per epoch, time, and each of a few words' nearest neighbours: a quick read of whether the vectors mean anything."""
    import mlflow

    from pipeline.model.word2vec import nearest_neighbours

    for epoch, loss in enumerate(result.losses, start=1):
        mlflow.log_metric("word2vec_loss", loss, step=epoch)
    mlflow.log_metrics({"word2vec_seconds": result.seconds, "word2vec_pairs_per_epoch": float(result.pairs_per_epoch)})
    # Words of middling frequency (the vocabulary is sorted by count): common enough to have
    # learned something, rarer than the function words at the top.
    queries = [i for i in range(50, min(len(vocab_tokens), 2000), 75) if vocab_tokens[i].isalpha()][:20]
    lines = [f"{word}: {', '.join(near)}" for word, near in nearest_neighbours(result.vectors, vocab_tokens, queries).items()]
    mlflow.log_text("\n".join(lines) + "\n", "train/word2vec_neighbours.txt")


def _close_dead_attempts(run_ids: list[str]) -> None:
    """Runs of earlier attempts that died (kill -9, a lost node) stay RUNNING in MLflow: mark them KILLED."""
    import mlflow

    from pipeline.tracking import connect

    if not run_ids:
        return
    connect()
    client = mlflow.MlflowClient()
    for run_id in run_ids:
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED")
                _log(f"marked the interrupted attempt's MLflow run {run_id} as KILLED")
        except mlflow.exceptions.MlflowException:
            continue  # not in this store (the tracking URI changed): nothing to close


def _version_of_earlier_attempt(name: str | None, run_ids: list[str]):
    """The registered version logged by one of ``run_ids`` (earlier attempts of this training), if any."""
    if not name or not run_ids:
        return None
    import mlflow

    quoted = ", ".join(f"'{run_id}'" for run_id in run_ids)
    try:
        found = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id IN ({quoted})")
    except mlflow.exceptions.MlflowException:
        return None
    return max(found, key=lambda v: int(v.version)) if found else None


def _write_outputs(config, key, prep_dir, out_dir, model, labels, state, monitor, run, steps_per_epoch,
                   log_model: bool = True) -> TrainResult:
    """The stage's outputs and MLflow artifacts; without ``log_model`` (a sweep trial) no model file,
    bundle, MLflow model or registered version."""
    import mlflow

    from pipeline.evaluation.metrics import plot_training_curves
    from pipeline.serving.bundle import write_bundle

    with atomic_directory(out_dir) as staging:
        if log_model:
            model.save(staging / "model.keras")
        thresholds = state.get("thresholds")
        if thresholds is not None:
            write_json(staging / "thresholds.json", thresholds)
        write_json(staging / "history.json", {"history": state["history"], "best_epoch": state["best_epoch"],
                                             "monitor": monitor, "best_value": state["best_value"],
                                             "stopped_early": state["stopped_early"]})
        plot_training_curves(state["history"], staging / "training_curves.png", best_epoch=state["best_epoch"])
        if log_model:
            write_bundle(staging / "bundle", staging / "model.keras", prep_dir,
                         thresholds=None if thresholds is None else thresholds["thresholds"])
        mlflow.log_artifact(str(staging / "history.json"), "train")
        mlflow.log_artifact(str(staging / "training_curves.png"), "train")
        mlflow.log_metrics({"best_epoch": float(state["best_epoch"]), f"best_{monitor}": float(state["best_value"]),
                            "epochs_run": float(state["epochs_done"]), "train_seconds": float(state["seconds"])})
        model_uri, version = _log_model(config, key, prep_dir, staging, model, state, run) if log_model else (None, None)
        manifest = {
            "stage": "train",
            "stage_version": STAGE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fingerprint": key,
            "config_hash": config.section_hash("seed", "model", "train"),
            "preprocess_fingerprint": read_manifest(prep_dir).get("fingerprint"),
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epochs_done"],
            "stopped_early": state["stopped_early"],
            "monitor": monitor,
            "best_value": state["best_value"],
            "steps_per_epoch": steps_per_epoch,
            "train_seconds": round(state["seconds"], 3),
            "word2vec_seconds": state.get("word2vec_seconds"),  # the vectors learned first (model.embedding.word2vec); null: off
            "memory_mb": state.get("memory_mb"),  # resident / peak so far after each phase of the process that trained
            "mlflow": {
                "run_id": run.info.run_id,
                "previous_run_ids": state["runs"][:-1],
                "model_uri": model_uri,
                "registered_model": config.tracking.registered_model if log_model else None,
                "registered_version": None if version is None else str(version),
            },
            "outputs": {},
        }
        manifest["outputs"] = output_hashes(staging)
        write_json(staging / MANIFEST, manifest)
        mlflow.log_artifact(str(staging / MANIFEST), "train")
    return TrainResult(out_dir, manifest, skipped=False)


def _log_model(config, key, prep_dir, staging, model, state, run) -> tuple[str, str | None]:
    """Log the Keras model and the raw-text model to the run, register the latter; its URI and version."""
    import mlflow

    from pipeline.serving.bundle import log_raw_text_model

    _log_keras_model(model)
    earlier = _version_of_earlier_attempt(config.tracking.registered_model, state["runs"][:-1])
    if earlier is not None:
        # An earlier attempt of this same training registered the model, then died before its
        # outputs were in place: reuse that version rather than register a duplicate.
        _log(f"version {earlier.version} of {config.tracking.registered_model} was registered by an earlier "
             f"attempt (run {earlier.run_id}); reusing it")
        mlflow.set_tag("han.model_version_reused", str(earlier.version))
        return earlier.source, str(earlier.version)
    info = log_raw_text_model(staging / "bundle", name="model", registered_model_name=config.tracking.registered_model,
                              example_texts=_example_texts(prep_dir))
    model_uri, version = info.model_uri, getattr(info, "registered_model_version", None)
    if version is not None:
        from pipeline.registry import version_tags

        client = mlflow.MlflowClient()
        labels = read_json(prep_dir / "labels.json")
        for tag, value in {**version_tags(config, labels), "han.train_run_id": run.info.run_id,
                           "han.fingerprint": key}.items():
            client.set_model_version_tag(config.tracking.registered_model, str(version), tag, value)
    return model_uri, version


def ensure_tracked(config: PipelineConfig, out_dir: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The trained outputs' run and registered version, in the tracking store in use now.

    The manifest names the run and version that logged these outputs, in whatever store was in use
    then. When the store in use now lacks them (a new ``mlflow.db``, another ``MLFLOW_TRACKING_URI``,
    a tracking server), or its version was registered without the hashes of its files (before they
    were recorded: loaders refuse it), the model on disk is logged and registered there, without
    training again, and the manifest is updated to point at it. Returns the manifest and a line
    saying what was done (None when the store already had them).
    """
    from pipeline.registry import ARTIFACT_SHA256_TAG, registered_here
    from pipeline.tracking import connect, tracking_uri

    mlflow = connect()
    tracked = manifest.get("mlflow") or {}
    name = config.tracking.registered_model
    found = registered_here(mlflow.MlflowClient(), tracked, name, manifest["fingerprint"])
    if found is not None and not (found.tags or {}).get(ARTIFACT_SHA256_TAG):
        updated = _log_existing(config, out_dir, manifest)
        return updated, (f"{name} version {found.version} of these outputs was registered without the hashes of its "
                         f"files, which loaders check: registered the model on disk again as version "
                         f"{updated['mlflow']['registered_version']} (run {updated['mlflow']['run_id']}), not retrained")
    if found is not None and found.run_id == tracked.get("run_id"):
        return manifest, None
    before = (f"{tracked.get('registered_model')} version {tracked.get('registered_version')}"
              if tracked.get("registered_version") else "an unregistered model")
    unchanged = f"data and settings unchanged since {manifest.get('created')}"
    if found is not None:
        # This store registered the same outputs before (e.g. before a switch to another store and back).
        updated = _point_manifest(out_dir, manifest, {"run_id": found.run_id, "previous_run_ids": [],
                                                      "model_uri": found.source, "registered_model": name,
                                                      "registered_version": str(found.version)})
        return updated, (f"{unchanged}; its run {tracked.get('run_id')} is in another tracking store, and "
                         f"{tracking_uri()} holds the same model as {name} version {found.version} (run {found.run_id}): "
                         "using that, not retrained")
    updated = _log_existing(config, out_dir, manifest)
    now = updated["mlflow"]
    return updated, (f"{unchanged}, but the tracking store {tracking_uri()} lacks its run and {before}: logged the "
                     f"model on disk there as {name} version {now['registered_version']} (run {now['run_id']}), "
                     "not retrained")


def _log_existing(config: PipelineConfig, out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Log a finished training's outputs into the current store as a train run and register its model;
    rewrite the manifest's ``mlflow`` section to name them."""
    import mlflow

    from pipeline.model.han import load_han
    from pipeline.tracking import stage_run

    prep_dir = config.stage_dir("preprocess")
    history = read_json(out_dir / "history.json")
    earlier = manifest.get("mlflow") or {}
    tags = {"han.fingerprint": manifest["fingerprint"], "han.preprocess_fingerprint": str(manifest.get("preprocess_fingerprint")),
            "han.cached": "true", "han.logged_from_disk": "true", "han.earlier_run_id": str(earlier.get("run_id"))}
    with stage_run(config, "train", tags) as run:
        for epoch, values in enumerate(zip(*history["history"].values(), strict=True), start=1):
            mlflow.log_metrics(dict(zip(history["history"], values, strict=True)), step=epoch)
        mlflow.log_metrics({"best_epoch": float(manifest["best_epoch"]), f"best_{manifest['monitor']}": float(manifest["best_value"]),
                            "epochs_run": float(manifest["epochs_run"]), "train_seconds": float(manifest["train_seconds"])})
        for name in ("history.json", "training_curves.png", MANIFEST):
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name), "train")
        model = load_han(out_dir / "model.keras")
        model_uri, version = _log_model(config, manifest["fingerprint"], prep_dir, out_dir, model, {"runs": []}, run)
    return _point_manifest(out_dir, manifest, {"run_id": run.info.run_id, "previous_run_ids": [], "model_uri": model_uri,
                                               "registered_model": config.tracking.registered_model,
                                               "registered_version": None if version is None else str(version)})


def _point_manifest(out_dir: Path, manifest: dict[str, Any], tracked: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its ``mlflow`` section replaced by ``tracked`` (the store in use now), the one it
    replaces kept as ``earlier_store``; written whole or not at all (a temporary file renamed over it)."""
    earlier = manifest.get("mlflow") or {}
    updated = {**manifest, "mlflow": {**tracked, "earlier_store": {k: earlier.get(k) for k in
                                                                   ("run_id", "registered_model", "registered_version")}}}
    path = out_dir / MANIFEST
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write_json(tmp, updated)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return updated


def _log_keras_model(model) -> None:
    """The Keras model as MLflow's own flavour, with a signature (an input example breaks on Keras 3.15)."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.int32), (-1, -1, -1), "token_ids")]),
        outputs=Schema([
            TensorSpec(np.dtype(np.float32), (-1, -1), "probabilities"),
            TensorSpec(np.dtype(np.float32), (-1, -1), "sentence_weights"),
            TensorSpec(np.dtype(np.float32), (-1, -1, -1), "word_weights"),
        ]),
    )
    from pipeline.serving.bundle import pinned_requirements

    mlflow.keras.log_model(model, name="keras-model", signature=signature,
                           pip_requirements=pinned_requirements(("tensorflow", "keras", "numpy")))


def _example_texts(prep_dir: Path, count: int = 2) -> list[str]:
    """A few validation (or training) documents as raw-looking text, for the model's input example."""
    for split in ("validation", "train"):
        path = prep_dir / f"{split}.documents.jsonl"
        if path.is_file():
            rows = []
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    rows.append(" ".join(json.loads(line)["sentences"]))
                    if len(rows) == count:
                        break
            if rows:
                return rows
    return ["An example document. It has two sentences."]
