import json
import subprocess
import sys

import pytest

from nonnormal import increments
from nonnormal.cli import main


def run_cli(*args):
    """Run the real command in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "nonnormal.cli", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_laws_json(capsys):
    assert main(["laws", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(increments.names(builtin=True)) <= set(rows)
    assert rows["laplace"]["fourth_moment"] == 6.0 and rows["rademacher"]["has_density"] is False
    assert rows["student_t"]["params"] == {"nu": 5.0} and all(r["variance"] == 1.0 for r in rows.values())


def test_kl_command(capsys):
    assert main(["kl", "uniform", "laplace", "--u", "0,1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "closed-form" and abs(out["k0"] - 0.3288651) < 1e-6 and abs(out["K"][0] - out["k0"]) < 1e-12


def test_invariance_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "inv"
    assert (
        main(
            [
                "invariance",
                "--laws",
                "laplace,uniform",
                "--steps",
                "2,8",
                "--paths",
                "4000",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    data = json.loads((out / "invariance.json").read_text())
    assert set(data) == {"gaussian", "laplace", "uniform"} and set(data["laplace"]) == {"2", "8"}
    assert data["laplace"]["2"] > data["laplace"]["8"] > 0
    assert (out / "invariance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run refuses to overwrite, and leaves the results as they were
    before = (out / "invariance.json").read_bytes()
    assert main(["invariance", "--steps", "2", "--paths", "100", "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "invariance.json").read_bytes() == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["invariance", "--laws", "cauchy"], "unknown increment law 'cauchy'"),
        (["invariance", "--laws", "student_t:nu=4"], "nu > 4"),
        (["invariance", "--steps", "4,0"], "must be positive integers"),
        (["invariance", "--steps", "four"], "comma-separated integers"),
        (["invariance", "--schedule", "sqrt"], "unknown schedule"),
        (["kl", "gaussian", "uniform"], "bounded support"),
        (["kl", "rademacher", "laplace"], "no density"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message, capsys):
    """In-process (main() is all `python -m nonnormal.cli` runs; an uncaught error here raises, so
    this is at least as strict as a subprocess, at no torch import per case): the test below
    checks one case through the real process."""
    extra = ["--out", str(tmp_path / "x"), "--quiet"] if args[0] == "invariance" else []
    try:
        code = main([*args, *extra])
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "invariance.json").exists()


def test_bad_input_exits_2_with_one_line_from_the_real_process(tmp_path):
    code, out, err = run_cli("invariance", "--laws", "cauchy", "--out", str(tmp_path / "x"), "--quiet")
    assert code == 2
    assert "unknown increment law 'cauchy'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
