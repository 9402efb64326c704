"""Evaluation of generated videos (docs/EVAL.md).

- :mod:`.metrics`: the paper's metrics as functions on arrays, and a registry by name
- :mod:`.heldout`: which samples are held out from training, and the fixed subset drawn by seed
- :mod:`.evaluate`: one sample in, its video and metrics out (the CLI and the training hook share it)
- :mod:`.runner`: `cinescene eval` across ranks; :mod:`.report`: metrics.json, table.md, contact sheet
- :mod:`.floor`: the metric pipeline on ground truth (``python -m cinescene.eval.floor``)
"""
