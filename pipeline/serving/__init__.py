"""A trained model as people use it.

``bundle`` is the one model artifact (the Keras model with its vocabulary, labels, limits and thresholds) and the
raw-text classifier over it; ``pyfunc_model`` is its MLflow entry point, ``rest`` the HTTP app, ``serve`` the
command that starts it and ``predict`` the command line for a few texts.
"""
