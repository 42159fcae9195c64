"""A simulator of many Shoal hosts in few processes, for measuring the scheduler at scale.

Each simulated host (``bench.sim.host.SimHost``) answers the agent gRPC API the scheduler uses — list
(paged), watch events (sequence and epoch as the real agent's ``EventLog``), watch usage, get host,
create-and-start, stop, kill, remove — on a loopback port of its own, without running anything: a
container is a record that moves from created to running after a configurable start delay, emitting the
real agent's events; its ``WatchHost`` stream is made as wire bytes, as cheaply as it can be
(``bench.sim.watch_host``), since the simulator's cpu is taken from what it measures. It registers
through the real path (``agent.join.Joiner`` → ``RegisterHost``). A
process holds many hosts in one event loop (``bench.sim.fleet``); ``python -m bench.sim`` runs one such
process, controlled by lines on stdin (kill a host, bring it back). ``bench/scale.py`` drives it.
"""
