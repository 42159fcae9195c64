"""Instant PromQL queries for the autoscaler (Prometheus' HTTP API, ``GET /api/v1/query``).

The leader asks every query of every autoscaled service once per evaluation, concurrently, each with a
timeout shorter than the evaluation interval, so a slow Prometheus delays no decision past its tick.
A query gives either samples (``Sample``: the series' labels and its value; a scalar is one sample with
no labels) or an error a person can act on ("prometheus at http://…: query failed: parse error at char
5…"). Values that are not finite numbers (NaN, ±Inf: a rate over no data) are errors of that sample's
query too — HPA refuses them the same way. One client per leader term, closed with the term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

QUERY_TIMEOUT = 0.8  # seconds; under the default 1 s evaluation interval


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class QueryResult:
    samples: tuple[Sample, ...] = ()
    error: str = ""  # non-empty: no usable answer


class PrometheusClient:
    def __init__(self, url: str, *, timeout: float = QUERY_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def close(self) -> None:
        await self._client.aclose()

    async def query(self, promql: str, *, at: float | None = None) -> QueryResult:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        where = f"prometheus at {self.url}"
        try:
            response = await self._client.get(f"{self.url}/api/v1/query", params=params)
        except httpx.TimeoutException:
            return QueryResult(error=f"{where}: no answer within {self._client.timeout.read}s")
        except httpx.HTTPError as err:
            return QueryResult(error=f"{where}: {err}")
        except OSError as err:  # a TLS alert on the first read is a bare ssl.SSLError httpx leaves unwrapped
            return QueryResult(error=f"{where}: {err}")
        try:
            body = response.json()
        except ValueError:
            return QueryResult(error=f"{where}: HTTP {response.status_code}, not JSON")
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error", "") if isinstance(body, dict) else ""
            return QueryResult(error=f"{where}: query failed (HTTP {response.status_code}): {detail}")
        return parse_data(body.get("data"), where=where)


def parse_data(data: Any, *, where: str) -> QueryResult:
    """The ``data`` member of a successful answer: a vector or a scalar (a matrix is refused: the query
    must be instant, e.g. ``rate(x[30s])``, not ``x[30s]``)."""
    if not isinstance(data, dict):
        return QueryResult(error=f"{where}: answer without data")
    kind = data.get("resultType")
    result: Any = data.get("result")
    try:
        if kind == "scalar":
            return _finite((Sample({}, float(result[1])),), where)
        if kind == "vector":
            return _finite(tuple(Sample({str(k): str(v) for k, v in item.get("metric", {}).items()},
                                        float(item["value"][1])) for item in result), where)
    except (TypeError, ValueError, KeyError, IndexError) as err:
        return QueryResult(error=f"{where}: malformed {kind} ({err})")
    return QueryResult(error=f"{where}: the query returned a {kind}; an instant vector or scalar is needed")


def _finite(samples: tuple[Sample, ...], where: str) -> QueryResult:
    for sample in samples:
        if not math.isfinite(sample.value):
            return QueryResult(error=f"{where}: the query returned {sample.value} for {dict(sample.labels)}")
    return QueryResult(samples=samples)


__all__ = ["QUERY_TIMEOUT", "PrometheusClient", "QueryResult", "Sample", "parse_data"]
