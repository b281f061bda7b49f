"""The tasks the trainer trains, one module each: ``pretrain`` (a contrastive method on unlabelled images),
``finetune`` (a classifier on labelled images) and ``detect`` (a detector on COCO annotations). Each supplies
its model's step, its data, its evaluation and its public function; :mod:`moco.training` does the rest."""
