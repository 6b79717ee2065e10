"""han-pipeline: a Hierarchical Attention Network pipeline (preprocess, train, evaluate, promote, explain)."""

from pipeline.runtime import quiet_tensorflow_start

# Before anything imports TensorFlow: its start-up noise goes to a log file, not the console.
quiet_tensorflow_start()
