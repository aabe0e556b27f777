"""Sparsity regularisation: training with a penalty that drives what should be removed toward zero.

``penalties`` holds the penalties as functions of a module's weights (``l1_bn``, ``group_lasso``,
``l1``, ``l2``), ``stage`` runs a ``regularize`` step on a run, ``report`` summarises the
penalised quantity before and after (report.json entry, markdown section, histogram plot).
"""
