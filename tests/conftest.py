"""Test setup: 8 simulated CPU devices, configured before JAX is first used, and
one persistent XLA compilation cache for the session.

Many tests compile the same tiny networks (in this process and in the commands
they run as subprocesses, which inherit the cache directory through the
environment); the cache is new for every session, so no result of an earlier
run is reused.
"""

import os
import sys
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

_CACHE_DIR = tempfile.mkdtemp(prefix="ssd_jax_tests_xla_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
# Every program, however quick to compile: a command started by a test compiles
# dozens of small ones as it builds its model eagerly (0.01-0.5 s each, 5-10 s in
# all), and the next command then loads them (measured: a 3-step configs/tiny.py
# run 14 s instead of 21-25 s).
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# The PyTorch-equivalence tests run in the Python 3.11 suite, where the dev extra
# installs torch's CPU build; for Python 3.12+ the package index offers only a
# ~4 GB CUDA build, so the dev extra leaves torch out there, and so do these. The
# ONNX export needs jax2onnx, which supports Python 3.11's jax only (pyproject's
# onnx extra). CI runs both suites: .ci/run.
FLOOR_STACK_TESTS = [
    "test_convert.py",
    "test_nvidia_ssd.py",
    "test_onnx.py",
    "test_reference_training.py",
    "test_ssdlite.py",
]
if sys.version_info >= (3, 12):
    collect_ignore = FLOOR_STACK_TESTS

# The package's log records ("resumed from ...", warnings) on stdout, as the
# commands show them: tests of library calls read them where users of the
# commands do; they reach pytest's caplog as well.
import logging  # noqa: E402

from ssd_jax import cli  # noqa: E402

cli.print_library_logs()
logging.getLogger("ssd_jax").propagate = True
