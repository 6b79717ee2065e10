"""How a model is trained beyond one process: ``distribute`` sets up the tf.distribute strategy for several
workers or devices. The trainer itself is the train stage (``pipeline.stages.train``)."""
