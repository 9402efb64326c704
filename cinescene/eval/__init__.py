"""Evaluation: the metric library (:mod:`.metrics`), held-out samples (:mod:`.samples`),
the `cinescene eval` run across ranks (:mod:`.runner`), its reports (:mod:`.report`),
and the metric pipeline's floor on ground truth (:mod:`.floor`, ``python -m cinescene.eval.floor``).
"""
