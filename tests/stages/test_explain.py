"""The explain stage on the small demo pipeline: explanations, the HTML report, faithfulness, inputs."""

from __future__ import annotations

import base64
import html as html_text
import json
import shutil
from html.parser import HTMLParser

import mlflow
import pytest

from pipeline.__main__ import main
from pipeline.stages.explain import evaluate_figures
from tests.stages.conftest import set_args


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _explanations(directory):
    return [json.loads(line) for line in (directory / "explanations.jsonl").read_text().splitlines()]


def _data_uri(path):
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def test_every_test_document_is_explained_with_the_schema(workspace):
    out = workspace.config.stage_dir("explain")
    rows = _explanations(out)
    predictions = [json.loads(line) for line in
                   (workspace.config.stage_dir("evaluate") / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p["id"] for p in predictions]
    for row, prediction in zip(rows, predictions, strict=True):
        assert set(row) >= {"id", "label", "predicted", "probabilities", "confidence", "correct", "sentences", "truncated"}
        assert row["predicted"] == prediction["predicted"] and row["label"] == prediction["label"]
        assert abs(sum(s["weight"] for s in row["sentences"]) - 1.0) < 1e-4
        for sentence in row["sentences"]:
            assert sentence["words"] and abs(sum(w for _, w in sentence["words"]) - 1.0) < 1e-4
            assert all(isinstance(token, str) and token for token, _ in sentence["words"])


def test_report_holds_every_sentence_and_parses(workspace):
    out = workspace.config.stage_dir("explain")
    html = (out / "report.html").read_text()
    parser = _Text()
    parser.feed(html)
    text = " ".join(parser.text)
    for row in _explanations(out):  # 160 documents: all fit in the report (400)
        for sentence in row["sentences"]:
            for token, _ in sentence["words"]:
                assert token in text
            assert f'<span class="o">{html_text.escape(sentence["text"])}</span>' in html  # the sentence as written
    assert "http://" not in html and "https://" not in html
    evaluate = workspace.config.stage_dir("evaluate")
    for plot in (evaluate / "confusion_matrix.png", evaluate / "baseline_confusion_matrix.png", out / "faithfulness.png"):
        assert _data_uri(plot) in html
    assert html.count("<img ") == 3 and 'href="#plots"' in html and 'href="#summary"' in html


def test_records_carry_the_sentences_as_written(workspace):
    prep = workspace.config.stage_dir("preprocess")
    written = {row["id"]: row["sentences"] for row in map(json.loads, (prep / "test.documents.jsonl").read_text().splitlines())}
    rows = _explanations(workspace.config.stage_dir("explain"))
    for row in rows:
        texts = [s["text"] for s in row["sentences"]]
        assert texts == written[row["id"]][: len(texts)]
    # the demo corpus' sentences start with a capital and end with a period; tokens are lowercased and split
    first = rows[0]["sentences"][0]
    assert first["text"][0].isupper() and first["text"] != " ".join(token for token, _ in first["words"])


def test_evaluate_plots_of_another_model_are_left_out(workspace, tmp_path, monkeypatch):
    config = workspace.config
    copy = tmp_path / "artifacts" / config.name
    shutil.copytree(config.stage_dir("evaluate"), copy / "evaluate")
    (copy / "train").mkdir()
    shutil.copy(config.stage_dir("train") / "manifest.json", copy / "train")
    monkeypatch.setenv("HAN_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    figures, notes = evaluate_figures(workspace.config)
    assert [path for _, path in figures] == [copy / "evaluate" / "confusion_matrix.png",
                                            copy / "evaluate" / "baseline_confusion_matrix.png"] and notes == []
    manifest = json.loads((copy / "evaluate" / "manifest.json").read_text())
    (copy / "evaluate" / "manifest.json").write_text(json.dumps({**manifest, "train_fingerprint": "another model"}))
    figures, notes = evaluate_figures(workspace.config)
    assert figures == [] and "earlier model" in notes[0]
    shutil.rmtree(copy / "evaluate")
    assert evaluate_figures(workspace.config) == ([], [])  # no evaluate stage: no plots, nothing to say


def test_faithfulness_and_evidence_are_measured_and_logged(workspace):
    out = workspace.config.stage_dir("explain")
    faith = json.loads((out / "faithfulness.json").read_text())
    assert faith["ks"] == [1, 2, 3]
    assert 0.0 <= faith["evidence"]["hit_rate"] <= 1.0 and faith["evidence"]["documents"] == 160
    assert (out / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"
    run = mlflow.search_runs(experiment_names=["demo"], filter_string="tags.`han.stage` = 'explain'",
                             output_format="list")[0]
    assert run.data.metrics["faithfulness.evidence_hit_rate"] == faith["evidence"]["hit_rate"]
    paths = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "explain")}
    assert {"explain/report.html", "explain/explanations.jsonl", "explain/faithfulness.json"} <= paths


def test_explain_a_jsonl_file_and_a_text(workspace, tmp_path, capsys):
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"text": "The team won the match. Fans cheered.", "label": "sport"}) + "\n"
                      + json.dumps({"text": "   "}) + "\n")
    assert main(["explain", *set_args(workspace.overrides), "--file", str(source)]) == 0
    out = workspace.config.stage_dir("explain-input")
    rows = _explanations(out)
    assert len(rows) == 1 and rows[0]["label"] == "sport"
    assert json.loads((out / "summary.json").read_text())["errors"][0]["index"] == 1  # the blank one, with why
    page = (out / "report.html").read_text()
    assert _data_uri(workspace.config.stage_dir("evaluate") / "confusion_matrix.png") in page
    assert page.count("<img ") == 2  # the evaluate stage's two; no faithfulness plot for given texts
    assert "The team won the match." in page  # as written, shown by default
    assert main(["explain", *set_args(workspace.overrides), "--text", "One sentence here. And another."]) == 0
    assert "explain-input/report.html" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 3}\n')
    assert main(["explain", *set_args(workspace.overrides), "--file", str(bad)]) == 2
    assert f"{bad}:1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--text", "x", "--file", "y"]])
def test_text_and_file_together_are_refused(argv):
    with pytest.raises(SystemExit):
        main(["explain", *argv])


def test_sufficiency_beside_random_is_in_the_console_and_the_report(workspace, capsys):
    """Sufficiency (lower = the attended sentences alone keep the prediction) is said in words, like
    comprehensiveness, not only drawn in the plot and kept in faithfulness.json."""
    assert main(["explain", *set_args(workspace.overrides)]) == 0
    out = workspace.config.stage_dir("explain")
    faith = json.loads((out / "faithfulness.json").read_text())
    mine, chance = faith["attention"]["sufficiency"]["1"], faith["random"]["sufficiency"]["1"]
    line = f"sufficiency (attention vs random) k=1: {mine:.3f} vs random {chance:.3f}, k=2: "
    err = capsys.readouterr().err
    assert line in err
    html = (out / "report.html").read_text()
    assert f"<li>{html_text.escape(line)}" in html and "lower = the attended sentences alone keep the prediction" in html
    # How concentrated the attention is, from the same sample: what a reader of the report sees.
    share = faith["weight_share"]
    assert 0 < share["1"] < share["2"] <= 1
    concentration = (f"attention: the top sentence {share['1']:.0%}, the top 2 sentences {share['2']:.0%} of a "
                     "document's sentence weight on average")
    assert concentration in err and html_text.escape(concentration) in html
