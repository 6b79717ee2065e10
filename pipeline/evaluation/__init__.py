"""Scoring and explaining a trained model.

``metrics`` (accuracy, F1, thresholds, the TF-IDF baseline and the plots), ``faithfulness`` (do the attention
weights point at what the prediction depends on: comprehensiveness and sufficiency) and ``report`` (the HTML report).
"""
