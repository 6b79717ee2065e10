"""The raw-text model reads text exactly as preprocessing did, answers row by row, and gives the
same answers after a round trip through the MLflow registry into a fresh process.

Real preprocessing of a small demo corpus, a real (briefly trained) Keras HAN, real MLflow on a
temporary SQLite store; no mocks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.artifacts import read_json
from pipeline.config import PROJECT_ROOT, load_config
from pipeline.data.batching import pad_batch
from pipeline.data.demo import generate_demo_corpus
from pipeline.data.shards import load_split
from pipeline.data.vocab import Vocabulary
from pipeline.model.han import build_han, compile_han
from pipeline.serving.bundle import (
    BUNDLE_FILES,
    OUTPUT_COLUMNS,
    HANTextModel,
    RawTextClassifier,
    log_raw_text_model,
    pinned_requirements,
    write_bundle,
)
from pipeline.stages import preprocess

MAX_SENTENCES = 12  # below the demo's 5..30 sentences, so some test documents are cut
TINY = ["data.demo.num_documents=200", "model.embedding.dim=16", "model.word_units=8", "model.sentence_units=8",
        "model.word_attention.context_dim=8", "model.sentence_attention.context_dim=8",
        f"preprocess.limits.max_sentences={MAX_SENTENCES}"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Preprocess the demo corpus, train a tiny HAN for 4 epochs, write the bundle; the raw test texts."""
    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAN_ARTIFACTS_DIR", str(root / "artifacts"))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        config = load_config(None, TINY)
        out = preprocess.run(config).output_dir
    labels = read_json(out / "labels.json")
    keras.utils.set_random_seed(0)
    model = build_han(config.model, vocab_size=len(Vocabulary.load(out / "vocab.json")), num_classes=len(labels))
    train = load_split(out, "train")
    compile_han(model, config.model, learning_rate=5e-3).fit(pad_batch(train.documents()), train.labels,
                                                             batch_size=32, epochs=4, verbose=0)
    model.save(root / "model.keras")
    write_bundle(root / "bundle", root / "model.keras", out)
    # The demo generator is deterministic in (config, seed): it gives back the raw text of every id.
    raw = {doc.id: doc.text for doc in generate_demo_corpus(config.data.demo, config.seed)}
    test = load_split(out, "test")
    rows = [json.loads(line) for line in (out / "test.documents.jsonl").read_text().splitlines()]
    return {"dir": root / "bundle", "preprocess": out, "model": model, "test": test, "rows": rows,
            "texts": [raw[str(i)] for i in test.ids], "classifier": RawTextClassifier.from_directory(root / "bundle")}


# --------------------------------------------------------------------------- the bundle
def test_bundle_holds_the_model_and_the_preprocessing_state(bundle):
    assert sorted(p.name for p in bundle["dir"].iterdir()) == sorted(BUNDLE_FILES)
    stats_limits = read_json(bundle["preprocess"] / "stats.json")["limits"]
    assert read_json(bundle["dir"] / "limits.json") == {"max_sentences": MAX_SENTENCES,
                                                        "max_words": stats_limits["max_words"]}
    for name in ("text_processor.json", "vocab.json", "labels.json"):
        assert (bundle["dir"] / name).read_bytes() == (bundle["preprocess"] / name).read_bytes()


def test_missing_bundle_file_is_named(tmp_path, bundle):
    shutil.copytree(bundle["dir"], tmp_path / "b")
    (tmp_path / "b" / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        RawTextClassifier.from_directory(tmp_path / "b")


# --------------------------------------------------------------------------- (1) encoding
def test_encoding_raw_text_equals_preprocessing(bundle):
    encoded = bundle["classifier"].encode(bundle["texts"])
    documents = bundle["test"].documents()
    assert len(encoded) == len(documents) == len(bundle["texts"]) > 0
    for doc_id, mine, theirs in zip(bundle["test"].ids, encoded, documents, strict=True):
        assert mine is not None, doc_id
        assert len(mine) == len(theirs) <= MAX_SENTENCES, doc_id
        for a, b in zip(mine, theirs, strict=True):
            assert a.dtype == np.int32
            np.testing.assert_array_equal(a, b, err_msg=str(doc_id))


# --------------------------------------------------------------------------- (2) predictions
def test_predictions_equal_the_model_on_the_encoded_split(bundle):
    classifier = bundle["classifier"]
    results = classifier.predict(bundle["texts"], batch_size=7)  # several batches, sorted by length
    direct = bundle["model"](pad_batch(bundle["test"].documents()), training=False)
    probabilities = np.asarray(direct["probabilities"])
    sentence_weights = np.asarray(direct["sentence_weights"])
    word_weights = np.asarray(direct["word_weights"])
    assert len(results) == len(probabilities)
    for i, result in enumerate(results):
        assert result["error"] is None
        np.testing.assert_allclose([result["probabilities"][label] for label in classifier.labels], probabilities[i],
                                   atol=1e-5)
        assert result["label"] == classifier.labels[int(np.argmax(probabilities[i]))]
        n = len(result["sentences"])
        np.testing.assert_allclose(result["sentence_weights"], sentence_weights[i, :n], atol=1e-5)
        for j, words in enumerate(result["word_weights"]):
            np.testing.assert_allclose(words, word_weights[i, j, : len(words)], atol=1e-5)
    # The model learnt something in 4 epochs, so labels are not argmax ties (2 were too few for some initial weights).
    assert len({r["label"] for r in results}) > 1


# --------------------------------------------------------------------------- (4) weights and truncation
def test_weights_align_with_what_the_model_read_and_truncation_is_reported(bundle):
    classifier = bundle["classifier"]
    results = classifier.predict(bundle["texts"])
    max_words = classifier.max_words
    for text, result, row in zip(bundle["texts"], results, bundle["rows"], strict=True):
        assert set(result) == set(OUTPUT_COLUMNS)
        # The sentences are preprocessing's own sentence strings, cut to the limit.
        assert result["sentences"] == row["sentences"][:MAX_SENTENCES]
        assert len(result["sentence_weights"]) == len(result["sentences"]) == len(result["words"])
        assert abs(sum(result["sentence_weights"]) - 1.0) < 1e-5
        assert all(w >= 0 for w in result["sentence_weights"])
        assert [len(w) for w in result["word_weights"]] == [len(t) for t in result["words"]]
        assert all(0 < len(t) <= max_words for t in result["words"])
        assert all(abs(sum(w) - 1.0) < 1e-5 for w in result["word_weights"])
        tokens = classifier.processor.sentences_and_tokens(text)[1]
        assert result["words"] == [t[:max_words] for t in tokens[:MAX_SENTENCES]]
        cut = len(tokens) > MAX_SENTENCES or any(len(t) > max_words for t in tokens[:MAX_SENTENCES])
        assert result["truncated"] is cut
    assert any(len(row["sentences"]) > MAX_SENTENCES for row in bundle["rows"])
    assert any(r["truncated"] and len(r["sentences"]) == MAX_SENTENCES for r in results)
    short = classifier.predict(["The match ended early. Everyone went home."])[0]
    assert short["truncated"] is False and len(short["sentences"]) == 2


def test_a_huge_text_is_split_only_as_far_as_the_model_reads(bundle):
    """The growing-prefix split gives exactly what splitting the whole text gives, for what is read."""
    classifier = bundle["classifier"]
    huge = "\n\n".join(bundle["texts"][:40] * 50)  # ~2,000 documents' worth in one text
    sentences, tokens = classifier.processor.sentences_and_tokens(huge)
    result = classifier.predict([huge])[0]
    assert result["sentences"] == sentences[:MAX_SENTENCES]
    assert result["words"] == [t[: classifier.max_words] for t in tokens[:MAX_SENTENCES]]
    assert result["truncated"] is True
    for size in range(len(bundle["texts"][0]) - 5, len(bundle["texts"][0]) + 1):  # prefixes ending anywhere
        text = bundle["texts"][0][:size]
        assert classifier.read(text)[:2] == tuple(x[:MAX_SENTENCES] for x in classifier.processor.sentences_and_tokens(text))


# --------------------------------------------------------------------------- (5) bad input
def test_bad_rows_get_reasons_and_the_others_get_answers(bundle):
    classifier = bundle["classifier"]
    good = bundle["texts"][:2]
    results = classifier.predict([good[0], "", "   \n\t", None, "?! ...", 42, float("nan"), good[1]], batch_size=1)
    assert [r["error"] for r in results] == [
        None, "empty text", "empty text", "no text (missing value)",
        "no words in the text (only punctuation or symbols)", "text must be a string, got int",
        "no text (missing value)", None,
    ]
    for bad in results[1:7]:
        assert bad["label"] is None and bad["probabilities"] == {} and bad["sentences"] == []
        assert bad["sentence_weights"] == [] and bad["words"] == [] and bad["word_weights"] == []
        assert bad["truncated"] is False
    alone = classifier.predict(good)
    for i in (0, 1):
        assert results[[0, 7][i]]["probabilities"] == pytest.approx(alone[i]["probabilities"], abs=1e-6)
    assert classifier.predict([]) == []
    with pytest.raises(ValueError, match="batch_size"):
        classifier.predict(good, batch_size=0)
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        classifier.predict(good[0])


def test_pyfunc_wrapper_input_forms_and_a_clear_error_without_a_text_column(bundle):
    from mlflow.exceptions import MlflowException

    model = HANTextModel(bundle["classifier"])
    # MlflowException(INVALID_PARAMETER_VALUE): a 400 with this message over REST, not a stack trace.
    with pytest.raises(MlflowException, match=r"needs a 'text' column.*\['body', 'id'\].*pd\.DataFrame\(\{'text'"):
        model.predict(None, pd.DataFrame({"body": ["x"], "id": [1]}))
    texts = bundle["texts"][:3]
    frame = model.predict(None, pd.DataFrame({"text": [texts[0], "", None, texts[1], texts[2]]}), params={"batch_size": 2})
    assert list(frame.columns) == list(OUTPUT_COLUMNS) and len(frame) == 5
    assert frame["label"].tolist()[1:3] == [None, None]  # None, not NaN: `if row["error"]` stays reliable
    assert frame["error"].tolist()[0] is None and frame["error"].tolist()[3] is None
    assert frame["error"].tolist()[1:3] == ["empty text", "no text (missing value)"]
    labels = frame["label"].tolist()
    for other in (texts, {"text": texts}, pd.DataFrame({"text": [texts]})):  # the last: how MLflow packs a dict
        again = model.predict(None, other)
        assert again["label"].tolist() == [labels[0], labels[3], labels[4]]
    with pytest.raises(MlflowException, match="'text' key"):
        model.predict(None, {"body": texts})
    with pytest.raises(MlflowException, match="batch_size must be a positive integer"):
        model.predict(None, texts, params={"batch_size": 0})


def test_pins_come_from_requirements():
    pins = pinned_requirements()
    requirements = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    assert [p.split("==")[0].lower() for p in pins] == [
        "tensorflow", "keras", "mlflow", "nltk", "numpy", "pandas", "pydantic", "pyyaml"]
    assert all(pin in requirements for pin in pins)


# --------------------------------------------------------------------------- (3) MLflow round trip
LOAD_AND_PREDICT = textwrap.dedent("""
    import json, sys
    import mlflow, pandas as pd
    texts = json.load(open(sys.argv[1]))
    model = mlflow.pyfunc.load_model("models:/han-demo/1")
    import pipeline
    frame = model.predict(pd.DataFrame({"text": texts}), params={"batch_size": 5})
    try:
        model.predict(pd.DataFrame({"body": ["x"]}))
        missing = None
    except Exception as err:
        missing = str(err)
    json.dump({"rows": frame.to_dict(orient="records"), "pipeline": pipeline.__file__, "missing": missing},
              open(sys.argv[2], "w"))
""")


def test_registered_model_gives_the_same_answers_in_a_fresh_process(bundle, tmp_path):
    uri = os.environ["MLFLOW_TRACKING_URI"]  # this test's own SQLite store (tests/conftest.py)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serving", artifact_location=(tmp_path / "mlartifacts").as_uri())
    with pytest.raises(RuntimeError, match="inside `with mlflow.start_run"):
        log_raw_text_model(bundle["dir"], example_texts=bundle["texts"][:2])
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_raw_text_model(bundle["dir"], registered_model_name="han-demo",
                                  example_texts=bundle["texts"][:2])

    logged = [p for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()]
    assert any(p.name == "model.keras" for p in logged)
    assert not [p for p in logged if p.suffix in (".pkl", ".pickle", ".joblib", ".cloudpickle")]  # no pickle to receive
    (mlmodel,) = [p for p in logged if p.name == "MLmodel"]
    flavor = yaml.safe_load(mlmodel.read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor  # code, not a pickle

    version = mlflow.MlflowClient().get_model_version("han-demo", "1")
    assert version.run_id == run.info.run_id and str(info.registered_model_version) == "1"
    signature = info.signature
    assert signature.inputs.input_names() == ["text"]
    assert signature.outputs.input_names() == list(OUTPUT_COLUMNS)  # dict/list columns inferred as Object/Array
    assert [p.name for p in signature.params.params] == ["batch_size"]
    with open(mlflow.pyfunc.get_model_dependencies(info.model_uri)) as handle:
        assert [line.strip() for line in handle if line.strip()] == pinned_requirements()

    texts = [*bundle["texts"], "", None]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": uri}
    # A fresh interpreter, outside the project: `pipeline` can only come from the model's own code.
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(tmp_path / "texts.json"),
                           str(tmp_path / "out.json")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads((tmp_path / "out.json").read_text())
    assert served["pipeline"].startswith(str(tmp_path / "mlartifacts")), served["pipeline"]
    assert "text" in served["missing"]

    expected = bundle["classifier"].predict(texts)
    assert len(served["rows"]) == len(expected)
    for got, want in zip(served["rows"], expected, strict=True):
        assert got["label"] == want["label"]
        assert got["error"] == want["error"]
        assert got["sentences"] == want["sentences"] and got["words"] == want["words"]
        assert got["truncated"] == want["truncated"]
        assert got["probabilities"].keys() == want["probabilities"].keys()
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-5)
        np.testing.assert_allclose(got["sentence_weights"], want["sentence_weights"], atol=1e-5)
    assert served["rows"][-1]["error"] == "no text (missing value)" and served["rows"][-2]["error"] == "empty text"
