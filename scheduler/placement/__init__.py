"""Placement: which host each replica goes to, and why, as pure functions of plain values.

``view`` is what placement sees of the cluster (hosts, their accounting, replicas per host and per
topology domain); ``framework`` defines the filter and score plugin interfaces, the registry and the
profile; ``plugins/`` holds one module per plugin and ``registry`` the default set; ``batch.place``
places a batch of replicas in one pass and returns each decision with the verdict of every host;
``placer.ViewPlacer`` is the reconcile step's ``Placer`` on top of it; ``removal.rank_for_removal``
orders replicas for a scale-down. Nothing here does I/O or reads a clock:
the reconcile loop builds the view from what it read and acts on the decisions.
"""
