"""Elastic hosts: the scheduler asks a provider for hosts when replicas lack room, and drains and gives
back hosts that are underused (docs/elastic-hosts.md).

The decision is a pure step (``step.step``: host groups, their statuses and the cluster → new statuses,
hosts to drain, hosts to forget), built from ``shape`` (a group's members and what a new host offers),
``scale_out`` (which pending replicas want hosts, simulated placement on hypothetical hosts, the request),
``scale_in`` (underused timers, candidates, drain → release → forget) and ``decisions`` (the bounded
decision log and its words). None of these does I/O, reads a clock or touches the store; an
import-linter contract keeps it so. ``provider`` (delivering requests to the webhook and command) and
``loop`` (the leader's loop that gathers the inputs, commits the plan and delivers) do the I/O.
"""
