"""Shared pieces of the benchmarks: timing and the JSON report."""

import json
import platform
import time
from collections.abc import Callable

import jax


def machine() -> dict:
    """The devices and host the figures come from."""
    return {
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "backend": jax.default_backend(),
        "host": f"{platform.machine()}, {platform.processor() or platform.system()}",
    }


def time_calls(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn()`` (its result blocked on) over ``repeats`` calls,
    after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def write_report(path: str, name: str, rows: list[dict], **details) -> None:
    with open(path, "w") as f:
        json.dump({"benchmark": name, **details, **machine(), "results": rows}, f, indent=2)
