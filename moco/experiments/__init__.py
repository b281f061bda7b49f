"""Experiments that reproduce the paper's comparisons (``moco reproduce``)."""
