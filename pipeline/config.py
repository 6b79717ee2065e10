"""Typed pipeline configuration: YAML file + dotted ``--set`` overrides, validated on load.

Every section is a strict pydantic model: an unknown key, a wrong type or an out-of-range
value fails with the file, the dotted key and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "configs" / "default.yaml"
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ConfigError(ValueError):
    """A configuration problem, with the file and key it concerns and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DemoCorpusConfig(_Strict):
    """The built-in synthetic corpus (see ``pipeline.data.demo``)."""

    num_documents: int = Field(1200, ge=20, le=1_000_000)
    num_classes: int = Field(4, ge=4, le=6)
    min_sentences: int = Field(5, ge=3, le=200)
    max_sentences: int = Field(30, ge=3, le=400)

    @model_validator(mode="after")
    def _ordered(self) -> DemoCorpusConfig:
        if self.min_sentences > self.max_sentences:
            raise ValueError(
                f"min_sentences ({self.min_sentences}) must be <= max_sentences ({self.max_sentences})"
            )
        return self


class DataConfig(_Strict):
    """Where the documents come from and how to read them."""

    format: Literal["demo", "folder", "csv", "jsonl", "parquet"] = "demo"
    path: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    id_field: str | None = "id"
    split_field: str | None = None
    labels: list[str] | None = None
    encoding: str = "utf-8"
    encoding_fallback: str | None = "latin-1"
    max_chars: int = Field(1_000_000, ge=1)
    demo: DemoCorpusConfig = Field(default_factory=DemoCorpusConfig)

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.format != "demo" and not self.path:
            raise ValueError(f"data.path is required when data.format is {self.format!r}")
        return self


class SplitConfig(_Strict):
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitConfig:
        if self.validation + self.test >= 0.9:
            raise ValueError("validation + test must leave at least 10% for training")
        return self


class VocabConfig(_Strict):
    min_count: int = Field(2, ge=1)
    max_size: int = Field(50_000, ge=10)


class LimitsConfig(_Strict):
    """Truncation limits. ``None`` means: the given percentile of the training split."""

    max_sentences: int | None = Field(None, ge=1)
    max_words: int | None = Field(None, ge=1)
    percentile: float = Field(95.0, gt=0.0, le=100.0)


class PunktConfig(_Strict):
    use_installed: bool = True
    extra_abbreviations: list[str] = Field(
        default_factory=lambda: ["dr", "mr", "mrs", "ms", "prof", "st", "u.s", "u.k", "e.g", "i.e", "vs", "etc", "inc", "jr", "sr"]
    )
    train_max_documents: int = Field(5000, ge=1)


class PreprocessConfig(_Strict):
    lowercase: bool = True
    unicode_normalization: Literal["NFC", "NFKC", "none"] = "NFKC"
    tokenizer: Literal["treebank", "toktok", "regexp"] = "treebank"
    punkt: PunktConfig = Field(default_factory=PunktConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    max_quarantine_fraction: float = Field(0.05, ge=0.0, le=1.0)
    workers: int = Field(0, ge=0, le=64, description="0 = one per CPU core")
    shard_documents: int = Field(10_000, ge=1, description="documents per output shard (<split>-NNNNN.npz)")


class AttentionConfig(_Strict):
    score: Literal["additive", "dot", "scaled_dot", "general", "location"] = "additive"
    heads: int = Field(1, ge=1, le=16)
    mode: Literal["soft", "hard", "local"] = "soft"
    hard_k: int = Field(1, ge=1)
    hard_training: Literal["straight_through", "gumbel"] = "straight_through"
    gumbel_temperature: float = Field(1.0, gt=0.0)
    local_window: int = Field(2, ge=0)
    context_dim: int = Field(100, ge=1)
    entropy_penalty: float = Field(0.0, ge=0.0, le=10.0,
                                   description="λ x normalised attention entropy added to the training loss")


class Word2VecConfig(_Strict):
    """Skip-gram word2vec on the training split before the HAN trains (``pipeline.word2vec``)."""

    epochs: int = Field(0, ge=0, le=100, description="passes over the training split; 0 = off (random embeddings)")
    window: int = Field(5, ge=1, le=20)
    negatives: int = Field(5, ge=1, le=50)
    subsample: float = Field(1e-3, gt=0.0, le=1.0)
    learning_rate: float = Field(0.025, gt=0.0, le=1.0)


class EmbeddingConfig(_Strict):
    dim: int = Field(200, ge=2, le=2048)
    pretrained_path: str | None = None
    word2vec: Word2VecConfig = Field(default_factory=Word2VecConfig)
    trainable: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> EmbeddingConfig:
        if self.pretrained_path and self.word2vec.epochs:
            raise ValueError("model.embedding: set either pretrained_path (vectors from a file) or word2vec.epochs > 0 "
                             "(vectors learned from the training split), not both")
        return self


class ModelConfig(_Strict):
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    word_encoder: Literal["gru", "lstm"] = "gru"
    sentence_encoder: Literal["gru", "lstm", "transformer"] = "gru"
    word_units: int = Field(50, ge=1, le=2048)
    word_buckets: int = Field(
        1, ge=1, le=32,
        description="the word encoder runs on each batch's sentences in up to this many groups of similar length, "
        "each padded only to its own longest sentence (less compute on padding; same outputs); 1 = one group. "
        "Pays on real corpora with runtime.intra_op_threads=1 (configs/bbc.yaml, imdb.yaml: 8); each group costs "
        "graph-tracing time once per process, which dominates on toy data",
    )
    train_word_buckets: int | None = Field(
        None, ge=1, le=32,
        description="length groups while training; null = word_buckets. The saved model (evaluate, explain, serving) "
        "keeps word_buckets: the weights are the same, only the graph differs. Fewer groups trace a smaller training "
        "graph with fewer loops alive at once: a lower peak RSS for somewhat slower training (README: Speed on a CPU, Memory)",
    )
    word_bucket_sentences: int = Field(
        64, ge=1, le=65_536, description="fewest sentences worth a group of their own: a batch of n sentences uses "
        "min(word_buckets, n // this) groups (small batches, e.g. one document to explain, stay one group)",
    )
    sentence_units: int = Field(50, ge=1, le=2048)
    transformer_heads: int = Field(2, ge=1, le=32)
    word_attention: AttentionConfig = Field(default_factory=AttentionConfig)
    sentence_attention: AttentionConfig = Field(default_factory=AttentionConfig)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    embedding_dropout: Literal["element", "word_type"] = Field(
        "element",
        description="how `dropout` masks the word vectors in training. element: every feature of every word occurrence "
        "on its own (Keras' Dropout). word_type: one mask per distinct word in a group of sentences, shared by all its "
        "occurrences there; each distinct word is then embedded and multiplied by the word BiGRU's input kernels once "
        "per group in training as at inference (README: Speed on a CPU)",
    )
    multilabel: bool = False


class EarlyStoppingConfig(_Strict):
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(3, ge=0, description="epochs without improvement before stopping; 0 = never stop early")
    min_delta: float = Field(0.0, ge=0.0)


class DistributeConfig(_Strict):
    """Data-parallel training with ``tf.distribute`` (README "Training on several machines")."""

    strategy: Literal["none", "mirrored", "multi_worker"] = Field(
        "none",
        description="none: one device; mirrored: every local GPU (MirroredStrategy); "
        "multi_worker: every worker named in the TF_CONFIG environment variable (MultiWorkerMirroredStrategy)",
    )
    scale_learning_rate: bool = Field(
        True, description="multiply train.learning_rate by the number of replicas (the global batch grows with them)"
    )
    cpu_replicas: int = Field(
        0, ge=0, le=64,
        description="mirrored: split the CPU into this many logical devices, one replica each (try the strategy without GPUs); 0 = off",
    )


class TrainConfig(_Strict):
    """How the train stage fits the model (``pipeline.stages.train``)."""

    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=65_536, description="documents per replica per step (global batch = this x replicas)")
    optimizer: Literal["adam", "lazy_adam", "sgd"] = Field(
        "adam",
        description="lazy_adam: Adam that updates only the embedding rows each batch used (pipeline/optimizers.py); "
        "much cheaper per step with a large vocabulary",
    )
    learning_rate: float = Field(2e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only (the HAN paper: SGD, momentum 0.9)")
    schedule: Literal["constant", "cosine", "exponential"] = "constant"
    decay_rate: float = Field(0.5, gt=0.0, le=1.0, description="exponential: factor per epoch")
    clipnorm: float | None = Field(5.0, gt=0.0, description="global gradient-norm clipping; null = none")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    class_weights: Literal["none", "balanced"] = "none"
    bucket_batches: int = Field(
        20, ge=1, description="documents of this many batches are sorted by length together, then batched"
    )
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="stop each epoch after this many batches (huge corpora: an epoch of N steps); null = the whole split"
    )
    shuffle_buffer: int = Field(
        10_000, ge=1, description="documents shuffled together while streaming the training shards (memory grows with it)"
    )
    resume: bool = Field(True, description="continue an interrupted run from its last finished epoch")
    deterministic: bool = Field(True, description="TensorFlow op determinism (same metrics on CPU from the seed)")
    distribute: DistributeConfig = Field(default_factory=DistributeConfig)


class GateConfig(_Strict):
    """What a model must reach before it may replace the champion."""

    min_accuracy: float = Field(0.6, ge=0.0, le=1.0)
    min_macro_f1: float = Field(0.0, ge=0.0, le=1.0)
    metric: Literal["accuracy", "macro_f1", "micro_f1"] = "macro_f1"
    champion_margin: float = Field(
        0.0, ge=0.0, le=1.0, description="δ: the new model must beat the registered champion's metric by this much"
    )
    must_beat_baseline: bool = False


class BaselineConfig(_Strict):
    enabled: bool = True
    max_features: int = Field(50_000, ge=10)
    ngram_max: int = Field(2, ge=1, le=3)
    C: float = Field(10.0, gt=0.0)


class EvaluateConfig(_Strict):
    batch_size: int = Field(64, ge=1)
    calibration_bins: int = Field(15, ge=2, le=1000)
    gate: GateConfig = Field(default_factory=GateConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)


class ExplainConfig(_Strict):
    """What the explain stage writes and measures (``pipeline.stages.explain``)."""

    report_documents: int = Field(400, ge=1, description="documents in the HTML report (misclassified first)")
    faithfulness_documents: int = Field(1000, ge=1, description="test documents used for the faithfulness metrics")
    ks: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    random_draws: int = Field(5, ge=1, le=100)
    top_n: int = Field(15, ge=1, le=1000, description="words and sentences listed per class")
    batch_size: int = Field(64, ge=1)


class TrackingConfig(_Strict):
    experiment: str | None = None
    registered_model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the registry entry of this pipeline's models (its own champion and challenger); null = han-<name>, "
        "so each dataset has its own",
    )


class RetrainConfig(_Strict):
    """The scheduled retraining DAG (``dags/retrain.py``)."""

    dag_id: str = Field("han_retrain", pattern=r"^[A-Za-z0-9_.-]+$")
    schedule: str | None = Field("@weekly", description="cron expression or preset (@daily, @weekly); null: manual only")
    start_date: str = Field("2026-01-01", pattern=r"^\d{4}-\d{2}-\d{2}$", description="first logical date (UTC)")
    retries: int = Field(2, ge=0, le=20)
    retry_delay_seconds: float = Field(300.0, gt=0)
    max_retry_delay_seconds: float = Field(3600.0, gt=0, description="cap of the exponential backoff")
    explain: bool = Field(True, description="write the attention report of the new model after promotion")
    train_queue: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$",
        description="executor queue of the train task (CeleryExecutor: the workers on the training machine); null = default",
    )


class ServeConfig(_Strict):
    """``make serve``: the REST endpoint of the champion (MLflow's scoring app under uvicorn)."""

    host: str = Field("127.0.0.1", description="loopback only unless you mean to expose it")
    port: int = Field(5001, ge=1, le=65535)
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$")
    workers: int = Field(1, ge=1, le=64)
    timeout_seconds: int = Field(60, ge=1, description="a request running longer gets 504")
    max_texts: int = Field(1000, ge=1, description="texts per request; more gets 400")
    max_characters: int = Field(10_000_000, ge=1, description="characters of text per request; more gets 400")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1,
                                   description="request body size; more gets 413 before the body is read")


class RuntimeConfig(_Strict):
    """How TensorFlow uses the CPU and how the process allocates (``pipeline.runtime.apply_runtime``; set before TensorFlow starts)."""

    intra_op_threads: int | None = Field(
        None, ge=1, le=1024,
        description="threads one TensorFlow op may use; null = TensorFlow's default (every core). 1 (configs/bbc.yaml, "
        "imdb.yaml): the HAN's ops are small; one thread each lets model.word_buckets' groups run side by side",
    )
    inter_op_threads: int | None = Field(
        None, ge=1, le=1024, description="TensorFlow ops run side by side; null = TensorFlow's default (one per core)"
    )
    malloc_arenas: int | None = Field(
        None, ge=1, le=1024,
        description="glibc malloc arenas (M_ARENA_MAX) for the whole process; null = glibc's default (8 per core). 2 "
        "(configs/bbc.yaml, imdb.yaml): less freed memory kept in arenas of TensorFlow's threads' own at the same "
        "speed; 1 was slower (README: Speed on a CPU, Memory); ignored off glibc",
    )
    malloc_trim_steps: int | None = Field(
        None, ge=1, le=1_000_000,
        description="hand the memory freed in the process back to the system every N training steps (glibc "
        "malloc_trim); null = never. 25 (configs/bbc.yaml, imdb.yaml): ~0.1 GB less resident on IMDB for 15 ms "
        "per call (README: Memory); ignored off glibc",
    )


class PipelineConfig(_Strict):
    """The whole configuration of one pipeline (one dataset, one model)."""

    name: str = Field("demo", description="the folder under the artifacts directory that holds this pipeline's outputs")
    seed: int = Field(42, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        # Every output path is <artifacts>/<name>/<stage>/<fixed file name>: the name is the only
        # part a config sets, so it must not lead out of the artifacts directory.
        if not _NAME.fullmatch(value) or ".." in value:
            raise ValueError(f"{value!r} is not a folder name inside the artifacts directory: use letters, digits "
                             "and _ . - (starting with a letter or digit, no '..', no '/'), e.g. name: bbc")
        return value

    @model_validator(mode="after")
    def _own_registered_model(self) -> PipelineConfig:
        # One registered model per dataset unless a config names one: a champion trained on other
        # labels must never be compared with, or served for, this pipeline's.
        if self.tracking.registered_model is None:
            self.tracking.registered_model = f"han-{self.name}"
        return self

    # ----------------------------------------------------------------- derived values
    def resolved_data_path(self) -> Path | None:
        """``data.path`` with ``${VAR}`` expanded (``HAN_DATA_DIR`` defaults to ``data/``)."""
        if self.data.path is None:
            return None
        return Path(expand_env(self.data.path)).expanduser()

    def artifacts_dir(self) -> Path:
        """``$HAN_ARTIFACTS_DIR/<name>`` (default ``<project>/artifacts/<name>``), never outside it."""
        root = artifacts_root()
        folder = root / self.name
        if folder.is_symlink() and not folder.resolve().is_relative_to(root):
            raise ConfigError(f"{folder} is a link to {folder.resolve()}, outside the artifacts directory {root}: "
                              "outputs stay inside it; remove the link or set HAN_ARTIFACTS_DIR to where they should go")
        return folder

    def stage_dir(self, stage: str) -> Path:
        return self.artifacts_dir() / stage

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def section_hash(self, *sections: str) -> str:
        """A stable sha256 of the named top-level sections (all when none given)."""
        data = self.to_dict()
        picked = {k: data[k] for k in sections} if sections else data
        blob = json.dumps(picked, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    # Where ``load_config`` read this config from, for messages that say what to run (not part of the config).
    _source: Path | None = PrivateAttr(None)
    _overrides: tuple[str, ...] = PrivateAttr(())

    def command(self, stage: str, *flags: str) -> str:
        """The command that runs ``stage`` on this config, for messages, e.g. ``make train CONFIG=configs/bbc.yaml``.

        ``CONFIG=`` is left out for configs/default.yaml, ``SET=`` when no override was given. With
        ``flags`` (``--force``), which make targets do not take, ``python -m pipeline <stage> <flags> --config ...``.
        """
        config = None
        if self._source is not None and self._source != DEFAULT_CONFIG_PATH:
            shown = self._source.relative_to(PROJECT_ROOT) if self._source.is_relative_to(PROJECT_ROOT) else self._source
            config = str(shown)
        if flags:
            words = ["python", "-m", "pipeline", stage, *flags, *(["--config", config] if config else [])]
            words += [word for override in self._overrides for word in ("--set", override)]
            return shlex.join(words)
        words = [f"make {stage}"]
        if config:
            words.append(f"CONFIG={shlex.quote(config)}")
        if self._overrides:
            words.append(f"SET={shlex.quote(' '.join(self._overrides))}")
        return " ".join(words)


def data_root() -> Path:
    return Path(os.environ.get("HAN_DATA_DIR") or PROJECT_ROOT / "data")


def artifacts_root() -> Path:
    return Path(os.environ.get("HAN_ARTIFACTS_DIR") or PROJECT_ROOT / "artifacts").resolve()


def expand_env(value: str) -> str:
    """Expand ``${VAR}``; ``HAN_DATA_DIR`` falls back to the project's ``data/``."""

    def repl(match: re.Match[str]) -> str:
        var = match.group(1)
        if var == "HAN_DATA_DIR":
            return str(data_root())
        if var not in os.environ:
            raise ConfigError(f"environment variable ${{{var}}} is used in the config but not set")
        return os.environ[var]

    return _ENV_PATTERN.sub(repl, value)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` -> (``key.path``, YAML-typed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"--set {text!r}: expected key.path=value, e.g. --set preprocess.vocab.min_count=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from None
    return key, value


def _known_keys(location: tuple[int | str, ...]) -> list[str]:
    """The keys allowed beside the last one of ``location`` (a section's field names); none inside lists."""
    section: type[BaseModel] = PipelineConfig
    for part in location[:-1]:
        field = section.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        section = field.annotation
    return list(section.model_fields)


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(item["loc"][-1]), _known_keys(item["loc"]), n=1)
            if close:
                lines.append(f"  {key}: unknown key; did you mean {'.'.join([*map(str, item['loc'][:-1]), close[0]])}?")
            else:
                lines.append(f"  {key}: unknown key (check the spelling; see configs/default.yaml for every key)")
            continue
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        message = item["msg"].removeprefix("Value error, ")  # our own validators' messages stand alone
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load a YAML config (defaults when ``path`` is None) and apply ``key.path=value`` overrides."""
    origin = "built-in defaults"
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (configs live in {PROJECT_ROOT / 'configs'})")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    if overrides:
        origin += " with --set " + " ".join(overrides)
    try:
        config = PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None
    config._source = None if path is None else path.resolve()
    config._overrides = tuple(overrides)
    return config
