"""The instant-query client against a stand-in HTTP transport (its answers are Prometheus' documented
JSON); a real Prometheus is used by the end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import ssl

import httpx

from scheduler.autoscale.prometheus import PrometheusClient, QueryResult, Sample


def answer(body: object, status: int = 200) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query" and request.url.params["query"] == "up"
        return httpx.Response(status, content=json.dumps(body).encode())
    return httpx.MockTransport(handler)


def ask(transport: httpx.AsyncBaseTransport) -> QueryResult:
    async def go() -> QueryResult:
        client = PrometheusClient("http://prom:9090/", transport=transport)
        try:
            return await client.query("up")
        finally:
            await client.close()
    return asyncio.run(go())


def test_a_vector_and_a_scalar() -> None:
    vector = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"replica": "web-1"}, "value": [1.5, "2.25"]}]}}
    assert ask(answer(vector)) == QueryResult(samples=(Sample({"replica": "web-1"}, 2.25),))
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.5, "7"]}}
    assert ask(answer(scalar)).samples == (Sample({}, 7.0),)


def test_errors_say_what_went_wrong() -> None:
    bad = {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}
    assert "parse error at char 3" in ask(answer(bad, 400)).error
    matrix = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    assert "instant vector or scalar is needed" in ask(answer(matrix)).error
    nan = {"status": "success",
           "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]}}
    assert "nan" in ask(answer(nan)).error

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)
    assert "connection refused" in ask(httpx.MockTransport(refuse)).error

    def alert(request: httpx.Request) -> httpx.Response:  # a TLS refusal on the first read, unwrapped
        raise ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    assert "CERTIFICATE_REQUIRED" in ask(httpx.MockTransport(alert)).error
