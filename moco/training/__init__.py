"""Pretraining: set-up (``run``), the state a checkpoint holds (``checkpoint``), one step and one epoch
(``loop``), and ``pretrain`` wiring them together; ``logging`` writes metrics and curves."""
