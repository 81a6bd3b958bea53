"""Bounds that no job system can pass on this machine, measured in the same run as the systems.

    python -m bench.bounds work <noop|sma> <tasks per process> <processes>
    python -m bench.bounds append <redis_url> <events> <per call>

`work`: the shared work function called in a loop by `processes` plain processes at once (no
queue, no Redis, no result kept). The tasks/s of every system with that many worker processes
is below this; a worker process cannot finish tasks faster than it can run their work.

`append`: one Python process appending Backstream's `submitted` events (real specs, encoded per
event as the store does) to a stream, `per call` events per round trip; once with redis-py's
pipelined XADD, once with one Lua call that XADDs them all (the events encoded ahead of time, so
the client's cost is the smallest it can be). These are the most events/s a single Python
producer can hand to Redis, whatever it does per task besides.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
import uuid
from typing import Any

from bench.work import noop, sma_spec, sma_work, warm_up


def _loop(kind: str, n: int, ready: Any, go: Any, out: Any) -> None:
    work = sma_work if kind == "sma" else noop
    warm_up()
    ready.release()
    go.wait()
    t0 = time.time()
    for _ in range(n):
        work()
    out.put((t0, time.time()))


def work_alone(kind: str, n: int, processes: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_loop, args=(kind, n, ready, go, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    go.set()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
    seconds = max(end for _, end in spans) - min(start for start, _ in spans)
    return {"tasks": n * processes, "seconds": seconds, "tasks_per_s": n * processes / seconds}


_APPEND_ALL = """
for i = 1, #ARGV, 6 do
  redis.call('XADD', KEYS[1], '*', 'type', ARGV[i], 'v', ARGV[i + 1], 'task_id', ARGV[i + 2],
             'seq', ARGV[i + 3], 'attempt', ARGV[i + 4], 'data', ARGV[i + 5])
end
return #ARGV / 6
"""


def append(redis_url: str, events: int, per_call: int) -> dict[str, Any]:
    import redis

    from orchestrator.domain.events import Submitted
    from tests.log_entries import entry_fields

    r = redis.Redis.from_url(redis_url)
    key = f"bench:bound:{uuid.uuid4().hex}"
    spec = sma_spec()

    def fields() -> dict[str, Any]:
        return entry_fields(Submitted(task_id=str(uuid.uuid4()), spec=spec))

    calls = max(1, events // per_call)
    try:
        pipe = r.pipeline(transaction=False)
        t0 = time.perf_counter()
        for _ in range(calls):
            for _ in range(per_call):
                pipe.xadd(key, fields())
            pipe.execute()
        pipelined = calls * per_call / (time.perf_counter() - t0)
        script = r.register_script(_APPEND_ALL)
        batch = [value for _ in range(per_call) for value in fields().values()]
        t0 = time.perf_counter()
        for _ in range(calls):
            script(keys=[key], args=batch)
        scripted = calls * per_call / (time.perf_counter() - t0)
    finally:
        r.delete(key)
    return {"pipelined_xadd_per_s": pipelined, "lua_append_per_s": scripted, "per_call": per_call}


if __name__ == "__main__":
    what, *rest = sys.argv[1:]
    if what == "work":
        result = work_alone(rest[0], int(rest[1]), int(rest[2]))
    else:
        result = append(rest[0], int(rest[1]), int(rest[2]))
    print(json.dumps(result))
