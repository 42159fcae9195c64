"""The cluster demo behind ``scripts/demo.sh``: a whole Shoal cluster on one machine, narrated and measured.

``python -m scripts.demo`` (run as root from the repository root, with the project's venv) builds, in
network namespaces it creates and under a temporary directory: a 3-member etcd cluster and two schedulers
on a control host, ``--hosts`` agent hosts in zones ``a``, ``b``, ``c``, ... (each its own namespace,
bridge and subnet), a client host running a load generator, a real Prometheus discovering agents and
replicas through the schedulers' ``/http_sd``, and a host provider that starts new hosts when the
elastic-hosts webhook asks. Then it tells the story in ``story.py``, measuring each step and failing
loudly when a step's expectation is not met, draws the timeline, and removes everything.

Modules: ``cluster`` (the processes and namespaces), ``machines`` (the provider's new hosts), ``load``
(the load generator), ``timeline`` (samples and the plot), ``view`` (narration and the live view),
``story`` (the steps), ``leftovers`` (checking the machine is as it was), ``__main__`` (flags, signals).
"""
