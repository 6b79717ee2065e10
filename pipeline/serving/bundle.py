"""The raw-text model: text in; label, probabilities and attention weights out.

A *bundle* is a directory with everything that turns raw text into the model's input exactly as
preprocessing did (``text_processor.json``: normalisation, the trained Punkt splitter and the
tokenizer; ``vocab.json``; ``limits.json``: the truncation limits; ``labels.json``) plus the
model (``model.keras``). ``RawTextClassifier`` reads a bundle; ``HANTextModel`` wraps it as an
``mlflow.pyfunc`` model, logged by ``log_raw_text_model`` with the bundle as its artifacts and the
``pipeline`` package as its code, so ``mlflow.pyfunc.load_model`` works in any process that has
the pinned requirements, with or without this project on the path.

Each answer is a dict (one DataFrame row for the pyfunc model) with ``OUTPUT_COLUMNS``:

- ``label``: the most probable class (None when the text could not be read); a multi-label model's
  (a bundle with ``thresholds.json``) is the list of labels predicted: each whose probability reaches
  its threshold, or the most probable one when none does;
- ``probabilities``: ``{label: probability}`` over every class;
- ``sentences``: the sentence strings the model read, after truncation to ``max_sentences``;
- ``sentence_weights``: one attention weight per sentence, summing to 1;
- ``words``: per sentence the tokens the model read, after truncation to ``max_words``;
- ``word_weights``: one attention weight per token, aligned with ``words``;
- ``truncated``: True when sentences or words were cut to the limits (or the text was read only as
  far as ``READ_CHARACTERS_PER_WORD`` allows);
- ``error``: None, or why this one text could not be classified (the other rows still are).
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.artifacts import read_json, write_json
from pipeline.config import PROJECT_ROOT
from pipeline.serving import limits

BUNDLE_FILES = ("model.keras", "text_processor.json", "vocab.json", "labels.json", "limits.json")
OUTPUT_COLUMNS = ("label", "probabilities", "sentences", "sentence_weights", "words", "word_weights", "truncated", "error")
# What the served model needs at run time (the pins come from requirements.txt).
RUNTIME_PACKAGES = ("tensorflow", "keras", "mlflow", "nltk", "numpy", "pandas", "pydantic", "PyYAML")
DEFAULT_BATCH_SIZE = 32
# Characters read from one text per word the model reads (max_sentences x max_words): splitting and
# tokenizing cost grows with the characters, so this bounds what one text costs, whatever its length.
READ_CHARACTERS_PER_WORD = 64
# When the request being answered must be done (time.monotonic()); set by the REST app
# (pipeline/serving/rest.py) and seen by the thread that runs the model. None: no deadline.
REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("han_request_deadline", default=None)


class DeadlineExceeded(TimeoutError):
    """The request's time (``serve.timeout_seconds``) ran out; the work on it stops here."""


def check_deadline() -> None:
    """Raise ``DeadlineExceeded`` when the request being answered is out of time."""
    deadline = REQUEST_DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("the request ran out of time (serve.timeout_seconds); send fewer or shorter texts "
                               "per request")

# The package logged as the model's code (``code_paths``), and the models-from-code entry point.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODEL_CODE = PACKAGE_DIR / "serving" / "pyfunc_model.py"


def write_bundle(bundle_dir: Path, model_path: Path, preprocess_dir: Path, thresholds: list[float] | None = None) -> Path:
    """Copy the model and the preprocessing state it was trained with into ``bundle_dir``.

    ``limits.json`` gets the truncation limits (``max_sentences``, ``max_words``) from the
    preprocess ``stats.json``, so raw text is cut exactly as the training data was. ``thresholds``
    (a multi-label model's, one per label) go to ``thresholds.json``: the served model then returns label sets.
    """
    bundle_dir = Path(bundle_dir)
    preprocess_dir = Path(preprocess_dir)
    missing = [name for name in ("text_processor.json", "vocab.json", "labels.json", "stats.json")
               if not (preprocess_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"preprocess outputs {preprocess_dir} lack {', '.join(missing)}; run preprocessing first")
    bundle_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_path, bundle_dir / "model.keras")
    for name in ("text_processor.json", "vocab.json", "labels.json"):
        shutil.copy2(preprocess_dir / name, bundle_dir / name)
    limits = read_json(preprocess_dir / "stats.json")["limits"]
    write_json(bundle_dir / "limits.json", {"max_sentences": int(limits["max_sentences"]),
                                            "max_words": int(limits["max_words"])})
    if thresholds is not None:
        write_json(bundle_dir / "thresholds.json", [float(t) for t in thresholds])
    return bundle_dir


def _before_word(text: str, end: int) -> str:
    """``text[:end]``, shortened to the last space, tab or newline when ``end`` falls inside a word."""
    if text[end - 1].isspace() or text[end].isspace():
        return text[:end]
    start = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end), text.rfind("\t", 0, end))
    return text[:start] if start > 0 else text[:end]


def _failed(error: str) -> dict[str, Any]:
    return {"label": None, "probabilities": {}, "sentences": [], "sentence_weights": [], "words": [],
            "word_weights": [], "truncated": False, "error": error}


class RawTextClassifier:
    """Classify raw texts with a bundle, the same way the evaluate stage scores encoded ones.

    Texts are normalised, sentence-split, tokenized, truncated (``doc[:max_sentences]``, each
    sentence ``tokens[:max_words]``) and encoded exactly as ``pipeline.stages.preprocess`` did;
    documents are batched by length and each batch is padded only to its own maxima
    (``pipeline.data.batching.pad_batch``) and run through the model's inference graph.
    """

    def __init__(self, model, processor, vocab, labels: list[str], max_sentences: int, max_words: int,
                 thresholds: list[float] | None = None) -> None:
        from pipeline.model.han import inference_function

        if max_sentences < 1 or max_words < 1:
            raise ValueError(f"limits must be >= 1, got max_sentences={max_sentences}, max_words={max_words}")
        self.model = model
        # model(token_ids, training=False) as one tf.function with free dimensions: no retrace per
        # batch shape (model.predict would retrace), several times faster than eager calls.
        self.infer = inference_function(model)
        self.processor = processor
        self.vocab = vocab
        self.labels = list(labels)
        if thresholds is not None and len(thresholds) != len(self.labels):
            raise ValueError(f"{len(thresholds)} thresholds for {len(self.labels)} labels")
        # A multi-label model's decision thresholds (one per label); None: one label, the most probable.
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        self.max_sentences = int(max_sentences)
        self.max_words = int(max_words)

    @classmethod
    def from_directory(cls, bundle_dir: str | Path) -> RawTextClassifier:
        """Load a bundle written by ``write_bundle`` (Keras model loaded with ``safe_mode=True``)."""
        from pipeline.data.text import TextProcessor
        from pipeline.data.vocab import Vocabulary
        from pipeline.model.han import load_han

        bundle_dir = Path(bundle_dir)
        missing = [name for name in BUNDLE_FILES if not (bundle_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"model bundle {bundle_dir} lacks {', '.join(missing)}; train again to rebuild it")
        limits = read_json(bundle_dir / "limits.json")
        thresholds = read_json(bundle_dir / "thresholds.json") if (bundle_dir / "thresholds.json").is_file() else None
        return cls(load_han(bundle_dir / "model.keras"),
                   TextProcessor.load(bundle_dir / "text_processor.json"), Vocabulary.load(bundle_dir / "vocab.json"),
                   list(read_json(bundle_dir / "labels.json")), int(limits["max_sentences"]), int(limits["max_words"]),
                   thresholds=thresholds)

    @property
    def multilabel(self) -> bool:
        return self.thresholds is not None

    def decide(self, probabilities: np.ndarray) -> str | list[str]:
        """The answer's ``label`` for one row of probabilities: the most probable label, or a multi-label
        model's label set (``pipeline.evaluation.metrics.multilabel_decisions``, as the evaluate stage decides)."""
        if self.thresholds is None:
            return self.labels[int(np.argmax(probabilities))]
        from pipeline.evaluation.metrics import multilabel_decisions

        chosen = multilabel_decisions(np.asarray(probabilities)[None, :], self.thresholds)[0]
        return [label for label, on in zip(self.labels, chosen, strict=True) if on]

    # ------------------------------------------------------------------ encoding
    def read(self, text: Any) -> tuple[list[str], list[list[str]], bool, str | None]:
        """``(sentences, tokens, truncated, error)``: what the model will see, whether anything was
        cut, or (with empty containers) why the text cannot be read."""
        if text is None or (isinstance(text, float) and np.isnan(text)):
            return [], [], False, "no text (missing value)"
        if not isinstance(text, str):
            return [], [], False, f"text must be a string, got {type(text).__name__}"
        if not text.strip():
            return [], [], False, "empty text"
        sentences, tokens, cut = self._leading_sentences(text)
        # The same rule as preprocessing's no_tokens quarantine: some token must have a letter or digit.
        if not any(ch.isalnum() for sentence in tokens for token in sentence for ch in token):
            return [], [], False, "no words in the text (only punctuation or symbols)"
        kept = tokens[: self.max_sentences]
        truncated = cut or len(tokens) > self.max_sentences or any(len(t) > self.max_words for t in kept)
        return sentences[: self.max_sentences], [t[: self.max_words] for t in kept], truncated, None

    def _leading_sentences(self, text: str) -> tuple[list[str], list[list[str]], bool]:
        """``sentences_and_tokens`` of as much of ``text`` as the model reads, and whether the text
        was cut short of that.

        The model reads only the first ``max_sentences`` sentences, so a long text is split from a
        prefix that grows (x4) until it holds more than ``max_sentences`` sentences: those first
        ones, and the boundary after them, are then exactly what splitting the whole text gives,
        and a million-sentence text costs what a short one does. The prefix stops growing at
        ``READ_CHARACTERS_PER_WORD`` characters per word read (cut before a word it would split):
        text whose first sentences run longer than that (one endless "sentence", such as
        ``"a. a. a. ..."``, which the splitter reads as initials) is read only that far.
        """
        words = self.max_sentences * self.max_words
        budget, limit = words * 16, words * READ_CHARACTERS_PER_WORD
        while True:
            end = min(budget, limit)
            cut = end < len(text)
            prefix = _before_word(text, end) if cut and budget >= limit else text[:end]
            sentences, tokens = self.processor.sentences_and_tokens(prefix)
            if not cut or len(tokens) > self.max_sentences:
                return sentences, tokens, False
            if budget >= limit:
                return sentences, tokens, True
            budget *= 4

    def _ids(self, tokens: list[list[str]]) -> list[np.ndarray]:
        return [np.asarray(self.vocab.encode(sentence), dtype=np.int32) for sentence in tokens]

    def encode(self, texts: Sequence[Any]) -> list[list[np.ndarray] | None]:
        """Per text, its sentences' token id arrays exactly as preprocessing encodes them (the
        documents of ``EncodedSplit.documents()``); None for a text that cannot be read."""
        encoded: list[list[np.ndarray] | None] = []
        for text in texts:
            _, tokens, _, error = self.read(text)
            encoded.append(None if error else self._ids(tokens))
        return encoded

    # ------------------------------------------------------------------ prediction
    def predict(self, texts: Sequence[Any], batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, Any]]:
        """One result dict per text, in input order (keys: ``OUTPUT_COLUMNS``, see the module doc).

        A text that is not a string, is empty or has no words gets ``label`` None, empty
        containers and an ``error``; the other texts still get their answers.
        """
        if isinstance(texts, str):
            raise TypeError("predict takes a sequence of texts; wrap a single text in a list")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        from pipeline.model.han import document_outputs

        readings = []
        for text in texts:  # a request out of time (serve.timeout_seconds) stops between texts and batches
            check_deadline()
            readings.append(self.read(text))
        results = [_failed(error) if error else None for *_, error in readings]
        readable = [i for i, reading in enumerate(readings) if reading[3] is None]
        outputs = document_outputs(self.infer, [self._ids(readings[i][1]) for i in readable], batch_size,
                                   between=check_deadline)
        for i, output in zip(readable, outputs, strict=True):
            sentences, tokens, truncated, _ = readings[i]
            probabilities = output["probabilities"]
            results[i] = {
                "label": self.decide(probabilities),
                "probabilities": {label: float(p) for label, p in zip(self.labels, probabilities, strict=True)},
                "sentences": list(sentences),
                "sentence_weights": output["sentence_weights"].tolist(),
                "words": [list(t) for t in tokens],
                "word_weights": [weights.tolist() for weights in output["word_weights"]],
                "truncated": bool(truncated),
                "error": None,
            }
        return results


# --------------------------------------------------------------------------- MLflow pyfunc
try:
    import mlflow.pyfunc

    _PythonModel = mlflow.pyfunc.PythonModel
except ImportError:  # the package imports without MLflow; only logging/serving needs it
    _PythonModel = object


def texts_from_input(model_input: Any) -> list[Any]:
    """The texts of a pyfunc input: a DataFrame with a ``text`` column, ``{"text": [...]}``, a
    list of strings (or a single string)."""
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise ValueError(
                f"the input needs a 'text' column (one document per row); it has columns "
                f"{[str(c) for c in model_input.columns]}. Send pd.DataFrame({{'text': [...]}}), or over REST "
                '{"dataframe_records": [{"text": "..."}]}'
            )
        texts = model_input["text"].tolist()
        # A loaded pyfunc model gets {"text": ["a", "b"]} from MLflow as ONE row whose cell is the
        # list (mlflow.models.utils._enforce_schema packs a dict of string lists that way).
        if len(texts) == 1 and isinstance(texts[0], list | tuple | np.ndarray):
            return list(texts[0])
        return texts
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, dict):
        if "text" not in model_input:
            raise ValueError(f"the input dict needs a 'text' key with the documents; it has keys "
                             f"{[str(k) for k in model_input]}. Send {{'text': ['...', ...]}}")
        value = model_input["text"]
        return [value] if isinstance(value, str) else list(value)
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, list | tuple | np.ndarray):
        return list(model_input)
    raise ValueError(f"unsupported input {type(model_input).__name__}: send a DataFrame with a 'text' column")


class HANTextModel(_PythonModel):
    """``mlflow.pyfunc`` model: a DataFrame with a ``text`` column in, one row per document out.

    ``load_context`` reads the bundle from ``context.artifacts["han"]``. The optional param
    ``batch_size`` (default 32) sets how many documents go through the model at once.
    """

    def __init__(self, classifier: RawTextClassifier | None = None) -> None:
        self.classifier = classifier

    def load_context(self, context) -> None:
        self.classifier = RawTextClassifier.from_directory(context.artifacts["han"])

    # The DataFrame type hint is the main contract; MLflow infers no schema from it (the logged
    # signature does that), and it keeps MLflow from warning about a missing hint. A dict
    # {"text": [...]} or a list of strings works as well (see ``texts_from_input``).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.classifier is None:
            raise RuntimeError("HANTextModel has no classifier: load it with mlflow.pyfunc.load_model "
                               "or pass HANTextModel(RawTextClassifier.from_directory(bundle))")
        from mlflow.exceptions import MlflowException

        try:
            batch_size = (params or {}).get("batch_size", DEFAULT_BATCH_SIZE)
            batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)  # checked by predict
            texts = texts_from_input(model_input)
            check_request_size(texts)
            return results_frame(self.classifier.predict(texts, batch_size=batch_size))
        except MlflowException:
            raise
        except DeadlineExceeded as err:  # a 504 over REST, like MLflow's own request timeout
            from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED

            raise MlflowException(str(err), error_code=DEADLINE_EXCEEDED) from None
        except (ValueError, TypeError) as err:
            # A clear 400 over REST (MLflow turns other exceptions into a stack trace).
            raise MlflowException.invalid_parameter_value(str(err)) from None
        except Exception as err:  # noqa: BLE001 - a server must answer, never leak a traceback
            raise MlflowException(f"the model failed on this input ({type(err).__name__}: {str(err)[:500]})") from None


def request_limits() -> tuple[int, int]:
    """(max texts, max characters) per request (``serve.max_texts``, ``serve.max_characters``; ``pipeline.serving.limits``)."""
    return limits.current("max_texts"), limits.current("max_characters")


def check_request_size(texts: Sequence[Any]) -> None:
    """Refuse a request over the limits, saying which limit and what to do (a ValueError)."""
    max_texts, max_characters = request_limits()
    if len(texts) > max_texts:
        raise ValueError(f"the request has {len(texts):,} texts, more than the limit of {max_texts:,} per request "
                         f"({limits.ENV['max_texts']}, serve.max_texts); send them in smaller batches")
    characters = sum(len(t) for t in texts if isinstance(t, str))
    if characters > max_characters:
        raise ValueError(f"the request has {characters:,} characters of text, more than the limit of "
                         f"{max_characters:,} ({limits.ENV['max_characters']}, serve.max_characters); send fewer or shorter texts")


def results_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per result, ``OUTPUT_COLUMNS`` in order. Object columns, so a missing ``label`` or
    ``error`` stays None (pandas 3 would make a string column of them, with NaN for None, and
    NaN is truthy: ``if row["error"]`` would fire for every good row)."""
    frame = pd.DataFrame({column: pd.Series([r[column] for r in results], dtype=object) for column in OUTPUT_COLUMNS})
    frame["truncated"] = frame["truncated"].astype(bool)
    return frame


def pinned_requirements(packages: Sequence[str] = RUNTIME_PACKAGES) -> list[str]:
    """``name==version`` lines from requirements.txt for the packages the served model imports."""
    wanted = {p.lower() for p in packages}
    pins = []
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==", line.strip())
        if match and match.group(1).lower() in wanted:
            pins.append(line.strip())
    found = {pin.split("==")[0].lower() for pin in pins}
    if found != wanted:
        raise ValueError(f"requirements.txt pins no version for {sorted(wanted - found)}; pin them there")
    return pins


def raw_text_signature(example: pd.DataFrame, output: pd.DataFrame):
    """Input: a string ``text`` column. Output: inferred from a real prediction (MLflow 3 infers
    the list and dict columns as ``Array``/``Object`` types: ``probabilities`` an object with one
    double per label, ``sentences`` ``Array(string)``, ``word_weights`` ``Array(Array(double))``);
    ``label`` (a string, or a multi-label model's list of strings) and ``error`` are optional, since a
    text that cannot be read has no label and an error. Param ``batch_size`` (long, default 32)."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import ColSpec, Schema

    inferred = infer_signature(example[["text"]], output[list(OUTPUT_COLUMNS)],
                               params={"batch_size": DEFAULT_BATCH_SIZE})
    # label: a string, or a multi-label model's Array(string), as inferred; optional either way.
    label = next(spec for spec in inferred.outputs.inputs if spec.name == "label")
    label_type = label.type if output["label"].map(lambda value: isinstance(value, list)).any() else "string"
    optional = {"label": ColSpec(label_type, "label", required=False), "error": ColSpec("string", "error", required=False)}
    outputs = Schema([optional.get(spec.name, spec) for spec in inferred.outputs.inputs])
    return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=outputs, params=inferred.params)


def log_raw_text_model(bundle_dir: Path, *, name: str = "model", registered_model_name: str | None = None,
                       example_texts: list[str]):
    """Log the bundle as an ``mlflow.pyfunc`` model in the active run; register it when named.

    The model is logged *from code* (``pyfunc_model.py``, MLflow's recommended form: loading
    runs this package's code, never unpickled bytes), with the bundle as the artifact ``han``,
    the ``pipeline`` package as ``code_paths`` (so it loads where the project is not installed),
    a signature from a real prediction on ``example_texts`` (also the input example) and the
    runtime requirements pinned as in requirements.txt. A registered version is created with the
    hashes of its files (``register_with_hashes``).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri``; ``registered_model_version`` when registered).
    """
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_raw_text_model logs into the active MLflow run; call it inside `with mlflow.start_run():`")
    example_texts = list(example_texts)
    if not example_texts or not all(isinstance(t, str) and t.strip() for t in example_texts):
        raise ValueError("example_texts must be one or more non-empty strings (the model's input example)")
    bundle_dir = Path(bundle_dir)
    example = pd.DataFrame({"text": example_texts})
    output = HANTextModel(RawTextClassifier.from_directory(bundle_dir)).predict(None, example)
    failed = output["error"].dropna()
    if len(failed):
        raise ValueError(f"an example text cannot be classified ({failed.iloc[0]}); pass readable example_texts")
    signature = raw_text_signature(example, output)
    with warnings.catch_warnings():
        # MLflow 3.17's input-example writer compares a column Index with a range, which pandas 3.1
        # deprecates (Pandas4Warning); harmless, and not ours to fix.
        warnings.filterwarnings("ignore", message="Operation with range is deprecated")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={"han": str(bundle_dir)},
            code_paths=[str(PACKAGE_DIR)],
            signature=signature,
            input_example=example,
            pip_requirements=pinned_requirements(),
        )
    if registered_model_name is not None:
        info.registered_model_version = register_with_hashes(info.model_uri, registered_model_name).version
    return info


def register_with_hashes(model_uri: str, registered_model_name: str):
    """Register a logged model with the sha256 of each of its files as stored (downloaded back from
    the artifact store and hashed), as tags the version is created with
    (``pipeline.registry.integrity_tags``): loaders check them before anything of it runs."""
    import tempfile

    import mlflow

    from pipeline.registry import integrity_tags

    with tempfile.TemporaryDirectory(prefix="han-register-") as local:
        tags = integrity_tags(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=local))
    return mlflow.register_model(model_uri, registered_model_name, tags=tags)


def load_raw_text_model(uri: str):
    """The logged raw-text model, ready to ``predict(pd.DataFrame({"text": [...]}))``.

    ``uri`` is e.g. ``models:/han-demo@champion`` or ``models:/han-demo/1``, read from the current
    MLflow tracking URI, and loaded only after its files matched the hashes recorded at
    registration (``pipeline.registry.verified_model``; a local directory loads as it is).
    ``predict`` takes the param ``batch_size``.
    """
    from pipeline.registry import verified_model

    return verified_model(uri)
