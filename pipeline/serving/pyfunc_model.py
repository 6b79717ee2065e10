"""Models-from-code entry of the raw-text pyfunc model.

``pipeline.serving.bundle.log_raw_text_model`` logs this file instead of a pickled object; MLflow runs
it when the model is loaded, so loading executes this project's code, never unpickled bytes.
"""

import mlflow

from pipeline.serving.bundle import HANTextModel

mlflow.models.set_model(HANTextModel())
