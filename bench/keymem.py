"""Redis memory by key family: every key is scanned, grouped by its name with ids replaced by `*`,
and MEMORY USAGE is summed over a sample of each family (exact for families up to the sample size)."""

from __future__ import annotations

import random
import re
from typing import Any

_ID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|\d+"
)


def family(key: str) -> str:
    return _ID.sub("*", key)


def census(redis: Any, sample: int = 300) -> dict[str, dict[str, Any]]:
    """{family: {keys, type, bytes (estimated total), bytes_per_key}} for a sync redis-py client."""
    groups: dict[str, list[str]] = {}
    for raw in redis.scan_iter(count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        groups.setdefault(family(key), []).append(key)
    out: dict[str, dict[str, Any]] = {}
    for fam, keys in sorted(groups.items()):
        picked = keys if len(keys) <= sample else random.Random(0).sample(keys, sample)
        pipe = redis.pipeline(transaction=False)
        for key in picked:
            pipe.memory_usage(key, samples=0)
        pipe.type(picked[0])
        *sizes, kind = pipe.execute()
        sized = [s for s in sizes if s is not None]
        per_key = sum(sized) / max(1, len(sized))
        out[fam] = {
            "keys": len(keys),
            "type": kind.decode() if isinstance(kind, bytes) else kind,
            "bytes": round(per_key * len(keys)),
            "bytes_per_key": round(per_key),
        }
    return out
