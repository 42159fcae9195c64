"""The supervisor: two small single-threaded processes per agent root that parent every container.

The daemon (asyncio, gRPC threads, large heap) must never fork, and containers must outlive it. So a
separate process tree does that work, and it is split in two so that no single process is a point of
failure for the containers::

    keeper   (python -m agent.runtime.supervisor; holds the root's pidfile lock; the only child subreaper)
      ├─ worker   (python -m agent.runtime.supervisor.worker; serves supervisor.sock, launches,
      │            pumps logs, writes run.json)
      └─ container inits (re-parented to the keeper when the launcher's intermediate exits)

* ``keeper.py`` — tiny and without a protocol of its own beyond ``channel.py``: reaps every child,
  keeps custody (``custody.py``) of each container's pidfd and a duplicate of its log-pipe read ends,
  forwards exit statuses to the worker, and restarts the worker when it dies, handing everything over.
* ``worker.py`` — the JSON-lines server the agent talks to (``agent.runtime.supervisor_client``).
  A new worker rebuilds its table from the keeper's handover (``adoption.py``).
* ``exitstatus.py`` — how a worker learns the exit status of a container nobody it trusts parents
  any more (after the keeper died), through the container's pidfd.

This package's ``__init__`` stays empty but for file names: the keeper imports it, and every module the
keeper imports is paid for in memory on every host.
"""

SOCKET_NAME = "supervisor.sock"
PIDFILE_NAME = "supervisor.pid"
LOCK_NAME = "supervisor.lock"
LOG_NAME = "supervisor.log"
