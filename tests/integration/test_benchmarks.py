"""Smoke test of the benchmarks: each runs with --quick and prints its ratio lines (no timing is asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
RATIO = re.compile(r"^RATIO (?P<name>\S.*?) = (?P<value>-?[0-9.]+|nan|inf)(?:  \(target .*\))?$", re.M)


def run_quick(script: str, *extra: str, timeout: float = 240) -> dict[str, str]:
    res = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, f"{script} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert res.stdout.startswith(f"# {script.removesuffix('.py')}:"), res.stdout[:500]
    assert "machine   " in res.stdout and "date      " in res.stdout
    return {m["name"]: m["value"] for m in RATIO.finditer(res.stdout)}


def test_aggregator_quick_prints_floor_and_per_parameter_ratios() -> None:
    ratios = run_quick("aggregator.py")
    assert {"verify/floor[1e+03]", "verify/floor[1e+05]", "verify_per_param_cost[1e+05/1e+03]"} <= set(ratios)
    for rule in ("mean", "median", "trimmed_mean", "norm_bound"):
        assert f"per_param_cost[1e+05/1e+03] {rule} K=3" in ratios


def test_gpu_step_quick_prints_the_platform_to_bare_ratio() -> None:
    ratios = run_quick("gpu_step.py")
    assert any(name.startswith("platform_step/bare_torch[") for name in ratios), ratios
    assert all(float(v) > 0 for v in ratios.values())


@pytest.mark.kafka
def test_site_ingest_quick_prints_both_target_ratios(bootstrap: str) -> None:
    ratios = run_quick("site_ingest.py", "--bootstrap", bootstrap)
    assert {"site_full_path/bare_consume_decode", "site_full_path/plain_river"} <= set(ratios)
    assert all(float(v) > 0 for v in ratios.values())


@pytest.mark.kafka
def test_site_scaleout_quick_learns_every_record_once_with_one_and_two_processes(bootstrap: str) -> None:
    # the benchmark itself fails unless the processes together learn exactly the topic's records
    ratios = run_quick("site_scaleout.py", "--bootstrap", bootstrap)
    assert set(ratios) == {"scaleout_2/one_process"}
    assert float(ratios["scaleout_2/one_process"]) > 0


@pytest.mark.kafka
def test_freshness_quick_prints_latency_ratios_for_3_and_30_sites(bootstrap: str) -> None:
    ratios = run_quick("freshness.py", "--bootstrap", bootstrap, timeout=280)
    for n in (3, 30):
        for what in ("update_to_version", "transaction_to_update"):
            for q in ("p50", "p99"):  # a number: the run saw updates and versions (nan: none)
                assert float(ratios[f"{what}_{q}/floor_{q}[{n} sites]"]) > 0, ratios


def test_startup_quick_prints_the_first_record_to_floor_ratio() -> None:
    ratios = run_quick("startup.py", timeout=180)
    assert "first_record/floor" in ratios and float(ratios["first_record/floor"]) > 0, ratios
