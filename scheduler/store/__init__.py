"""The scheduler's state in etcd: the key schema (``keys``), the stored JSON (``records``), the ``Store``
interface (``base``) with its etcd and in-memory implementations (``etcd``, ``memory``), and ``open_store``
choosing between them from the ``--etcd`` flag.

Only ``scheduler.store.etcd`` talks to etcd; everything above it works on ``Store``.
"""
