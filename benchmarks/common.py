"""Shared pieces of the benchmarks: timing, the output flag and the JSON report
(one format for all: benchmark name, settings, machine, result rows)."""

import json
import os
import platform
import time
from collections.abc import Callable

import jax
from absl import flags

REPORT_DIR = os.path.join("runs", "benchmarks")  # runs/ is not tracked by git


def define_output_flag(name: str) -> None:
    """``--output``: where the JSON report goes (default ``runs/benchmarks/<name>.json``)."""
    flags.DEFINE_string(
        "output", os.path.join(REPORT_DIR, f"{name}.json"), "Where to write the JSON report."
    )


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


def write_report(path: str, name: str, rows: list[dict], **settings) -> None:
    """``{"benchmark": name, **settings, **machine(), "results": rows}`` as JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"benchmark": name, **settings, **machine(), "results": rows}, f, indent=2)
    print(f"wrote {path}")
