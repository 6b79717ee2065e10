"""Our HAN with a setting changed, over seeds, as ``make bench`` trains and scores it: test accuracy (micro-F1 for
label sets) and the explain stage's faithfulness for every seed.

    python -m benchmarks.variants bbc none 42,1,2 model.sentence_encoder=none
    python -m benchmarks.variants reuters base 42

This reads the **test** split: it reports what a setting does across seeds, beside ``make bench``'s figures for
the dataset's config; choose settings with ``make sweep`` (validation only). Each seed gets its own artifacts
(``v-<dataset>-<tag>-s<seed>``) and the runs go to the MLflow experiment ``variants``. One line per seed
(``VARIANT <tag> {...}``), then ``SUMMARY <dataset> <tag> <metric> <mean> [per seed] [settings]``.

``--record FILE.json`` (first argument) adds the variant to that results file and rewrites its markdown beside it
(``FILE.md``): one row per variant with each seed's figure, the mean and the explanations' faithfulness.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks import compare


def variant_config(dataset: str, tag: str, seed: int, settings: list[str]):
    """``make bench``'s config of ``dataset`` and ``seed``, under its own name and MLflow experiment, with ``settings``."""
    own = [f"name=v-{dataset}-{tag}-s{seed}", "tracking.registered_model=v", "tracking.experiment=variants"]
    return compare.bench_config(dataset, False, None, [*own, *settings], seed)


def record(path: Path, dataset: str, tag: str, settings: list[str], results: list[dict]) -> None:
    """Add (or replace) ``dataset/tag`` in the results file ``path`` and rewrite its markdown."""
    data = json.loads(path.read_text()) if path.is_file() else {
        "what": "our HAN with settings changed on top of the dataset's config, over seeds, trained and scored as make "
                "bench does (benchmarks/variants.py); the test split: this reports, it does not choose",
        "variants": {}}
    data["variants"][f"{dataset}/{tag}"] = {
        "dataset": dataset, "settings": list(settings),
        "per_seed": [{key: r.get(key) for key in ("seed", "accuracy", "micro_f1", "macro_f1", "epochs", "faithfulness")
                      if key in r} for r in results]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(data))


def markdown(data: dict) -> str:
    from benchmarks.compare import mean_faithfulness

    lines = ["# Settings tried", "", data["what"] + ".", "",
             "| dataset | settings | metric per seed | mean | comprehensiveness k=2 | sufficiency k=1 / 2 / 3 (attention vs random) |",
             "|---|---|---|---|---|---|"]
    for variant in data["variants"].values():
        metric = "micro_f1" if variant["dataset"] in compare.MULTILABEL else "accuracy"
        seeds = variant["per_seed"]
        values = [r[metric] for r in seeds]
        per_seed = " / ".join(f"{v:.4f}" for v in values) + f" ({metric}; seeds " + ", ".join(str(r["seed"]) for r in seeds) + ")"
        settings = ", ".join(f"`{s}`" for s in variant["settings"]) or "(the config)"
        faith = mean_faithfulness([r["faithfulness"] for r in seeds]) if all("faithfulness" in r for r in seeds) else None
        ratio = f"{faith['comprehensiveness_ratio']['2']:.1f}x" if faith and faith["comprehensiveness_ratio"].get("2") else ""
        sufficiency = " / ".join(f"{faith['sufficiency']['attention'][k]:.3f} vs {faith['sufficiency']['random'][k]:.3f}"
                                 for k in ("1", "2", "3") if faith and faith["sufficiency"]["attention"].get(k) is not None)
        lines.append(f"| {variant['dataset']} | {settings} | {per_seed} | {np.mean(values):.4f} | {ratio} | {sufficiency} |")
    if data.get("notes"):  # how and when it ran, and what to compare with: written by hand into the JSON
        lines += ["", *data["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = None
    if len(args) >= 2 and args[0] == "--record":
        out, args = Path(args[1]), args[2:]
    if len(args) < 3 or args[0] not in compare.DATASETS:
        print(__doc__, file=sys.stderr)
        return 2
    dataset, tag, seeds, *settings = args
    from pipeline.runtime import apply_runtime
    from pipeline.stages import preprocess

    results = []
    for index, seed in enumerate(compare.parse_seeds(seeds)):
        config = variant_config(dataset, tag, seed, settings)
        if index == 0:
            apply_runtime(config.runtime)
        if dataset == "reuters":
            compare.reuters_jsonl(config)
        preprocess.run(config)
        limits = [] if dataset in compare.MULTILABEL else compare.limits_at_least_reference(config)  # as make bench
        if limits:
            config = variant_config(dataset, tag, seed, [*limits, *settings])
            preprocess.run(config)
        import keras

        keras.backend.clear_session(free_memory=True)
        result = {**compare.run_han(config, full=False), "seed": seed}
        results.append(result)
        print("VARIANT", tag, json.dumps(result), flush=True)
    metric = "micro_f1" if dataset in compare.MULTILABEL else "accuracy"
    values = [r[metric] for r in results]
    print("SUMMARY", dataset, tag, metric, round(float(np.mean(values)), 4), values, settings, flush=True)
    if out is not None:
        record(out, dataset, tag, settings, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
