"""Import-time guards of ``ssd_jax/__init__.py``: the jax/flax pair and XLA flags."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ssd_jax


@pytest.mark.parametrize(
    ("jax_version", "flax_version", "works"),
    [
        ("0.10.2", "0.12.8", True),  # the Python 3.11 floor
        ("0.11.1", "0.12.9", True),  # before the rename
        ("0.11.2", "0.12.9", False),  # flax issue #5596
        ("0.12.0.1", "0.12.8", False),
        ("0.12.0.1", "0.12.10", True),
        ("0.12.0.1", "0.12.12", True),
        ("0.12.0rc1", "0.13.0.dev20261201", True),
    ],
)
def test_a_broken_jax_flax_pair_is_named_with_the_fix(
    monkeypatch, jax_version, flax_version, works
):
    versions = {"jax": jax_version, "flax": flax_version}
    monkeypatch.setattr(importlib.metadata, "version", versions.__getitem__)
    if works:
        ssd_jax._check_jax_and_flax()
    else:
        message = f"flax {flax_version} does not work with jax {jax_version}.*pip install -U 'flax>=0.12.10'"
        with pytest.raises(ImportError, match=message):
            ssd_jax._check_jax_and_flax()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", "--xla_cpu_experimental_ynn_fusion_type=-reduce"),
        (
            "--xla_dump_to=/tmp/x",
            "--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type=-reduce",
        ),
        ("--xla_cpu_experimental_ynn_fusion_type=", "--xla_cpu_experimental_ynn_fusion_type="),
    ],
)
def test_the_xla_cpu_fusion_workaround_keeps_a_users_choice(monkeypatch, before, after):
    monkeypatch.setenv("XLA_FLAGS", before)
    ssd_jax._avoid_xla_cpu_bf16_pooling_bug()
    assert os.environ["XLA_FLAGS"] == after


def test_importing_ssd_jax_first_keeps_bfloat16_max_pools_finite():
    """The flag is read when the CPU backend starts, so importing ssd_jax before the
    first computation must be enough: the bug's reproduction (NaNs on jax 0.12
    without the flag) run in a fresh interpreter after ``import ssd_jax`` gives the
    eager result exactly."""
    reproduction = Path(__file__).parents[1] / "docs" / "upstream" / "xla_cpu_ynn_bf16_nan.py"
    code = f"import ssd_jax, runpy; runpy.run_path({str(reproduction)!r}, run_name='__main__')"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "jit NaNs 0 of 180000, eager NaNs 0, equal True" in out.stdout, out.stdout
