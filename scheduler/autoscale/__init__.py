"""Autoscaling decisions with Kubernetes' HorizontalPodAutoscaler rules, as pure functions of plain values.

The public API (docs/autoscaling.md has the rules and the JSON format):

* ``hpa.decide(inp: DecisionInput, now: float = 0.0) -> Decision`` — one decision for one service:
  ``desired_replicas`` (or ``error``), every metric's ``MetricResult``, the rules that limited it
  (``limited_by``) and a ``reason`` in plain words. ``now`` is on the clock of the history's times.
* ``hpa.record_decision(history, inp, decision, *, now=0.0, applied=True) -> History`` — the service's
  history after acting on a decision (recommendation added, scale event recorded, old entries pruned).
* ``hpa`` also exports the input values: ``DecisionInput``, ``ResourceMetric`` (cpu/memory),
  ``ReplicaAverageMetric``, ``ValueMetric``, ``AverageValueMetric``, ``ReplicaSample``, ``Tolerance``,
  ``Behavior`` (``scale_up_rules``/``scale_down_rules`` fill Kubernetes' defaults), ``History``, and
  ``InvalidInput`` (an ``InvalidArgument`` naming the field).
* ``replay.replay(text) -> str`` — ``shoal autoscale replay FILE``; ``replay.load_input``,
  ``replay.render_decision``, ``replay.render_input`` (to record a decision's input), ``ReplayError``.

Modules: ``inputs`` (the values), ``calculator`` (one metric's proposal), ``behavior`` (stabilization,
rate policies, min/max), ``history`` (the history's update), ``explain`` (reasons), ``integers``
(Kubernetes' int32/int64 arithmetic), ``hpa`` (the decision), ``replay`` (JSON). Nothing here does I/O,
reads a clock or imports protobuf.
"""
