"""The promote stage: move the registry's aliases by the evaluate stage's verdict.

Input: the train manifest (the registered model version) and the evaluate stage's
``metrics.json`` (the gate verdict and the champion it was compared with). Output:
``artifacts/<name>/promote/decision.json`` and, in the MLflow registry:

1. alias ``challenger`` -> the new version (every evaluated candidate is the challenger);
2. alias ``champion`` -> the new version, only when the gate passed *and* the champion is still
   the version the gate compared against (otherwise the comparison is stale: evaluate again);
3. tags on the version: ``promotion.verdict`` (promoted | rejected | stale), ``promotion.reasons``,
   ``promotion.previous_champion``, ``promotion.evaluated`` (which evaluation decided) and
   ``promotion.run_id``. Re-evaluating the champion itself (verdict ``already-champion``, e.g. a
   scheduled run on unchanged data) leaves its tags as they were.

Consistency under interruption (``kill -9`` at any point): every registry write is one atomic
call, and ``champion`` moves only to a version whose ``gate.passed`` tag (written by evaluate,
before this stage) is ``true``. A rerun finds what is already done and completes the rest; a
repeated run with nothing left to do changes nothing and opens no MLflow run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import faults
from pipeline.artifacts import MANIFEST, atomic_directory, read_json, read_manifest, write_json
from pipeline.config import PipelineConfig
from pipeline.registry import CHALLENGER, CHAMPION, alias_version, registered_here

STAGE_VERSION = 1


class PromoteError(RuntimeError):
    """The stage cannot run; the message says what to do."""


@dataclass(frozen=True)
class PromoteResult:
    output_dir: Path
    decision: dict[str, Any]
    skipped: bool

    @property
    def promoted(self) -> bool:
        return self.decision["verdict"] == "promoted"


def _log(message: str) -> None:
    print(f"promote: {message}", file=sys.stderr, flush=True)


def decide(gate: dict[str, Any], version: str, compared_champion: str | None, current_champion: str | None) -> tuple[str, list[str]]:
    """The verdict and its reasons, from the gate and the champion before and now."""
    reasons = list(gate.get("reasons", []))
    if current_champion == version:
        return "already-champion", [f"version {version} is already the champion", *reasons]
    if not gate.get("passed"):
        return "rejected", ["the gate failed; the champion stays", *reasons]
    if current_champion != compared_champion:
        was = "no champion" if compared_champion is None else f"version {compared_champion}"
        now = "none" if current_champion is None else f"version {current_champion}"
        return "stale", [f"the champion changed after evaluation (compared with {was}, now {now}); "
                         "run evaluate and promote again", *reasons]
    return "promoted", reasons


def _inputs(config: PipelineConfig) -> tuple[dict[str, Any], dict[str, Any], str]:
    train_manifest = read_manifest(config.stage_dir("train"))
    if train_manifest is None:
        raise PromoteError(f"no trained model in {config.stage_dir('train')}; run `{config.command('train')}` "
                           f"(or `{config.command('pipeline')}`) first")
    metrics_path = config.stage_dir("evaluate") / "metrics.json"
    if read_manifest(config.stage_dir("evaluate")) is None or not metrics_path.is_file():
        raise PromoteError(f"no evaluation in {config.stage_dir('evaluate')}; run `{config.command('evaluate')}` first: "
                           "only an evaluated model can be promoted")
    metrics = read_json(metrics_path)
    if metrics.get("train", {}).get("fingerprint") != train_manifest.get("fingerprint"):
        raise PromoteError("the evaluation is of an earlier model than the one trained now; "
                           f"run `{config.command('evaluate')}` first")
    version = train_manifest.get("mlflow", {}).get("registered_version")
    if version is None:
        raise PromoteError("the trained model was not registered in the MLflow registry; train again with "
                           "tracking.registered_model set")
    return train_manifest, metrics, str(version)


def run(config: PipelineConfig) -> PromoteResult:
    import mlflow

    from pipeline.tracking import connect, stage_run, tracking_uri

    train_manifest, metrics, version = _inputs(config)
    name = config.tracking.registered_model
    connect()
    client = mlflow.MlflowClient()
    model_version = registered_here(client, train_manifest.get("mlflow", {}), name)
    if model_version is None:
        raise PromoteError(f"the model in {config.stage_dir('train')} ({name} version {version}) was registered in "
                           f"another tracking store than {tracking_uri()}; run `{config.command('evaluate')}` with this store (it "
                           "logs the model on disk into it, not retrained, and judges it there), then promote")
    gate = metrics["gate"]
    if model_version.tags.get("gate.passed") != str(bool(gate["passed"])).lower():
        raise PromoteError(f"{name} version {version} carries no gate verdict matching {config.stage_dir('evaluate')}; "
                           f"run `{config.command('evaluate')}` again")

    out_dir = config.stage_dir("promote")
    previous = read_manifest(out_dir)
    champion_now = alias_version(client, name, CHAMPION)
    challenger_now = alias_version(client, name, CHALLENGER)
    if previous and previous.get("version") == version and previous.get("evaluated") == metrics.get("created"):
        done = read_json(out_dir / "decision.json")
        expected_champion = version if done["verdict"] in ("promoted", "already-champion") else done["champion_before"]
        tagged = done["verdict"] == "already-champion" or model_version.tags.get("promotion.verdict") == done["verdict"]
        if challenger_now == version and champion_now == expected_champion and tagged:
            _log(f"version {version} was already decided ({done['verdict']}); registry unchanged")
            return PromoteResult(out_dir, done, skipped=True)

    verdict, reasons = decide(gate, version, gate.get("champion"), champion_now)
    champion_before = champion_now
    if (verdict == "already-champion" and model_version.tags.get("promotion.verdict") == "promoted"
            and model_version.tags.get("promotion.evaluated") == str(metrics.get("created"))):
        # An interrupted promotion of this very version moved the alias but did not finish: finish it.
        verdict, reasons = "promoted", model_version.tags.get("promotion.reasons", "").split(" | ")
        champion_before = model_version.tags.get("promotion.previous_champion")
        champion_before = None if champion_before in (None, "None") else champion_before
    decision = {
        "stage": "promote",
        "stage_version": STAGE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "registered_model": name,
        "version": version,
        "verdict": verdict,
        "reasons": reasons,
        "champion_before": champion_before,
        "champion_after": version if verdict in ("promoted", "already-champion") else champion_now,
        "challenger": version,
        "evaluated": metrics.get("created"),
        "gate_metric": {config.evaluate.gate.metric: metrics["model"][config.evaluate.gate.metric]},
        "train_run_id": train_manifest["mlflow"].get("run_id"),
    }
    tags = {"han.verdict": verdict, "han.model_version": version}
    with stage_run(config, "promote", tags) as tracked:
        # The decision is written on the version first, then the aliases move: an interruption in
        # between leaves the old champion in place, and a rerun sees the recorded intent.
        version_tags = {"promotion.verdict": verdict, "promotion.reasons": " | ".join(reasons)[:5000],
                        "promotion.previous_champion": str(champion_before),
                        "promotion.evaluated": str(metrics.get("created")), "promotion.run_id": tracked.info.run_id}
        if verdict != "already-champion":
            for key, value in version_tags.items():
                client.set_model_version_tag(name, version, key, value)
        faults.point("promote:tagged")
        client.set_registered_model_alias(name, CHALLENGER, version)
        faults.point("promote:challenger")
        if verdict == "promoted":
            client.set_registered_model_alias(name, CHAMPION, version)
        mlflow.log_metric("promoted", float(verdict == "promoted"))
        mlflow.set_tag("promotion.reasons", " | ".join(reasons)[:5000])
        decision["mlflow_run_id"] = tracked.info.run_id
        with atomic_directory(out_dir) as staging:
            write_json(staging / "decision.json", decision)
            write_json(staging / MANIFEST, {"stage": "promote", "created": decision["created"], "version": version,
                                            "evaluated": metrics.get("created"), "verdict": verdict})
        mlflow.log_artifact(str(out_dir / "decision.json"), "promote")
    if verdict == "promoted":
        _log(f"{name} version {version} is now the champion (was {champion_before or 'none'})")
    else:
        _log(f"{name} version {version} is the challenger; champion stays {champion_now or 'none'} ({verdict}): "
             + "; ".join(reasons))
    return PromoteResult(out_dir, decision, skipped=False)
