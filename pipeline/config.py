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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

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


SplitName = Literal["train", "validation", "test"]
# What a split field's value or a split folder's name means (compared lower-case): data.split_values' default.
DEFAULT_SPLIT_VALUES: dict[str, list[str]] = {
    "train": ["train", "training"],
    "validation": ["validation", "valid", "val", "dev"],
    "test": ["test", "testing"],
}


class DataConfig(_Strict):
    """Where the documents come from and how to read them."""

    format: Literal["demo", "folder", "csv", "jsonl", "parquet"] = "demo"
    path: str | dict[SplitName, str] | None = Field(
        None, description="a file, folder or archive; or one per split ({train: ..., test: ...}; a missing validation "
        "or test split is carved from train by preprocess.split)",
    )
    file_pattern: str | list[str] | None = Field(
        None, description="folder format: which file names are documents (globs, any case, e.g. '*.md'); null: "
        "*.txt and names without an extension. README/LICENSE-like names never are",
    )
    text_field: str = "text"
    label_field: str = "label"
    id_field: str | None = "id"
    split_field: str | None = None
    split_values: dict[SplitName, list[str]] = Field(
        default_factory=lambda: {split: list(values) for split, values in DEFAULT_SPLIT_VALUES.items()},
        description="which values of split_field (and names of split folders) mean which split, any case; a split "
        "left out keeps its default values",
    )
    labels: list[str] | None = None
    multilabel: bool = Field(
        False, description="a document may have several labels (or one): the label field holds a list (a JSON/Parquet "
        "array, or text split at label_delimiter); the model gets one sigmoid output per label (model.multilabel)",
    )
    label_delimiter: str | None = Field(
        None, min_length=1, max_length=10, description="multilabel: the character(s) between labels in a text label "
        "field (a CSV column 'earn|acq' with '|'); null: a text value is one label",
    )
    encoding: str = "utf-8"
    encoding_fallback: str | None = "latin-1"
    max_chars: int = Field(
        1_000_000, ge=1, le=100_000_000, description="longer documents are quarantined (too_large); a file or archive "
        "member over 4 bytes per character is not even read",
    )
    max_archive_bytes: int = Field(
        4 * 1024**3, ge=1, le=1024**5, description="the most an archive may decompress to while it is read (all its "
        "members; a compressed tar's skipped ones too): past it the run stops, a decompression bomb",
    )
    demo: DemoCorpusConfig = Field(default_factory=DemoCorpusConfig)

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.format != "demo" and not self.path:
            raise ValueError(f"data.path is required when data.format is {self.format!r}")
        if isinstance(self.path, dict):
            if "train" not in self.path:
                raise ValueError("data.path: a path per split needs a train path ({train: ..., test: ...}); "
                                 "validation and test may be left out (carved from train by preprocess.split)")
            empty = [split for split, path in self.path.items() if not path]
            if empty:
                raise ValueError(f"data.path.{empty[0]} is empty; give a file, folder or archive, or leave the split out")
            if self.split_field is not None:
                raise ValueError(f"data.split_field ({self.split_field!r}) and a data.path per split both say which "
                                 "split a document is in: keep one")
        if self.label_delimiter is not None and not self.multilabel:
            raise ValueError(f"data.label_delimiter ({self.label_delimiter!r}) splits a label field into several labels: "
                             "set data.multilabel: true too, or remove it")
        if self.multilabel and self.format == "folder":
            raise ValueError("data.multilabel: a folder corpus has one label per document (its folder); give multi-label "
                             "data as jsonl/parquet with a list in data.label_field, or csv with data.label_delimiter")
        if self.file_pattern is not None and self.format != "folder":
            raise ValueError(f"data.file_pattern applies to data.format folder; {self.format} files are chosen by suffix")
        return self

    @field_validator("path", mode="before")
    @classmethod
    def _path_per_split(cls, value: Any) -> Any:
        # Checked here so that a wrong key gets one plain message, not one per member of the union.
        if isinstance(value, dict):
            for key, path in value.items():
                if key not in DEFAULT_SPLIT_VALUES:
                    raise ValueError(f"{key!r} is not a split: a path per split is {{train: ..., validation: ..., "
                                     "test: ...} (a dev set is validation)")
                if not isinstance(path, str):
                    raise ValueError(f"{key}: expected a path, got {type(path).__name__}")
        return value

    @field_validator("split_values")
    @classmethod
    def _split_values(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        table = {split: [v.strip().lower() for v in value.get(split, DEFAULT_SPLIT_VALUES[split])]
                 for split in DEFAULT_SPLIT_VALUES}
        seen: dict[str, str] = {}
        for split, values in table.items():
            for v in values:
                if not v:
                    raise ValueError(f"{split}: an empty value cannot name a split")
                if seen.setdefault(v, split) != split:
                    raise ValueError(f"{v!r} is listed for both {seen[v]} and {split}; a value means one split")
        return table

    def split_table(self) -> dict[str, str]:
        """Each split value (lower-case) -> the split it means, from ``split_values``."""
        return {value: split for split, values in self.split_values.items() for value in values}

    def data_paths(self) -> dict[str | None, str]:
        """``path`` as ``{None: path}``, or ``{split: path}`` in train, validation, test order; ``{}`` without one."""
        if isinstance(self.path, dict):
            return {split: self.path[split] for split in DEFAULT_SPLIT_VALUES if split in self.path}
        return {None: self.path} if self.path else {}


class SplitConfig(_Strict):
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitConfig:
        if self.validation + self.test >= 0.9:
            raise ValueError("validation + test must leave at least 10% for training")
        return self


class VocabConfig(_Strict):
    min_count: int = Field(2, ge=1, le=1_000_000)
    max_size: int = Field(50_000, ge=10, le=10_000_000)


class LimitsConfig(_Strict):
    """Truncation limits. ``None`` means: the given percentile of the training split."""

    max_sentences: int | None = Field(None, ge=1, le=10_000)
    max_words: int | None = Field(None, ge=1, le=10_000)
    percentile: float = Field(95.0, gt=0.0, le=100.0)


class PunktConfig(_Strict):
    use_installed: bool = True
    extra_abbreviations: list[str] = Field(
        default_factory=lambda: ["dr", "mr", "mrs", "ms", "prof", "st", "u.s", "u.k", "e.g", "i.e", "vs", "etc", "inc", "jr", "sr"]
    )
    train_max_documents: int = Field(5000, ge=1, le=1_000_000)


class PreprocessConfig(_Strict):
    drop_header: bool = Field(
        False, description="drop a document's leading header block (the lines before the first blank line, when "
        "each is a 'Name: value' field, as in mail and news posts) before sentence splitting",
    )
    drop_lines: list[str] = Field(
        default_factory=list, description="regular expressions: a line of a document in which any matches "
        "(re.search) is dropped before sentence splitting, in training and in serving alike",
    )
    lowercase: bool = True
    unicode_normalization: Literal["NFC", "NFKC", "none"] = "NFKC"
    tokenizer: Literal["treebank", "toktok", "regexp"] = "treebank"
    punkt: PunktConfig = Field(default_factory=PunktConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    max_quarantine_fraction: float = Field(0.05, ge=0.0, le=1.0)
    workers: int = Field(0, ge=0, le=64, description="0 = one per CPU core")
    shard_documents: int = Field(10_000, ge=1, le=1_000_000, description="documents per output shard (<split>-NNNNN.npz)")

    @field_validator("drop_lines")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"item {i} ({pattern!r}) is not a regular expression: {err}") from None
        return value


class AttentionConfig(_Strict):
    score: Literal["additive", "dot", "scaled_dot", "general", "location"] = "additive"
    heads: int = Field(1, ge=1, le=16)
    mode: Literal["soft", "hard", "local"] = "soft"
    hard_k: int = Field(1, ge=1, le=64, description="positions kept in mode hard; each is one more step of the graph")
    hard_training: Literal["straight_through", "gumbel"] = "straight_through"
    gumbel_temperature: float = Field(1.0, gt=0.0, le=100.0)
    local_window: int = Field(2, ge=0, le=1_000)
    context_dim: int = Field(100, ge=1, le=4096)
    entropy_penalty: float = Field(0.0, ge=0.0, le=10.0,
                                   description="λ x normalised attention entropy added to the training loss")


class Word2VecConfig(_Strict):
    """Skip-gram word2vec on the training split before the HAN trains (``pipeline.model.word2vec``)."""

    epochs: int = Field(0, ge=0, le=100, description="passes over the training split; 0 = off (random embeddings)")
    window: int = Field(5, ge=1, le=20)
    negatives: int = Field(5, ge=1, le=50)
    subsample: float = Field(1e-3, gt=0.0, le=1.0)
    learning_rate: float = Field(0.025, gt=0.0, le=1.0)
    text: Literal["train", "train_validation"] = Field(
        "train", description="the text the vectors are learned from: the training split, or the training and validation "
        "splits (their words, not their labels; the HAN paper learned its vectors on train + dev)")


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
    sentence_encoder: Literal["gru", "lstm", "transformer", "none"] = "gru"
    word_units: int = Field(50, ge=1, le=2048)
    word_buckets: Annotated[int, Field(ge=1, le=32)] | Literal["auto"] = Field(
        "auto",
        description="the word encoder runs on each batch's sentences in up to this many groups of similar length, "
        "each padded only to its own longest sentence (less compute on padding; same outputs); 1 = one group. "
        "Pays on real corpora with runtime.intra_op_threads=1; each group costs graph-tracing time once per process, "
        "which dominates on toy data. auto: chosen by the train stage from the training split (see resolved)",
    )
    train_word_buckets: Annotated[int, Field(ge=1, le=32)] | Literal["auto"] | None = Field(
        "auto",
        description="length groups while training; null = word_buckets; auto: from the training split's size. The "
        "saved model (evaluate, explain, serving) keeps word_buckets: the weights are the same, only the graph differs. "
        "Fewer groups trace a smaller training graph with fewer loops alive at once: a lower peak RSS for somewhat "
        "slower training (docs/speed-on-a-cpu.md)",
    )
    word_bucket_sentences: int = Field(
        64, ge=1, le=65_536, description="with word_bucket_cuts: count, fewest sentences worth a group of their own: a "
        "batch of n sentences uses min(word_buckets, n // this) groups (small batches, e.g. one document to explain, "
        "stay one group); padding cuts weigh each group's fixed cost against the padding it saves instead",
    )
    word_bucket_cuts: Literal["count", "padding"] = Field(
        "count", description="where the length groups are cut: count = equal numbers of sentences (word_bucket_sentences "
        "or more each); padding = where the padded cells, loop steps and groups cost least (dynamic programming over "
        "the batch's sentence lengths): 1.11x on IMDB with element dropout and Adam, even with imdb.yaml's word-type "
        "dropout and lazy Adam and on BBC, so not the default (docs/speed-on-a-cpu.md)",
    )
    sentence_units: int = Field(50, ge=1, le=2048)
    transformer_heads: int = Field(2, ge=1, le=32)
    word_attention: AttentionConfig = Field(default_factory=AttentionConfig)
    sentence_attention: AttentionConfig = Field(default_factory=AttentionConfig)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    embedding_dropout: Literal["element", "word_type", "auto"] = Field(
        "auto",
        description="how `dropout` masks the word vectors in training. element: every feature of every word occurrence "
        "on its own (Keras' Dropout). word_type: one mask per distinct word in a group of sentences, shared by all its "
        "occurrences there; each distinct word is then embedded and multiplied by the word BiGRU's input kernels once "
        "per group in training as at inference (docs/speed-on-a-cpu.md). auto: word_type on a corpus with length "
        "groups (see resolved), element on a small one",
    )
    multilabel: bool = Field(
        False, description="one sigmoid output per label, binary cross-entropy: set by data.multilabel (multi-label "
        "data); true here alone is refused")

    @field_validator("word_buckets", "train_word_buckets", mode="before")
    @classmethod
    def _groups(cls, value: Any, info: ValidationInfo) -> Any:
        # One plain message instead of one per member of the union.
        if value == "auto" or (value is None and info.field_name == "train_word_buckets"):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
            raise ValueError("expected a number of length groups from 1 to 32, or auto")
        return value

    def resolved(self, train_documents: int | None = None, words_filled: float | None = None) -> ModelConfig:
        """These settings with ``auto`` replaced by what suits a training split of ``train_documents``.

        ``word_buckets: auto`` is 1 below ``AUTO_GROUPS_MIN_DOCUMENTS`` training documents (each
        group's graph tracing costs more than a short training saves), or where sentences fill
        ``words_filled`` >= ``AUTO_GROUPS_MIN_PADDING`` of the words limit on average (little
        padding to save); else ``AUTO_GROUPS``. ``train_word_buckets: auto`` is 2 below
        ``AUTO_TRAIN_GROUPS_MIN_DOCUMENTS`` documents, else 4 (at most ``word_buckets``): the
        choices measured on BBC and IMDB (docs/speed-on-a-cpu.md). ``embedding_dropout: auto`` is
        ``word_type`` from ``AUTO_GROUPS_MIN_DOCUMENTS`` documents (faster steps), else ``element``
        (the demo corpus and the tests' small corpora keep Keras' dropout). Without
        ``train_documents`` (a model built outside the train stage) ``auto`` is the small-corpus choice.
        """
        groups = self.word_buckets
        if groups == "auto":
            small = train_documents is None or train_documents < AUTO_GROUPS_MIN_DOCUMENTS
            groups = 1 if small or (words_filled or 0.0) >= AUTO_GROUPS_MIN_PADDING else AUTO_GROUPS
        training = self.train_word_buckets
        if training == "auto":
            wanted = 2 if (train_documents or 0) < AUTO_TRAIN_GROUPS_MIN_DOCUMENTS else 4
            training = None if groups == 1 else min(groups, wanted)
        dropout = self.embedding_dropout
        if dropout == "auto":
            large = train_documents is not None and train_documents >= AUTO_GROUPS_MIN_DOCUMENTS
            dropout = "word_type" if large else "element"
        return self.model_copy(update={"word_buckets": groups, "train_word_buckets": training,
                                       "embedding_dropout": dropout})


# What model.word_buckets / train_word_buckets: auto resolve to (ModelConfig.resolved; docs/speed-on-a-cpu.md).
AUTO_GROUPS = 8
AUTO_GROUPS_MIN_DOCUMENTS = 1_000
AUTO_GROUPS_MIN_PADDING = 0.8
AUTO_TRAIN_GROUPS_MIN_DOCUMENTS = 5_000
AUTO_LAZY_ADAM_MIN_VOCABULARY = 20_000  # train.optimizer: auto
# train.thresholds: per_label: a label's own threshold needs this many validation documents with it; fewer
# fit noise (one document decides it), so such labels take the global threshold.
THRESHOLD_MIN_POSITIVES = 5


class EarlyStoppingConfig(_Strict):
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(3, ge=0, le=10_000, description="epochs without improvement before stopping; 0 = never stop early")
    min_delta: float = Field(0.0, ge=0.0, le=10.0)


class DistributeConfig(_Strict):
    """Data-parallel training with ``tf.distribute`` (docs/distributed-training.md)."""

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
    optimizer: Literal["adam", "lazy_adam", "sgd", "auto"] = Field(
        "auto",
        description="lazy_adam: Adam that updates only the embedding rows each batch used (pipeline/model/optimizers.py); "
        "much cheaper per step with a large vocabulary. auto: lazy_adam from AUTO_LAZY_ADAM_MIN_VOCABULARY words, adam "
        "below",
    )
    learning_rate: float = Field(2e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only (the HAN paper: SGD, momentum 0.9)")
    schedule: Literal["constant", "cosine", "exponential"] = "constant"
    decay_rate: float = Field(0.5, gt=0.0, le=1.0, description="exponential: factor per epoch")
    clipnorm: float | None = Field(5.0, gt=0.0, le=1e6, description="global gradient-norm clipping; null = none")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0, description="keep an exponential moving average of the weights (this decay per batch); "
        "validation, the best epoch and the saved model use the average. null: the weights as trained")
    class_weights: Literal["none", "balanced"] = "none"
    thresholds: Literal["per_label", "global"] = Field(
        "global", description="multi-label only: the probability above which a label is predicted, chosen after "
        "training to maximise F1 on the validation split. global: one for all labels (the best micro-F1); per_label: "
        "one per label, for labels with at least THRESHOLD_MIN_POSITIVES validation documents (the others take the "
        "global one). global is the default: on Reuters per_label's fitted thresholds lost test micro-F1 on every seed",
    )
    bucket_batches: int = Field(
        20, ge=1, le=10_000, description="documents of this many batches are sorted by length together, then batched"
    )
    max_steps_per_epoch: int | None = Field(
        None, ge=1, le=1_000_000_000, description="stop each epoch after this many batches (huge corpora: an epoch of N steps); null = the whole split"
    )
    shuffle_buffer: int = Field(
        10_000, ge=1, le=10_000_000, description="documents shuffled together while streaming the training shards (memory grows with it)"
    )
    resume: bool = Field(True, description="continue an interrupted run from its last finished epoch")
    deterministic: bool = Field(True, description="TensorFlow op determinism (same metrics on CPU from the seed)")
    distribute: DistributeConfig = Field(default_factory=DistributeConfig)

    def resolved(self, vocabulary: int | None = None) -> TrainConfig:
        """``optimizer: auto`` replaced: ``lazy_adam`` from ``AUTO_LAZY_ADAM_MIN_VOCABULARY`` vocabulary
        entries (Adam's update of every embedding row each step is then most of a step), else ``adam``."""
        if self.optimizer != "auto":
            return self
        lazy = vocabulary is not None and vocabulary >= AUTO_LAZY_ADAM_MIN_VOCABULARY
        return self.model_copy(update={"optimizer": "lazy_adam" if lazy else "adam"})


class GateConfig(_Strict):
    """What a model must reach before it may replace the champion."""

    min_accuracy: float = Field(0.6, ge=0.0, le=1.0)
    min_macro_f1: float = Field(0.0, ge=0.0, le=1.0)
    metric: Literal["auto", "accuracy", "macro_f1", "micro_f1"] = Field(
        "auto", description="the metric compared with the champion and the baseline; auto: micro_f1 with "
        "data.multilabel (every document-label decision pooled), else macro_f1")
    champion_margin: float = Field(
        0.0, ge=0.0, le=1.0, description="δ: the new model must beat the registered champion's metric by this much"
    )
    must_beat_baseline: bool = False


class BaselineConfig(_Strict):
    """TF-IDF + logistic regression on the same split (``pipeline.evaluation.metrics.tfidf_baseline``): the bar a HAN has to clear."""

    enabled: bool = True
    input: Literal["full_text", "tokens"] = Field(
        "full_text", description="full_text: the whole documents, as a user would run TF-IDF (not truncated, no "
        "out-of-vocabulary token, scikit-learn's own lowercasing and word pattern); tokens: exactly the HAN's "
        "encoded tokens (its vocabulary and truncation)")
    fit_on: Literal["train", "train_validation"] = Field(
        "train", description="the documents it learns from: the training split, or training and validation together")
    max_features: int | None = Field(None, ge=10, le=100_000_000, description="keep the most frequent n-grams; null: no cap")
    min_df: int = Field(2, ge=1, le=1_000_000, description="an n-gram must be in at least this many training documents")
    sublinear_tf: bool = Field(True, description="1 + log(term frequency) instead of the raw count")
    ngram_max: int = Field(2, ge=1, le=3)
    C: float = Field(10.0, gt=0.0, le=1e6)


class EvaluateConfig(_Strict):
    batch_size: int = Field(64, ge=1, le=65_536)
    calibration_bins: int = Field(15, ge=2, le=1000)
    gate: GateConfig = Field(default_factory=GateConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)


class ExplainConfig(_Strict):
    """What the explain stage writes and measures (``pipeline.stages.explain``)."""

    report_documents: int = Field(400, ge=1, le=100_000, description="documents in the HTML report (misclassified first)")
    faithfulness_documents: int = Field(1000, ge=1, le=10_000_000, description="test documents used for the faithfulness metrics")
    ks: list[Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=lambda: [1, 2, 3], min_length=1, max_length=20)
    random_draws: int = Field(5, ge=1, le=100)
    top_n: int = Field(15, ge=1, le=1000, description="words and sentences listed per class")
    batch_size: int = Field(64, ge=1, le=65_536)


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
    retry_delay_seconds: float = Field(300.0, gt=0, le=86_400)
    max_retry_delay_seconds: float = Field(3600.0, gt=0, le=7 * 86_400, description="cap of the exponential backoff")
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
    timeout_seconds: int = Field(60, ge=1, le=86_400, description="a request running longer gets 504")
    max_texts: int = Field(1000, ge=1, le=1_000_000, description="texts per request; more gets 400")
    max_characters: int = Field(10_000_000, ge=1, le=1_000_000_000, description="characters of text per request; more gets 400")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1, le=4 * 1024**3,
                                   description="request body size; more gets 413 before the body is read")


class RuntimeConfig(_Strict):
    """How TensorFlow uses the CPU and how the process allocates (``pipeline.runtime.apply_runtime``; set before TensorFlow starts)."""

    intra_op_threads: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] | None = Field(
        "auto",
        description="threads one TensorFlow op may use; null = TensorFlow's default (every core). 1: the HAN's ops "
        "are small; one thread each lets model.word_buckets' groups run side by side. auto: 1 where the model has "
        "length groups, TensorFlow's default where it has one (no gain measured there)",
    )
    inter_op_threads: int | None = Field(
        None, ge=1, le=1024, description="TensorFlow ops run side by side; null = TensorFlow's default (one per core)"
    )
    malloc_arenas: int | None = Field(
        2, ge=1, le=1024,
        description="glibc malloc arenas (M_ARENA_MAX) for the whole process; null = glibc's default (8 per core). 2: "
        "less freed memory kept in arenas of TensorFlow's threads' own at the same speed; 1 was slower "
        "(docs/speed-on-a-cpu.md); ignored off glibc",
    )
    malloc_trim_steps: int | None = Field(
        25, ge=1, le=1_000_000,
        description="hand the memory freed in the process back to the system every N training steps (glibc "
        "malloc_trim); null = never. 25: ~0.1 GB less resident on IMDB for 15 ms per call (docs/benchmarks.md: Memory); "
        "ignored off glibc",
    )

    @field_validator("intra_op_threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        # One plain message instead of one per member of the union.
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
            raise ValueError("expected a number of threads from 1 to 1024, auto or null")
        return value

    def resolved(self, length_groups: int | None = None) -> RuntimeConfig:
        """``intra_op_threads: auto`` replaced: 1 when the model runs ``length_groups`` > 1, else null."""
        if self.intra_op_threads != "auto":
            return self
        return self.model_copy(update={"intra_op_threads": 1 if (length_groups or 1) > 1 else None})


class PipelineConfig(_Strict):
    """The whole configuration of one pipeline (one dataset, one model)."""

    name: str = Field("demo", description="the folder under the artifacts directory that holds this pipeline's outputs")
    seed: int = Field(42, ge=0, le=2**32 - 1)
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

    @model_validator(mode="after")
    def _one_label_kind(self) -> PipelineConfig:
        # The data decides whether documents carry label sets; the model and the gate follow it.
        if self.model.multilabel and not self.data.multilabel:
            raise ValueError("model.multilabel: true needs multi-label data: set data.multilabel: true (the label field "
                             "then holds a list of labels; see data.label_delimiter for CSV), which sets it")
        self.model.multilabel = self.data.multilabel
        if self.evaluate.gate.metric == "auto":
            self.evaluate.gate.metric = "micro_f1" if self.data.multilabel else "macro_f1"
        if self.data.multilabel:
            if self.train.class_weights == "balanced":
                raise ValueError("train.class_weights: balanced weighs each document by its one class; with "
                                 "data.multilabel documents have several: use none")
        return self

    @model_validator(mode="after")
    def _positions_within_the_limits(self) -> PipelineConfig:
        # Settings that count a document's words or sentences must fit what truncation leaves of it.
        limits = self.preprocess.limits
        problems = []
        for level, key, limit in (("word", "max_words", limits.max_words), ("sentence", "max_sentences", limits.max_sentences)):
            attention = getattr(self.model, f"{level}_attention")
            if limit is None:
                continue
            if attention.mode == "hard" and attention.hard_k > limit:
                problems.append(f"model.{level}_attention.hard_k ({attention.hard_k}) is more than preprocess.limits.{key} "
                                f"({limit}): hard attention would keep every {level}; lower hard_k or raise the limit")
            if attention.mode == "local" and attention.local_window >= limit:
                problems.append(f"model.{level}_attention.local_window ({attention.local_window}) is not below "
                                f"preprocess.limits.{key} ({limit}): the window would hold every {level}; lower it")
        if limits.max_sentences is not None and max(self.explain.ks) >= limits.max_sentences:
            problems.append(f"explain.ks ({self.explain.ks}) has a k of at least preprocess.limits.max_sentences "
                            f"({limits.max_sentences}): no document would keep a sentence after removing k; lower it")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # ----------------------------------------------------------------- derived values
    def resolved(self, stats: dict[str, Any] | None = None) -> PipelineConfig:
        """This config with every ``auto`` replaced by what suits the corpus (docs/speed-on-a-cpu.md).

        ``stats``: the preprocess stage's ``stats.json``; by default read from this pipeline's
        preprocess folder, and without one (not preprocessed yet) ``auto`` is the small-corpus choice.
        """
        if stats is None:
            path = self.stage_dir("preprocess") / "stats.json"
            try:
                stats = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stats = {}
        documents = words_filled = vocabulary = None
        try:
            documents = int(stats["documents"]["train"])
            vocabulary = int(stats["vocabulary"]["size"])
            words_filled = stats["splits"]["train"]["words_per_sentence"]["mean"] / stats["limits"]["max_words"]
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            pass
        model = self.model.resolved(documents, words_filled)
        resolved = self.model_copy(update={"model": model, "train": self.train.resolved(vocabulary),
                                           "runtime": self.runtime.resolved(model.word_buckets)})
        resolved._source, resolved._overrides = self._source, self._overrides
        return resolved

    def resolved_data_path(self) -> Path | None:
        """``data.path`` with ``${VAR}`` expanded (``HAN_DATA_DIR`` defaults to ``data/``); the train path
        where there is one per split (``resolved_data_paths`` gives them all)."""
        paths = self.resolved_data_paths()
        return paths.get(None, paths.get("train"))

    def resolved_data_paths(self) -> dict[str | None, Path]:
        """Every ``data.path``, expanded: ``{None: path}``, or ``{split: path}`` where there is one per split."""
        return {split: Path(expand_env(path)).expanduser() for split, path in self.data.data_paths().items()}

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
    """Expand ``${VAR}``; ``HAN_DATA_DIR`` falls back to the project's ``data/``, ``HAN_ARTIFACTS_DIR`` to its
    ``artifacts/`` (where recipes such as ``make reuters`` write the data they make)."""

    def repl(match: re.Match[str]) -> str:
        var = match.group(1)
        if var == "HAN_DATA_DIR":
            return str(data_root())
        if var == "HAN_ARTIFACTS_DIR":
            return str(artifacts_root())
        if var not in os.environ:
            raise ConfigError(f"environment variable ${{{var}}} is used in the config but not set")
        return os.environ[var]

    return _ENV_PATTERN.sub(repl, value)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or null in the file (data.path: null, then --set data.path.train=...)
            node[part] = {}
        child = node[part]
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
