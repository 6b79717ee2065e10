"""The default HAN learns the demo corpus from preprocessed outputs, and its sentence attention finds the evidence."""

from __future__ import annotations

import json

import keras
import numpy as np

from pipeline.batching import EncodedSplit, pad_batch
from pipeline.config import load_config
from pipeline.model import build_han, compile_han
from pipeline.stages import preprocess
from pipeline.vocab import Vocabulary


def test_default_han_learns_demo_corpus_and_attends_to_evidence():
    keras.utils.set_random_seed(0)
    config = load_config(overrides=["data.demo.num_documents=1200", "model.embedding.dim=32",
                                    "model.word_units=16", "model.sentence_units=16"])
    out = preprocess.run(config).output_dir
    train, test = EncodedSplit.load(out / "train.npz"), EncodedSplit.load(out / "test.npz")
    labels = json.loads((out / "labels.json").read_text())
    vocab_size = len(Vocabulary.load(out / "vocab.json"))
    model = build_han(config.model, vocab_size=vocab_size, num_classes=len(labels))
    trainer = compile_han(model, config.model, learning_rate=3e-3)
    trainer.fit(pad_batch(train.documents()), train.labels, batch_size=32, epochs=8, verbose=0)

    outputs = model(pad_batch(test.documents()), training=False)
    predicted = np.argmax(outputs["probabilities"], axis=-1)
    accuracy = float(np.mean(predicted == test.labels))
    assert accuracy >= 0.8, accuracy  # chance is 0.25; unigram TF-IDF + LR reaches about 0.47

    rows = [json.loads(line) for line in (out / "test.documents.jsonl").read_text().splitlines()]
    top = np.argmax(np.asarray(outputs["sentence_weights"]), axis=-1)
    hit_rate = np.mean([t in row["meta"]["evidence"] for t, row in zip(top, rows, strict=True)])
    assert hit_rate >= 0.9, hit_rate
