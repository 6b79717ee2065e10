"""The explain stage on the small demo pipeline: explanations, the HTML report, faithfulness, inputs."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import mlflow
import pytest

from pipeline.__main__ import main
from tests.stages.conftest import set_args


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _explanations(directory):
    return [json.loads(line) for line in (directory / "explanations.jsonl").read_text().splitlines()]


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
    assert "http://" not in html and "https://" not in html


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
    assert main(["explain", *set_args(workspace.overrides), "--text", "One sentence here. And another."]) == 0
    assert "report in" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 3}\n')
    assert main(["explain", *set_args(workspace.overrides), "--file", str(bad)]) == 2
    assert f"{bad}:1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--text", "x", "--file", "y"]])
def test_text_and_file_together_are_refused(argv):
    with pytest.raises(SystemExit):
        main(["explain", *argv])
