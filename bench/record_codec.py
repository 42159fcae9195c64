"""What a replica record costs to encode and decode: the scheduler's codec (``scheduler.store.records``:
generated encoders and decoders around ``orjson``) beside the standard library's ``json`` on the same
records, in the same process.

The leader encodes every record it writes (two a replica at least while placing) and every follower
decodes every record it did not write itself (a standby all of them): docs/scaling.md, part 35. Rows, per
replica, the median of ``--rounds`` rounds over ``--n`` replicas as ``bench/scale.py`` writes them (a
host, a placement decision; ``--decisions`` of them, as a replica that has run a while holds more):

* ``encode: json`` — the generic encoder member by member, then ``json`` (compact, UTF-8, no NaN): how
  records were encoded before part 35, the same bytes;
* ``encode: records.encode`` — the scheduler's encoder;
* ``decode: json`` — ``json.loads``, then the generated decoder (as before part 35);
* ``decode: records.decode`` — the scheduler's decoder;
* ``parse only: json`` / ``parse only: orjson`` — the bytes into Python objects, nothing else.

``python bench/record_codec.py [--n 20000] [--rounds 5] [--decisions 1] [--out FILE]``; prints a table,
writes JSON (under ``bench/results/``, gitignored, by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale import sample_replicas
from scheduler import model
from scheduler.store import records

_STDLIB = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def stdlib_encode(record: model.Replica) -> bytes:
    body = records._codec(model.Replica).encode(record)
    return _STDLIB.encode({"v": records.FORMAT_VERSION, **body}).encode()


def stdlib_decode(data: bytes) -> model.Replica:
    replica: model.Replica = records._codec(model.Replica).fast(json.loads(data), {"revision": 1})
    return replica


def per_item_us(run: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--decisions", type=int, default=1, help="decisions each replica holds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    replicas = sample_replicas(args.n)
    if args.decisions > 1:
        replicas = [dataclasses.replace(r, decisions=r.decisions * args.decisions) for r in replicas]
    stored = [records.encode(r) for r in replicas]
    if stored != [stdlib_encode(r) for r in replicas]:
        raise SystemExit("record_codec: the two encoders wrote different bytes")
    rows: dict[str, Callable[[], object]] = {
        "encode: json": lambda: [stdlib_encode(r) for r in replicas],
        "encode: records.encode": lambda: [records.encode(r) for r in replicas],
        "decode: json": lambda: [stdlib_decode(b) for b in stored],
        "decode: records.decode": lambda: [records.decode(model.Replica, b, revision=1) for b in stored],
        "parse only: json": lambda: [json.loads(b) for b in stored],
        "parse only: orjson": lambda: [orjson.loads(b) for b in stored],
    }
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for i in range(args.rounds):
        order = list(rows) if i % 2 == 0 else list(reversed(rows))  # neither side always first
        for name in order:
            samples[name].append(per_item_us(rows[name], args.n))
    result: dict[str, Any] = {
        "n": args.n, "rounds": args.rounds, "decisions": args.decisions,
        "record_bytes": round(statistics.mean(len(b) for b in stored)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "orjson": orjson.__version__},
        "us_per_record": {name: round(statistics.median(v), 2) for name, v in samples.items()},
    }
    print(f"{args.n} replicas of {result['record_bytes']} bytes, median of {args.rounds} rounds (µs each):")
    for name, us in result["us_per_record"].items():
        print(f"  {name:26s} {us:8.2f}")
    out = args.out or Path(__file__).resolve().parent / "results" / f"record-codec-{args.decisions}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
