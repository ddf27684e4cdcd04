"""Closing the loop: fine-tune a store model on reviewed cases and prove it before it serves.

* :mod:`.dataset`: a training export (MONAI datalist) on the network's grid, with its content hash.
* :mod:`.network`: a stored network as a trainable torch module, and back.
* :mod:`.loop`: the deterministic fine-tuning loop (MONAI DiceCE, Adam, validation Dice, early stop).
* :mod:`.provenance`: ``training.json`` of a fine-tuned version.
* :mod:`.service`: ``radloop train`` (a new immutable version in the store).
* :mod:`.evaluate`: ``radloop models compare`` (per-case Dice, bootstrap intervals, paired difference).

Stages (shadow, production, retired) live with the store: :mod:`radloop.inference.stages`.
"""
