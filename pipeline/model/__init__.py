"""The Hierarchical Attention Network and its parts.

``han`` assembles words -> BiGRU -> word attention -> sentence vectors -> BiGRU -> sentence attention -> classes
from ``attention`` (the score functions, masked exactly) and ``recurrent`` (the GRU cells); ``word2vec`` learns the
word vectors it starts from and ``optimizers`` holds the sparse-aware optimizers its training uses.
"""
