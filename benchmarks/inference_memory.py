"""Memory of a process that only evaluates or only serves: peak RSS of inference on the IMDB model ``make bench`` trained.

    python -m benchmarks.inference_memory            # the whole test split (25,000 documents), 2,000 served texts
    python -m benchmarks.inference_memory --quick    # the first 1,000 test documents, 200 served texts: a smoke run

Issue #31: what a process that only serves or only evaluates needs, and whether one traced function
shared by the length groups removes most of the graph memory. Each measurement runs in a fresh
process (peak RSS is ``VmHWM`` of that process alone), with the runtime settings of ``--config``
(``runtime``: threads, malloc arenas; default ``configs/imdb.yaml``, the model's own), as the evaluate
stage and ``make serve`` apply them:

- ``import``: TensorFlow, Keras and ``pipeline.model.han`` imported, nothing else (the runtime alone);
- ``load``: + the bundle loaded (``RawTextClassifier.from_directory``: weights, vocabulary, text processor),
  nothing run;
- ``evaluate_packed``: + the test split scored with the bundle's own inference, packed, as the evaluate
  stage does (``predict_probabilities``): the word level is ONE ``tf.function`` over sentences of any
  length, the sentence level another;
- ``evaluate_unpacked``: the same documents through the whole model (``document_outputs(..., packed=False)``):
  padded batches of ``--batch-size`` documents, the model's ``word_buckets`` length groups in one traced graph;
- ``serve``: ``RawTextClassifier.predict`` on raw texts (each of the first N test documents' sentences
  joined with spaces) in requests of 16 texts, as the REST server receives them.

In 3 to 5 one document (one text) is run first, on its own, to trace the graphs: ``trace_mb`` is what the
process's RSS grew by over it (graphs and tracing, with a tiny batch's activations), and the timed
pass (``seconds``, ``docs_per_s``) comes after. ``added_over_load_mb`` is a mode's peak minus the
``load`` process's peak: what inference adds to a loaded model. The two evaluations must score the
same probabilities (their accuracies agree to 1e-4). Results go to
``benchmarks/results/inference-memory-<date>.json`` and ``.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.compare import RESULT_PREFIX, bench_prep, log, machine, peak_rss_mb
from pipeline.config import PROJECT_ROOT

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("import", "load", "evaluate_packed", "evaluate_unpacked", "serve")
EVALUATIONS = ("evaluate_packed", "evaluate_unpacked")
DESCRIPTIONS = {
    "import": "TensorFlow, Keras and the model code imported",
    "load": "+ the bundle loaded, nothing run",
    "evaluate_packed": "+ the test documents scored, packed (one word-level function for every length)",
    "evaluate_unpacked": "+ the same documents through the whole model (padded batches, the length groups in one graph)",
    "serve": "+ raw texts through `RawTextClassifier.predict`, 16 per request",
}
REQUEST_TEXTS = 16
AGREEMENT = 1e-4
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "imdb.yaml"
DEFAULT_BATCH = 64  # evaluate.batch_size: documents per padded batch of the unpacked pass


def default_bundle() -> Path:
    return bench_prep().parent / "train" / "bundle"


def missing_inputs(bundle: Path, prep: Path) -> list[str]:
    from pipeline.data.shards import shard_paths
    from pipeline.serving.bundle import BUNDLE_FILES

    missing = [str(bundle / name) for name in BUNDLE_FILES if not (bundle / name).is_file()]
    if not shard_paths(prep, "test"):
        missing.append(f"{prep}/test-NNNNN.npz")
    if not (prep / "test.documents.jsonl").is_file():
        missing.append(str(prep / "test.documents.jsonl"))
    return missing


def shown(path: Path) -> str:
    """``path`` relative to the project when inside it (the results are committed), else as given."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def rss_mb() -> float:
    """This process's resident memory now (``VmRSS``)."""
    from pipeline.runtime import memory_mb

    now = memory_mb()
    return now["rss"] if now else 0.0


def raw_texts(prep: Path, count: int) -> tuple[list[str], list[str]]:
    """The first ``count`` test documents as raw texts (their sentences joined with spaces) and their labels;
    read line by line, so only those are ever in memory."""
    texts, labels = [], []
    with open(prep / "test.documents.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if len(texts) == count:
                break
            row = json.loads(line)
            texts.append(" ".join(row["sentences"]))
            labels.append(row["label"])
    return texts, labels


def accuracy(probabilities, labels) -> float:
    import numpy as np

    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    if labels.ndim == 2:  # multi-label: every label right at 0.5
        return float(np.mean(np.all((probabilities >= 0.5) == (labels > 0), axis=1)))
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.config import load_config
    from pipeline.runtime import apply_runtime

    # Before TensorFlow starts, as the evaluate stage and `python -m pipeline serve` do.
    apply_runtime(load_config(args.config).resolved().runtime)
    started = time.perf_counter()
    import keras  # noqa: F401
    import numpy as np
    import tensorflow as tf  # noqa: F401

    import pipeline.model.han  # noqa: F401

    result: dict[str, Any] = {"mode": mode}
    if mode == "import":
        return {**result, "seconds": round(time.perf_counter() - started, 2), **ending()}

    from pipeline.serving.bundle import RawTextClassifier

    started = time.perf_counter()
    bundle = RawTextClassifier.from_directory(args.bundle)
    result["load_seconds"] = round(time.perf_counter() - started, 2)
    if mode == "load":
        return {**result, "seconds": result["load_seconds"], **ending()}

    if mode == "serve":
        texts, labels = raw_texts(args.prep, args.texts)
        result["rss_before_mb"] = rss_mb()
        started = time.perf_counter()
        bundle.predict(texts[:1])  # the first request traces the graphs
        result.update(trace_seconds=round(time.perf_counter() - started, 2), trace_mb=round(rss_mb() - result["rss_before_mb"], 1))
        answers = []
        started = time.perf_counter()
        for start in range(0, len(texts), REQUEST_TEXTS):
            answers.extend(bundle.predict(texts[start : start + REQUEST_TEXTS]))
        seconds = time.perf_counter() - started
        right = [answer["label"] == label for answer, label in zip(answers, labels, strict=True) if answer["error"] is None]
        return {**result, "documents": len(texts), "requests": -(-len(texts) // REQUEST_TEXTS),
                "errors": sum(answer["error"] is not None for answer in answers),
                "accuracy": round(float(np.mean(right)), 4) if right else None,
                "seconds": round(seconds, 2), "docs_per_s": round(len(texts) / seconds, 1), **ending()}

    from pipeline.data.shards import load_split
    from pipeline.model.han import document_outputs

    split = load_split(args.prep, "test")
    labels = split.labels[: args.documents] if args.documents else split.labels
    documents = split.documents()[: args.documents] if args.documents else split.documents()
    del split
    packed = mode == "evaluate_packed"
    result["rss_before_mb"] = rss_mb()
    started = time.perf_counter()
    document_outputs(bundle.infer, documents[:1], args.batch_size, packed=packed)  # traces the graphs
    result.update(trace_seconds=round(time.perf_counter() - started, 2), trace_mb=round(rss_mb() - result["rss_before_mb"], 1))
    started = time.perf_counter()
    if packed:  # what the evaluate stage runs
        outputs = document_outputs(bundle.infer, documents, args.batch_size)
    else:
        outputs = document_outputs(bundle.infer, documents, args.batch_size, packed=False)
    seconds = time.perf_counter() - started
    probabilities = np.stack([out["probabilities"] for out in outputs])
    if args.probabilities:
        np.save(args.probabilities, probabilities)
    return {**result, "documents": len(documents), "batch_size": None if packed else args.batch_size,
            "accuracy": round(accuracy(probabilities, labels), 6), "seconds": round(seconds, 2),
            "docs_per_s": round(len(documents) / seconds, 1), **ending()}


def ending() -> dict[str, float]:
    return {"peak_rss_mb": peak_rss_mb(), "rss_end_mb": rss_mb()}


def run_child(mode: str, args: argparse.Namespace, documents: int | None, texts: int, probabilities: Path | None,
              env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.inference_memory", "--child", mode, "--bundle", str(args.bundle),
               "--prep", str(args.prep), "--config", str(args.config), "--batch-size", str(args.batch_size),
               "--texts", str(texts), "--documents", str(documents or 0)]
    if probabilities is not None:
        command += ["--probabilities", str(probabilities)]
    process = subprocess.run(command, env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
    lines = [line for line in process.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def _less_or_more(mb: float) -> str:
    return f"{abs(mb):,.0f} MB {'less' if mb < 0 else 'more'}"


def comparison(report: dict[str, Any]) -> str:
    """Whether the packed single word-level function needs less memory than the grouped whole graph, and by how
    much (peak, added over the load, and the tracing alone), from the measurements; with several runs per mode,
    whether the difference stands out of their spread."""
    packed, whole = (report["modes"][mode] for mode in EVALUATIONS)
    peak_gap = packed["peak_rss_mb"] - whole["peak_rss_mb"]
    trace_gap = packed["trace_mb"] - whole["trace_mb"]
    runs = [row.get("peak_rss_mb_runs", [row["peak_rss_mb"]]) for row in (packed, whole)]
    median = " (medians)" if len(runs[0]) > 1 else ""
    if abs(peak_gap) < 1:
        verdict = "The packed single word-level function and the whole model's grouped graph peak alike"
    else:
        verdict = (f"The packed single word-level function needs {_less_or_more(peak_gap)} peak memory than the whole "
                   f"model's grouped graph ({peak_gap / whole['peak_rss_mb']:+.0%})")
    sentence = (f"{verdict}: {packed['peak_rss_mb']:,.0f} MB against {whole['peak_rss_mb']:,.0f} MB at peak{median}, "
                f"{packed['added_over_load_mb']:+,.0f} MB against {whole['added_over_load_mb']:+,.0f} MB over the loaded model")
    if len(runs[0]) > 1 or len(runs[1]) > 1:
        (low_p, high_p), (low_w, high_w) = ((min(r), max(r)) for r in runs)
        spread = f"packed {low_p:,.0f}–{high_p:,.0f} MB, grouped {low_w:,.0f}–{high_w:,.0f} MB over {len(runs[0])} and {len(runs[1])} runs"
        if low_p <= high_w and low_w <= high_p:
            sentence += f"; the runs overlap ({spread}), so the peaks do not tell the two apart."
        else:
            sentence += f"; the runs do not overlap ({spread})."
    else:
        sentence += " (one run each)."
    tracing = (f"Tracing alone (one document's first pass) grew RSS by {packed['trace_mb']:,.0f} MB packed against "
               f"{whole['trace_mb']:,.0f} MB for the grouped graph ({_less_or_more(trace_gap)})")
    if trace_gap < 0 and whole["added_over_load_mb"] > 0:
        tracing += (f": a saving of {-trace_gap / whole['added_over_load_mb']:.0%} of what the grouped graph's pass adds "
                    "over the loaded model; the rest of that comes during the pass itself (working memory and outputs).")
    else:
        tracing += "."
    return f"{sentence} {tracing}"


def markdown(report: dict[str, Any]) -> str:
    modes = report["modes"]
    runtime = ", ".join(f"{name} {value}" for name, value in report["runtime"].items() if value is not None) or "defaults"
    lines = [f"# Memory of inference-only processes ({report['date']}{', quick' if report['quick'] else ''})", "",
             f"The IMDB model `make bench` trained (`{report['bundle']}`); {report['documents']:,} test documents for the "
             f"evaluations, {report['texts']:,} raw texts served ({REQUEST_TEXTS} per request); runtime "
             f"{runtime}; {report['machine']['cores']} cores. Each mode in its own fresh process; peak RSS is "
             "its `VmHWM`; *added over load* is its peak minus the `load` process's peak; *trace* is the RSS one "
             "document's first pass (graph tracing) added; docs/s is the timed pass after it."
             + (f" {report['repeats']} processes per mode: the run of the median peak is shown, with the range of the peaks."
                if report.get("repeats", 1) > 1 else ""), "",
             "| mode | what the process did | peak RSS MB | added over load MB | RSS at end MB | trace MB | docs/s | accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        row = modes[mode]
        added = f"{row['added_over_load_mb']:+,.0f}" if "added_over_load_mb" in row else "—"
        trace = f"{row['trace_mb']:,.0f}" if "trace_mb" in row else "—"
        speed = f"{row['docs_per_s']:,.0f}" if "docs_per_s" in row else "—"
        score = f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else "—"
        peaks = row.get("peak_rss_mb_runs", [row["peak_rss_mb"]])
        peak = f"{row['peak_rss_mb']:,.0f}" + (f" ({min(peaks):,.0f}–{max(peaks):,.0f})" if len(peaks) > 1 else "")
        lines.append(f"| {mode} | {DESCRIPTIONS[mode]} | {peak} | {added} | {row['rss_end_mb']:,.0f} | "
                     f"{trace} | {speed} | {score} |")
    check = report["agreement"]
    lines += ["", comparison(report), "",
              f"Sanity check: the two evaluations' accuracies {'agree' if check['passed'] else 'DISAGREE'} "
              f"({modes['evaluate_packed']['accuracy']:.6f} and {modes['evaluate_unpacked']['accuracy']:.6f}; "
              f"largest probability difference {check['max_probability_difference']:.2e})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="the model bundle (default: $HAN_ARTIFACTS_DIR/bench-imdb/train/bundle)")
    parser.add_argument("--prep", type=Path, default=None,
                        help="its preprocess output, with the test split (default: $HAN_ARTIFACTS_DIR/bench-imdb/preprocess)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="config whose runtime settings every process applies (default configs/imdb.yaml)")
    parser.add_argument("--documents", type=int, default=None,
                        help="test documents to score (default: all; --quick: 1,000); 0: all")
    parser.add_argument("--texts", type=int, default=None, help="raw texts to serve (default 2,000; --quick: 200)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help=f"documents per padded batch of the unpacked pass (default {DEFAULT_BATCH}, evaluate.batch_size)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="fresh processes per mode; the median peak's run is reported, every peak kept (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="1,000 documents, 200 texts, one run per mode: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for inference-memory-<date>.json and .md")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--probabilities", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.bundle = args.bundle or default_bundle()
    args.prep = args.prep or bench_prep()
    if args.child:
        print(RESULT_PREFIX + json.dumps(child(args.child, args)), flush=True)
        return 0

    missing = missing_inputs(args.bundle, args.prep)
    if missing:
        print(f"error: the trained IMDB model and its test split are missing ({', '.join(missing)}); "
              "run `make bench` first (or pass --bundle and --prep)", file=sys.stderr)
        return 2
    documents = args.documents if args.documents is not None else (1000 if args.quick else 0)
    texts = args.texts if args.texts is not None else (200 if args.quick else 2000)
    repeats = max(1, args.repeats if args.repeats is not None else (1 if args.quick else 3))

    from pipeline.config import load_config
    from pipeline.data.shards import load_split

    total = len(load_split(args.prep, "test"))
    runtime = load_config(args.config).resolved().runtime
    report: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "quick": args.quick, "machine": machine(),
        "bundle": shown(args.bundle), "prep": shown(args.prep), "documents": min(documents, total) if documents else total,
        "texts": texts, "repeats": repeats, "batch_size": args.batch_size, "request_texts": REQUEST_TEXTS,
        "runtime": {name: getattr(runtime, name) for name in ("intra_op_threads", "inter_op_threads", "malloc_arenas")},
        "modes": {}}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="han-inference-memory-") as scratch:
        for mode in MODES:
            saved = Path(scratch) / f"{mode}.npy" if mode in EVALUATIONS else None
            runs = []
            for attempt in range(repeats):
                log(f"inference memory: {mode}" + (f" (run {attempt + 1} of {repeats})" if repeats > 1 else ""))
                result = run_child(mode, args, documents, texts, saved, env)
                runs.append(result)
                speed = f", {result['docs_per_s']:,.0f} docs/s" if "docs_per_s" in result else ""
                log(f"inference memory: {mode} peak RSS {result['peak_rss_mb']:,.0f} MB, at the end {result['rss_end_mb']:,.0f} MB"
                    f" ({result['seconds']:.1f} s{speed})")
            # The run of the median peak stands for the mode (all its figures from one process); every peak is kept.
            result = sorted(runs, key=lambda run: run["peak_rss_mb"])[(len(runs) - 1) // 2]
            result["peak_rss_mb_runs"] = [run["peak_rss_mb"] for run in runs]
            report["modes"][mode] = result
            if mode not in ("import", "load"):
                result["added_over_load_mb"] = round(result["peak_rss_mb"] - report["modes"]["load"]["peak_rss_mb"], 1)
        import numpy as np

        packed, unpacked = (np.load(Path(scratch) / f"{mode}.npy") for mode in EVALUATIONS)
    gap = abs(report["modes"]["evaluate_packed"]["accuracy"] - report["modes"]["evaluate_unpacked"]["accuracy"])
    report["agreement"] = {"accuracy_difference": round(gap, 8), "passed": bool(gap <= AGREEMENT),
                           "max_probability_difference": float(np.max(np.abs(packed - unpacked))) if packed.size else 0.0}
    report["seconds"] = round(time.perf_counter() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"inference-memory-{report['date']}" + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    if not report["agreement"]["passed"]:
        log(f"inference memory: the packed and unpacked accuracies differ by {gap:.6f} (> {AGREEMENT}): not the same model run")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
