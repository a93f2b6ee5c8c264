"""Smoke test: the benchmark scripts run end to end in a tiny configuration and write their files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_benchmarks_quick(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    names = {r["name"] for r in results}
    for prefix in (
        "train_step_overhead",
        "law_cost_laplace_laplace",
        "sampling_step_rademacher",
        "per_image_seeds",
        "peer_diffusers",
        "likelihood_pf_ode",
        "bf16_vs_fp32",
        "peak_memory",
        "train_jobs2",
    ):
        assert any(n.startswith(prefix) for n in names), prefix
    for r in results:
        if r.get("target") is not None:
            assert r["ratio"] > 0 and r["ratio_min"] <= r["ratio_max"] and isinstance(r["met"], bool)
    lik = next(r for r in results if r["name"] == "likelihood_pf_ode")
    # the two integrators see the same images, noise and probe: their bits/dim agree
    assert abs(lik["bpd_ours"] - lik["bpd_reference"]) < 3 * max(lik["bpd_ours_se"], 1e-3)
    assert "| comparison |" in (tmp_path / "RESULTS.md").read_text()
