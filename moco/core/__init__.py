"""The bottom layer: errors, torch.distributed helpers, precision and device choice, checkpoint files.

Nothing here imports any other part of ``moco``; everything else may import from here.
"""
