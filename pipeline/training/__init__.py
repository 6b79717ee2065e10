"""Training beyond the fit call: the optimizer and its schedule (``optimization``), checkpoints that survive
``kill -9`` (``checkpoints``), what happens between steps and epochs (``callbacks``) and several workers or devices
(``distribute``). The train stage (``pipeline.stages.train``) puts them together."""
