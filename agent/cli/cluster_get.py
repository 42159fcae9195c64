"""``shoal get services|replicas|hosts|endpoints|schedulers|hostgroups [NAME] [-o wide|json|yaml] [-w]``.

A listing is one call; ``-w`` then follows the scheduler's Watch from the listing's revision, so no
change between the two is missed, and prints each object again when what it shows changes (a table row,
or its JSON/YAML). It keeps only the objects on screen, whatever the stream's length. A watch that
breaks is resumed from the last revision seen, on the next scheduler address if that one went away; when
the scheduler has compacted that revision away (OUT_OF_RANGE, ``shoal-error: RevisionCompacted``) the
listing is made again and the changes it shows are printed. Ctrl-C ends a watch with status 0.
Scheduler instances and host groups are listed only (they are not in the Watch): ``-w`` refuses them.
``-o yaml`` prints services and host groups as the service file documents ``apply -f`` takes back.
"""

from __future__ import annotations

import argparse
import sys

from agent.cli import cluster_output as out
from agent.cli.client import CliError
from agent.cli.output import table
from agent.cli.scheduler_client import Scheduler, describe_failure, is_unreachable, scheduler_errors
from agent.cli.transport import RpcFailure
from proto.scheduler.v1 import scheduler_lite as spb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

KIND_WORDS = {"services": "services", "service": "services", "svc": "services",
              "replicas": "replicas", "replica": "replicas",
              "hosts": "hosts", "host": "hosts", "nodes": "hosts", "node": "hosts",
              "endpoints": "endpoints", "endpoint": "endpoints", "ep": "endpoints",
              "schedulers": "schedulers", "scheduler": "schedulers",
              "hostgroups": "hostgroups", "hostgroup": "hostgroups", "hg": "hostgroups"}
COMPACTED = "RevisionCompacted"


class Kind:
    """How one kind of object is listed, keyed, filtered, printed and recognised in watch events."""

    def __init__(self, *, name: str, watch_kind: str, headers: list[str], wide: list[str],
                 row: Callable[..., list[str]], to_json: Callable[[Any], dict[str, Any]],
                 key: Callable[[Any], Any]) -> None:
        self.name, self.watch_kind = name, watch_kind
        self.headers, self.wide_headers = headers, wide
        self.row, self.to_json, self.key = row, to_json, key


SERVICES = Kind(name="services", watch_kind="service", headers=out.SERVICE_HEADERS, wide=out.SERVICE_WIDE,
                row=out.service_row, to_json=out.service_json, key=lambda s: s.spec.name)
REPLICAS = Kind(name="replicas", watch_kind="replica", headers=out.REPLICA_HEADERS, wide=out.REPLICA_WIDE,
                row=out.replica_row, to_json=out.replica_json, key=lambda r: r.id)
HOSTS = Kind(name="hosts", watch_kind="host", headers=out.HOST_HEADERS, wide=out.HOST_WIDE,
             row=out.host_row, to_json=out.host_json, key=lambda h: h.id)
ENDPOINTS = Kind(name="endpoints", watch_kind="endpoint", headers=out.ENDPOINT_HEADERS,
                 wide=out.ENDPOINT_WIDE, row=out.endpoint_row, to_json=out.endpoint_json,
                 key=lambda e: (e.service, e.replica, e.address))
SCHEDULERS = Kind(name="schedulers", watch_kind="", headers=out.SCHEDULER_HEADERS, wide=out.SCHEDULER_WIDE,
                  row=out.scheduler_row, to_json=out.scheduler_json, key=lambda s: s.id)
HOSTGROUPS = Kind(name="hostgroups", watch_kind="", headers=out.HOSTGROUP_HEADERS, wide=out.HOSTGROUP_WIDE,
                  row=out.hostgroup_row, to_json=out.hostgroup_json, key=lambda g: g.spec.name)
KINDS = {k.name: k for k in (SERVICES, REPLICAS, HOSTS, ENDPOINTS, SCHEDULERS, HOSTGROUPS)}
UNWATCHED = {SCHEDULERS.name: "scheduler instances", HOSTGROUPS.name: "host groups"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    get = sub.add_parser("get", help="list services, replicas, hosts, endpoints, scheduler instances or "
                                     "host groups")
    get.add_argument("kind", metavar="services|replicas|hosts|endpoints|schedulers|hostgroups")
    get.add_argument("name", nargs="?", default=None,
                     help="one service, replica id, host (id or name), scheduler instance id, host group, "
                          "or the endpoints of one service")
    get.add_argument("-o", "--output", choices=["wide", "json", "yaml"], default=None,
                     help="wide: more columns; json: an array of objects; yaml: for services and host "
                          "groups, service files that apply back")
    get.add_argument("-w", "--watch", action="store_true", help="after the listing, print changes as they "
                                                                "happen (Ctrl-C to stop)")
    get.add_argument("--service", default="", help="replicas of this service only")
    get.add_argument("--host", default="", help="replicas on this host only (id or name)")
    get.add_argument("--state", action="append", default=[], metavar="STATE",
                     help="replicas in this state only: pending, starting, running, failed, stopping "
                          "(repeatable)")
    get.set_defaults(func=cmd_get, cluster=True)


# -- fetching ----------------------------------------------------------------------------------------------

class Query:
    """What ``get`` asked for: a kind, maybe a name, and the replica filters."""

    def __init__(self, kind: Kind, name: str | None, *, service: str = "", host: str = "",
                 states: tuple[int, ...] = ()) -> None:
        self.kind, self.name = kind, name
        self.service, self.host, self.states = service, host, states

    def listing(self, scheduler: Scheduler) -> tuple[list[Any], int]:
        """Every matching object and the revision the listing reflects."""
        api = scheduler.api
        if self.kind is SERVICES:
            listing = api.ListServices(spb.ListServicesRequest())
            return [s for s in listing.services if self.matches(s)], listing.revision
        if self.kind is REPLICAS:
            replicas = api.ListReplicas(spb.ListReplicasRequest(service=self.service, host=self.host,
                                                                states=list(self.states)))
            return [r for r in replicas.replicas if self.matches(r)], replicas.revision
        if self.kind is HOSTS:
            hosts = api.ListHosts(spb.ListHostsRequest())
            return [h for h in hosts.hosts if self.matches(h)], hosts.revision
        if self.kind is SCHEDULERS:
            instances = api.ListSchedulers(spb.ListSchedulersRequest())
            return [s for s in instances.schedulers if self.matches(s)], instances.revision
        if self.kind is HOSTGROUPS:
            groups = api.ListHostGroups(spb.ListHostGroupsRequest())
            return [g for g in groups.hostgroups if self.matches(g)], groups.revision
        endpoints = api.ListEndpoints(spb.ListEndpointsRequest(service=self.name or ""))
        return list(endpoints.endpoints), endpoints.revision

    def get(self, scheduler: Scheduler) -> list[Any]:
        """The one named object (NOT_FOUND from the scheduler if there is none)."""
        api, name = scheduler.api, self.name or ""
        if self.kind is SERVICES:
            return [api.GetService(spb.GetServiceRequest(name=name))]
        if self.kind is REPLICAS:
            return [api.GetReplica(spb.GetReplicaRequest(id=name))]
        if self.kind is HOSTGROUPS:
            return [api.GetHostGroup(spb.GetHostGroupRequest(name=name))]
        return [api.GetHost(spb.GetHostRequest(host=name))]

    def fetch(self, scheduler: Scheduler) -> tuple[list[Any], int]:
        if self.kind is SCHEDULERS:
            if self.name:
                return [find_scheduler(scheduler, self.name)], 0
            return self.listing(scheduler)
        if self.name and self.kind is not ENDPOINTS:
            found = self.get(scheduler)
            self.name = self.kind.key(found[0])  # a prefix or a host name, resolved: watch by key
            return found, 0
        return self.listing(scheduler)

    def matches(self, obj: Any) -> bool:
        if self.kind is ENDPOINTS:
            return not self.name or obj.service == self.name
        if self.name and self.kind.key(obj) != self.name:
            return False
        if self.kind is REPLICAS:
            return ((not self.service or obj.service == self.service)
                    and (not self.host or self.host in (obj.host, obj.host_name))
                    and (not self.states or obj.state in self.states))
        return True

    def watch_request(self, after_revision: int) -> spb.WatchRequest:
        service = self.name if self.kind in (SERVICES, ENDPOINTS) and self.name else self.service
        return spb.WatchRequest(after_revision=after_revision, kinds=[self.kind.watch_kind],
                                service=service or "")

    def changes(self, event: spb.WatchEvent, known: dict[Any, Any]) -> list[tuple[Any, Any]]:
        """(key, object, or None when it is gone or no longer matches) for what ``event`` says about
        this query's objects. Endpoints come as a service's whole set, compared with the ``known`` one."""
        if self.kind is ENDPOINTS:
            fresh = [e for e in event.endpoints.endpoints if self.matches(e)] if event.type == "put" else []
            service = event.name or (fresh[0].service if fresh else "")
            keys = {self.kind.key(e) for e in fresh}
            gone = [(k, None) for k in known if k[0] == service and k not in keys]
            return gone + [(self.kind.key(e), e) for e in fresh]
        if event.type == "delete":
            return [(event.name, None)]
        if event.WhichOneof("object") != self.kind.watch_kind:
            return []
        obj = getattr(event, self.kind.watch_kind)
        return [(self.kind.key(obj), obj if self.matches(obj) else None)]


def find_scheduler(scheduler: Scheduler, ref: str) -> Any:
    """The instance whose id is ``ref``, or the only one whose id starts with it."""
    instances = list(scheduler.api.ListSchedulers(spb.ListSchedulersRequest()).schedulers)
    exact = [s for s in instances if s.id == ref]
    found = exact or [s for s in instances if s.id.startswith(ref)]
    if len(found) == 1:
        return found[0]
    if not found:
        known = ", ".join(s.id for s in instances) or "none"
        raise CliError(f"no scheduler instance {ref!r} (running: {known})")
    raise CliError(f"scheduler instance {ref!r} is ambiguous: {', '.join(s.id for s in found)}")


def _query(args: argparse.Namespace) -> Query:
    name = KIND_WORDS.get(args.kind)
    if name is None:
        raise CliError(f"unknown kind {args.kind!r}: use services, replicas, hosts, endpoints, schedulers or "
                       "hostgroups")
    kind = KINDS[name]
    states: list[int] = []
    for word in args.state:
        for part in word.split(","):
            if part not in out.REPLICA_STATE_VALUES:
                raise CliError(f"unknown replica state {part!r}: use "
                               f"{', '.join(out.REPLICA_STATE_VALUES)}")
            states.append(out.REPLICA_STATE_VALUES[part])
    if kind is not REPLICAS and (args.service or args.host or states):
        raise CliError("--service, --host and --state filter replicas only")
    return Query(kind, args.name, service=args.service, host=args.host, states=tuple(states))


# -- printing ----------------------------------------------------------------------------------------------

class Printer:
    """Prints objects in the chosen format; in a watch, each change as it comes."""

    def __init__(self, kind: Kind, output: str | None, *, watching: bool) -> None:
        self.kind, self.output, self.watching = kind, output, watching
        self.wide = output == "wide"
        self.headers = kind.headers + (kind.wide_headers if self.wide else [])
        self.widths = [len(h) for h in self.headers]

    def listing(self, objects: list[Any]) -> None:
        if self.output == "json":
            import json

            if self.watching:  # JSON Lines: one object per line, then one per change
                for obj in objects:
                    print(json.dumps(self.kind.to_json(obj), ensure_ascii=False))
            else:
                print(json.dumps([self.kind.to_json(o) for o in objects], indent=2, ensure_ascii=False))
        elif self.output == "yaml":
            self._yaml(objects)
        else:
            rows = [self.kind.row(o, wide=self.wide) for o in objects]
            if not rows and not self.watching:
                print(f"No {self.kind.name} found.", file=sys.stderr)
                return
            for row in rows:
                self.widths = [max(w, len(c)) for w, c in zip(self.widths, row, strict=True)]
            print(table(self.headers, rows) if rows else self._line(self.headers))
        sys.stdout.flush()

    def changed(self, obj: Any) -> None:
        if self.output == "json":
            import json

            print(json.dumps(self.kind.to_json(obj), ensure_ascii=False))
        elif self.output == "yaml":
            self._yaml([obj])
        else:
            print(self._line(self.kind.row(obj, wide=self.wide)))
        sys.stdout.flush()

    def deleted(self, key: Any, last: Any) -> None:
        if self.output in ("json", "yaml"):
            name = key if isinstance(key, str) else "/".join(key)
            gone = {**self.kind.to_json(last), "deleted": True} if last is not None else \
                {"name": name, "deleted": True}
            if self.output == "json":
                import json

                print(json.dumps(gone, ensure_ascii=False))
            else:
                print("---\n" + _yaml_dump(gone), end="")
        elif last is not None:
            print(self._line(self.kind.row(last, wide=self.wide)) + "   (deleted)")
        sys.stdout.flush()

    def signature(self, obj: Any) -> list[str]:
        """What a change must alter to be printed: the wide row without its age (which changes by
        itself; and a host's heartbeat changes nothing a person would look at)."""
        row = self.kind.row(obj, wide=True)
        headers = self.kind.headers + self.kind.wide_headers
        return [cell for cell, header in zip(row, headers, strict=True) if header != "AGE"]

    def _line(self, cells: list[str]) -> str:
        self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
        return "   ".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=True)).rstrip()

    def _yaml(self, objects: list[Any]) -> None:
        if self.kind is HOSTGROUPS:  # the scheduler renders the document (spec_yaml)
            for i, group in enumerate(objects):
                separate = self.watching or i > 0 or len(objects) > 1
                print(("---\n" if separate else "") + group.spec_yaml, end="")
            return
        if self.kind is SERVICES:
            from agent.cli.servicefile import dump_documents, file_dict_from_api
            from agent.protolite import to_dict

            documents = [file_dict_from_api(to_dict(s.spec)) for s in objects]
            if documents:
                text = dump_documents(documents)
                print(text if text.startswith("---") or not self.watching else "---\n" + text, end="")
            return
        dicts = [self.kind.to_json(o) for o in objects]
        if self.watching:
            for d in dicts:
                print("---\n" + _yaml_dump(d), end="")
        else:
            print(_yaml_dump(dicts), end="")


def _yaml_dump(data: Any) -> str:
    import yaml

    dumped: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return dumped


# -- the verb ----------------------------------------------------------------------------------------------

def cmd_get(scheduler: Scheduler, args: argparse.Namespace) -> int:
    query = _query(args)
    if query.kind.name in UNWATCHED and args.watch:
        raise CliError(f"{UNWATCHED[query.kind.name]} cannot be watched: run shoal get {query.kind.name} "
                       "again")
    printer = Printer(query.kind, args.output, watching=args.watch)
    with scheduler_errors(scheduler.conn):
        objects, revision = query.fetch(scheduler)
        if args.watch and not revision:
            objects, revision = query.listing(scheduler)  # a named get has no listing revision to watch from
        printer.listing(objects)
        if not args.watch:
            return 0
        try:
            watch(scheduler, query, printer, objects, revision)
        except KeyboardInterrupt:
            return 0
    return 0


def watch(scheduler: Scheduler, query: Query, printer: Printer, objects: list[Any], revision: int) -> None:
    """Print changes after ``revision`` until interrupted (or until every address failed in a row)."""
    known: dict[Any, Any] = {query.kind.key(o): o for o in objects}
    shown: dict[Any, list[str]] = {k: printer.signature(o) for k, o in known.items()}
    failures = 0
    while True:
        stream = scheduler.api.Watch(query.watch_request(revision))
        try:
            for event in stream:
                failures = 0
                revision = max(revision, event.revision)
                for key, obj in query.changes(event, known):
                    _apply(printer, known, shown, key, obj)
        except RpcFailure as err:
            if err.metadata.get("shoal-error") == COMPACTED:
                fresh, revision = query.listing(scheduler)
                _relisted(printer, query.kind, known, shown, fresh)
                continue
            if not is_unreachable(err):
                raise
            failures += 1
            if failures >= len(scheduler.conn.addresses):
                raise CliError(f"the watch ended: {describe_failure(err, scheduler.conn)}") from None
            scheduler.conn.give_up_on_current()
            continue
        # The scheduler ended the stream (shutting down, say): resume, from the next address.
        failures += 1
        if failures >= len(scheduler.conn.addresses) + 1:
            raise CliError("the watch ended: the scheduler closed it")
        scheduler.conn.give_up_on_current()


def _apply(printer: Printer, known: dict[Any, Any], shown: dict[Any, list[str]], key: Any, obj: Any) -> None:
    if obj is None:
        if key in known:
            last = known.pop(key)
            shown.pop(key, None)
            printer.deleted(key, last)
        return
    signature = printer.signature(obj)
    known[key] = obj
    if shown.get(key) != signature:
        shown[key] = signature
        printer.changed(obj)


def _relisted(printer: Printer, kind: Kind, known: dict[Any, Any], shown: dict[Any, list[str]],
              fresh: list[Any]) -> None:
    """After a relist: what changed while the watch could not tell."""
    now = {kind.key(o): o for o in fresh}
    for key in [k for k in known if k not in now]:
        _apply(printer, known, shown, key, None)
    for key, obj in now.items():
        _apply(printer, known, shown, key, obj)


__all__ = ["HOSTGROUPS", "KINDS", "KIND_WORDS", "Printer", "Query", "add_parser", "cmd_get", "find_scheduler",
           "watch"]
