"""Our HAN with a setting changed, over seeds, as ``make bench`` trains and scores it: test accuracy (micro-F1 for
label sets) and the explain stage's faithfulness for every seed.

    python -m benchmarks.variants bbc none 42,1,2 model.sentence_encoder=none
    python -m benchmarks.variants reuters base 42

This reads the **test** split: it reports what a setting does across seeds, beside ``make bench``'s figures for
the dataset's config; choose settings with ``make sweep`` (validation only). Each seed gets its own artifacts
(``v-<dataset>-<tag>-s<seed>``) and the runs go to the MLflow experiment ``variants``. One line per seed
(``VARIANT <tag> {...}``), then ``SUMMARY <dataset> <tag> <metric> <mean> [per seed] [settings]``.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from benchmarks import compare


def variant_config(dataset: str, tag: str, seed: int, settings: list[str]):
    """``make bench``'s config of ``dataset`` and ``seed``, under its own name and MLflow experiment, with ``settings``."""
    own = [f"name=v-{dataset}-{tag}-s{seed}", "tracking.registered_model=v", "tracking.experiment=variants"]
    return compare.bench_config(dataset, False, None, [*own, *settings], seed)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
