"""Block and layer pruning: remove whole residual branches (the ``f`` in ``x + f(x)``) and identity-shaped layers.

``residuals`` finds the branches in the traced graph, ``candidates`` turns them (and, on request,
layers whose output has their input's shape) into removable units, ``scoring`` ranks them,
``surgery`` removes them and checks the result, ``stage`` runs the ``prune_blocks`` step.
"""
