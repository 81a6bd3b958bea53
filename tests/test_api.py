"""The HTTP API on the real app, workers and projector (fakeredis and real Redis)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Backend
from tests.harness import System

BODY: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "GOOG",
    "params": {"fast": 10, "slow": 20},
    "start": "2005-01-01",
    "end": "2012-12-31",
    "cash": 10000,
    "commission": 0.002,
}


@pytest.fixture
def system(backend: Backend) -> System:
    return System(backend)


async def test_submit_run_and_read(system: System) -> None:
    async with system.client() as http:
        submitted = await http.post("/api/backtests", json=BODY)
        assert submitted.status_code == 202
        task_id = submitted.json()["task_id"]
        assert submitted.json() == {"task_id": task_id, "status": "queued"}
        queued = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
        assert queued["status"] == "queued" and queued["attempt"] == 0 and queued["progress"] == 0.0

        await system.run_workers()

        task = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
        assert task["status"] == "completed" and task["attempt"] == 1 and task["progress"] == 1.0
        assert task["worker"] == "w1" and task["error"] is None
        assert task["created_at"] <= task["started_at"] <= task["finished_at"]
        metrics = task["result"]["metrics"]
        assert metrics["num_trades"] > 0 and metrics["equity_final"] > 0
        history = (await http.get(f"/api/backtests/tasks/{task_id}/events")).json()["events"]
        assert [e["type"] for e in history] == ["submitted", "started", "completed"]
        assert [e["seq"] for e in history] == [1, 2, 3]
        assert history[0]["data"]["spec"]["params"] == {"fast": 10, "slow": 20}
        assert history[1]["data"]["worker"] == "w1" and history[1]["attempt"] == 1
        detail = (await http.get(f"/api/backtests/tasks/{task_id}/result")).json()
        # The summary carries the headline metrics; the full result has every metric.
        assert set(metrics) < set(detail["metrics"]) and metrics.items() <= detail["metrics"].items()
        assert len(detail["trades"]["entry_bar"]) == metrics["num_trades"]


async def test_symbol_is_stored_under_the_datasets_name_with_what_the_result_used(system: System) -> None:
    async with system.client() as http:
        body = {**BODY, "symbol": "goog", "start": "2005-01-03", "end": "2005-12-30"}
        task_id = (await http.post("/api/backtests", json=body)).json()["task_id"]
        history = (await http.get(f"/api/backtests/tasks/{task_id}/events")).json()["events"]
        assert history[0]["data"]["spec"]["symbol"] == "GOOG"
        assert (await http.get(f"/api/backtests/tasks/{task_id}")).json()["spec"]["symbol"] == "GOOG"
        raw = (await http.post("/api/backtests", json={**body, "adjusted": False})).json()["task_id"]

        await system.run_workers()

        data = (await http.get(f"/api/backtests/tasks/{task_id}")).json()["result"]["data"]
        assert data == {
            "symbol": "GOOG",
            "source": "bundled",
            "first_bar": "2005-01-03",
            "last_bar": "2005-12-30",
            "bars": 252,
            "adjusted": True,
            "not_adjusted_reason": None,
            "sha256": data["sha256"],
        }
        assert len(data["sha256"]) == 64
        assert (await http.get(f"/api/backtests/tasks/{task_id}/result")).json()["data"] == data
        unadjusted = (await http.get(f"/api/backtests/tasks/{raw}")).json()["result"]["data"]
        assert unadjusted["adjusted"] is False and unadjusted["not_adjusted_reason"] == "not_requested"
        assert unadjusted["sha256"] != data["sha256"] and unadjusted["bars"] == 252
        # The same request on the same data: the same bars, the same digest.
        again = (await http.post("/api/backtests", json=body)).json()["task_id"]
        await system.run_workers()
        assert (await http.get(f"/api/backtests/tasks/{again}")).json()["result"]["data"] == data


async def test_idempotency_key(system: System, backend: Backend) -> None:
    async with system.client() as http:
        headers = {"Idempotency-Key": "run-42"}
        first = await http.post("/api/backtests", json=BODY, headers=headers)
        again = await http.post("/api/backtests", json=BODY, headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.json()["task_id"] == first.json()["task_id"]
        other = await http.post("/api/backtests", json={**BODY, "cash": 5000}, headers=headers)
        assert other.status_code == 409
        assert other.json()["fields"][0]["field"] == "Idempotency-Key"
    assert await backend.redis.xlen(backend.keys.events) == 1


BAD_BODIES = [
    (b"{not json", 400, None),
    (b'["a list"]', 422, None),
    ({**BODY, "colour": "red"}, 422, "colour"),
    ({**BODY, "cash": "lots"}, 422, "cash"),
    ({k: v for k, v in BODY.items() if k != "strategy"}, 422, "strategy"),
    ({**BODY, "strategy": "astrology"}, 422, "strategy"),
    ({**BODY, "symbol": "NOPE"}, 422, "symbol"),
    # Symbols are plain ASCII, without spaces: "ı".upper() is "I" in Python, yet ıbm is not IBM.
    ({**BODY, "symbol": "  IBM  "}, 422, "symbol"),
    ({**BODY, "symbol": "ıbm"}, 422, "symbol"),
    ({**BODY, "symbol": "GOOG\n"}, 422, "symbol"),
    # A range beyond the data is refused, not clipped to it.
    ({**BODY, "start": "1990-01-01"}, 422, "start"),
    ({**BODY, "end": "2020-01-01"}, 422, "end"),
    ({**BODY, "start": "2014-01-01", "end": "2015-01-01"}, 422, "start"),
    ({**BODY, "adjusted": "yes"}, 422, "adjusted"),
    ({**BODY, "params": {"fast": 20, "slow": 10}}, 422, "params"),
    ({**BODY, "params": {"fast": "ten", "slow": 20}}, 422, "params.fast"),
    ({**BODY, "start": "2012-01-01", "end": "2011-01-01"}, 422, "end"),
    ({**BODY, "start": "2012-02-30"}, 422, "start"),
    ({**BODY, "cash": -5}, 422, "cash"),
    ({**BODY, "commission": -0.1}, 422, "commission"),
    # Integers beyond any float: exact in JSON and Python, but nothing can compute with them.
    ({**BODY, "cash": 10**400}, 422, "cash"),
    ({**BODY, "params": {"fast": 10**400, "slow": 20}}, 422, "params.fast"),
    ({**BODY, "params": {"fast": [5, 10**400], "slow": 20}}, 422, "params.fast[1]"),
    # Numbers beyond float64 (1e309 would be inf): refused as the field, never a 500.
    (b'{"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 1e309, "slow": 20}}', 422, "params.fast"),
    (b'{"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": -1e999}}', 422, "params.slow"),
    (b'{"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": [5, 1e309], "slow": 20}}', 422, "params.fast[1]"),
    (b'{"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}, "cash": 1e309}', 422, "cash"),
    (
        b'{"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}, "timeout_s": 1e309}',
        422,
        "timeout_s",
    ),
    # Money beyond what float64 resolves to a cent (2^46), which also buys more units than int64 holds.
    ({**BODY, "cash": 1e25}, 422, "cash"),
    ({**BODY, "cash": 1e308}, 422, "cash"),
    ({**BODY, "commission_fixed": 1e300}, 422, "commission_fixed"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_BODIES)
async def test_bad_input_is_refused_naming_the_field(
    system: System, backend: Backend, body: Any, status: int, field: str | None
) -> None:
    async with system.client() as http:
        kept = (await http.post("/api/backtests", json=BODY)).json()["task_id"]
        before = await backend.redis.xlen(backend.keys.events)
        if isinstance(body, bytes):
            reply = await http.post("/api/backtests", content=body, headers={"content-type": "application/json"})
        else:
            reply = await http.post("/api/backtests", json=body)
        assert reply.status_code == status, reply.text
        problem = reply.json()
        assert problem["error"] and problem["message"]
        if field is not None:
            assert any(f["field"] == field or (f["field"] or "").startswith(field + ".") for f in problem["fields"]), (
                problem
            )
        assert await backend.redis.xlen(backend.keys.events) == before
        assert (await http.get(f"/api/backtests/tasks/{kept}")).json()["status"] == "queued"


async def test_dead_letters_before_the_first_possible_id(system: System, backend: Backend) -> None:
    async with system.client() as http:
        # Nothing is older than 0-0, and Redis refuses a range that ends below it.
        reply = await http.get("/api/dead-letters?before=0-0")
        assert reply.status_code == 200 and reply.json() == {"dead_letters": []}
        assert (await http.get("/api/dead-letters?before=soon")).json()["fields"][0]["field"] == "before"


async def test_oversized_body_and_bad_ids(system: System, backend: Backend) -> None:
    async with system.client() as http:
        huge = {**BODY, "constraint": "x" * 100_000}
        reply = await http.post("/api/backtests", json=huge)
        assert reply.status_code == 413 and reply.json()["error"] == "body_too_large"
        # An id that is not a UUID names no task: the same 404 as an unknown UUID, on every route.
        for method, path in (
            ("GET", ""),
            ("DELETE", ""),
            ("GET", "/events"),
            ("GET", "/result"),
            ("POST", "/retry"),
            ("GET", "/stream"),
        ):
            reply = await http.request(method, f"/api/backtests/tasks/not-a-uuid{path}")
            assert reply.status_code == 404, (method, path)
            assert reply.json()["error"] == "task_not_found" and reply.json()["fields"][0]["field"] == "task_id"
            assert "UUID" in reply.json()["message"]
        for path in ("", "/events", "/result"):
            reply = await http.get(f"/api/backtests/tasks/{uuid.uuid4()}{path}")
            assert reply.status_code == 404 and reply.json()["fields"][0]["field"] == "task_id"
        for query, field in (
            ("status=sleeping", "status"),
            ("limit=0", "limit"),
            ("limit=x", "limit"),
            ("cursor=zzz", "cursor"),
            ("colour=1", "colour"),
        ):
            reply = await http.get(f"/api/backtests/tasks?{query}")
            assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == field
    assert await backend.redis.xlen(backend.keys.events) == 0


async def test_list_newest_first_with_pagination_and_status(system: System) -> None:
    async with system.client() as http:
        ids = [(await http.post("/api/backtests", json=BODY)).json()["task_id"] for _ in range(5)]
        await http.delete(f"/api/backtests/tasks/{ids[1]}")
        await system.project()
        seen, cursor = [], None
        while True:
            query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
            page = (await http.get(f"/api/backtests/tasks?{query}")).json()
            seen += [t["task_id"] for t in page["tasks"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]
        cancelled = (await http.get("/api/backtests/tasks?status=cancelled")).json()["tasks"]
        assert [t["task_id"] for t in cancelled] == [ids[1]]
        queued = (await http.get("/api/backtests/tasks?status=queued")).json()["tasks"]
        assert [t["task_id"] for t in queued] == [i for i in ids[::-1] if i != ids[1]]


FILTER_BODIES = [
    {**BODY, "symbol": symbol, "strategy": strategy, "params": {} if strategy == "buy_and_hold" else BODY["params"]}
    for symbol in ("GOOG", "IBM", "AAPL")
    for strategy in ("sma_cross", "buy_and_hold")
] * 3
FILTERS = (
    ({"symbol": "ibm"}, lambda b: b["symbol"] == "IBM"),
    ({"strategy": "buy_and_hold"}, lambda b: b["strategy"] == "buy_and_hold"),
    (
        {"symbol": "AAPL", "strategy": "sma_cross", "status": "queued"},
        lambda b: b["symbol"] == "AAPL" and b["strategy"] == "sma_cross",
    ),
    ({"symbol": "MSFT"}, lambda b: False),
)


async def test_list_filters_by_symbol_and_strategy(system: System) -> None:
    async with system.client() as http:
        ids = [(await http.post("/api/backtests", json=body)).json()["task_id"] for body in FILTER_BODIES]
        await system.project()
        for query, match in FILTERS:
            wanted = [i for i, b in zip(ids, FILTER_BODIES, strict=True) if match(b)]
            seen, cursor = [], None
            while True:
                params = {**query, "limit": "2", **({"cursor": cursor} if cursor else {})}
                page = (await http.get("/api/backtests/tasks", params=params)).json()
                assert len(page["tasks"]) <= 2
                seen += [t["task_id"] for t in page["tasks"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == wanted[::-1], query
        for query, field in (("symbol=", "symbol"), ("strategy=" + "x" * 101, "strategy")):
            reply = await http.get(f"/api/backtests/tasks?{query}")
            assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == field


async def test_filtered_list_stops_at_its_scan_bound_with_an_exact_cursor(system: System) -> None:
    async with system.client() as http:
        ids = [(await http.post("/api/backtests", json=body)).json()["task_id"] for body in FILTER_BODIES]
    await system.project()
    for query, match in FILTERS:
        wanted = [i for i, b in zip(ids, FILTER_BODIES, strict=True) if match(b)]
        seen, cursor, pages = list[str](), None, 0
        while True:
            tasks, cursor = await system.projection.list_tasks(
                status=query.get("status"),
                limit=2,
                cursor=cursor,
                symbol=query.get("symbol"),
                strategy=query.get("strategy"),
                scan=7,
                batch=3,
            )
            pages += 1
            seen += [t.task_id for t in tasks]
            if cursor is None:
                break
        assert seen == wanted[::-1], query
        # Each call reads at most 7 members, so walking 18 tasks takes at least 3 calls.
        assert pages >= 3


async def test_healthz_and_datasets(system: System) -> None:
    async with system.client() as http:
        assert (await http.get("/healthz")).status_code == 200
        datasets = (await http.get("/api/datasets")).json()["datasets"]
        symbols = {d["symbol"] for d in datasets}
        assert {"AAPL", "GOOG", "IBM", "MSFT", "FB"} <= symbols
        aapl = next(d for d in datasets if d["symbol"] == "AAPL")
        assert aapl == {
            "symbol": "AAPL",
            "start": "2000-03-01",
            "end": "2013-03-01",
            "rows": 3270,
            "source": "bundled",
            "adjustable": True,
        }


async def test_data_that_cannot_be_read_now_is_a_503_to_retry(backend: Backend, tmp_path: Any) -> None:
    # The engine's DataUnavailable is the core's (orchestrator.domain.errors), which the API maps
    # to 503 without importing the engine.
    system = System(backend, data_dir=str(tmp_path / "unmounted"))
    spec = {"strategy": "sma_cross", "symbol": "NOTBUNDLED", "params": {"fast": 10, "slow": 20}}
    async with system.client() as http:
        reply = await http.post("/api/backtests", json=spec)
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "2", reply.text
        body = reply.json()
        assert body["error"] == "data_unavailable" and body["fields"][0]["field"] == "symbol"
        assert "unmounted" in body["message"] and await backend.redis.xlen(backend.keys.events) == 0
