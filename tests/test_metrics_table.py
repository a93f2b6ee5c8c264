"""The metrics table (nonnormal.metrics.table): one entry per metric, read by every consumer; a metric
registered here shows up in eval.json, the study's files and compare's table (test_runs.py); what
cannot be computed is skipped with its reason; strict JSON and LaTeX that compiles."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from nonnormal import config
from nonnormal import train as train_lib
from nonnormal.cli import main
from nonnormal.data import levels_to_unit
from nonnormal.errors import NonnormalError
from nonnormal.files import json_text
from nonnormal.metrics import table
from nonnormal.report import PREAMBLE, latex_table, tex
from nonnormal.study import Plan, compare_rows, findings
from nonnormal.study_report import write_study


def _dark(inputs: table.MetricInputs) -> float:
    return float((inputs.sample_levels == 0).double().mean())


@pytest.fixture
def dark_share():
    """A metric registered the documented way, for the length of one test."""
    metric = table.register(
        table.Metric(
            "dark_share",
            _dark,
            unit="share",
            direction=None,
            needs=("samples", "levels"),
            description="share of sample pixels at the lowest level",
            headline=True,
        )
    )
    yield metric
    table.unregister("dark_share")


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_compute_gives_closed_forms_and_says_what_it_skipped(dark_share):
    L = 4
    checker = torch.tensor([[[0, 3], [3, 0]]])
    flat = torch.tensor([[[1, 1], [1, 1]]])
    lv = torch.cat([checker, checker, flat, flat])  # (4, 2, 2)
    x = levels_to_unit(lv, L)  # levels 0, 1, 3 at -0.75, -0.25, 0.75
    inputs = table.MetricInputs(table.snap(x + 0.1, L), L, x, train_levels=lambda: lv)  # +0.1 stays in its bin
    values, skipped = table.compute(inputs, "images")
    assert values["dark_share"] == 0.25  # 4 of 16 pixels
    assert values["saturation"] == 0.5
    assert values["total_variation"] == pytest.approx(1.5)  # |1.5| on half the neighbour pairs, both directions
    assert values["hist_distance"] == 0.0 and values["hist_w1"] == 0.0  # the training images themselves
    assert set(skipped) == {"fd", "kid", "precision", "class_tv_train", "rare_share", "rare_recall"}
    assert "no feature classifier" in skipped["fd"] and "no feature classifier" in skipped["class_tv_train"]
    assert values["fd"] is None and values["kid"] is None and values["kid_std"] is None


def test_kid_std_is_null_when_the_subsets_cannot_vary():
    g = torch.Generator().manual_seed(0)
    L = 4
    test = table.snap(torch.rand(20, 1, 4, 4, generator=g) * 2 - 1, L)

    def feats(x):
        return x.flatten(1).double().numpy()

    for n, spread in ((20, False), (30, True)):
        samples = table.snap(torch.rand(n, 1, 4, 4, generator=g) * 2 - 1, L)
        inputs = table.MetricInputs(samples, L, test, features=lambda: (feats, feats(test)))
        values, skipped = table.compute(inputs, "images", only=["kid"])
        assert isinstance(values["kid"], float)
        if spread:
            assert values["kid_std"] > 0 and not skipped
        else:
            assert values["kid_std"] is None and "do not vary" in skipped["kid_std"]


def test_bad_entries_and_names_are_one_line_errors(dark_share):
    with pytest.raises(NonnormalError, match="already registered"):
        table.register(dark_share)
    with pytest.raises(NonnormalError, match="unknown need"):
        table.Metric("x", _dark, "share", None, ("pixels",), "x")
    with pytest.raises(NonnormalError, match="direction"):
        table.Metric("x", _dark, "share", "up", ("samples",), "x")
    with pytest.raises(NonnormalError, match="unknown metric 'nope'"):
        table.get("nope")
    assert table.get("dark_share") is dark_share
    assert table.units()["dark_share"] == "share" and table.units()["kid_std"] == table.units()["kid"]
    assert "smoothness" not in table.names()


def test_strict_json_has_null_for_nan_and_infinity():
    text = json_text({"a": float("nan"), "b": [float("inf"), 1.5], "c": torch.tensor(2.0), "d": (1, 2)})
    assert _strict(text) == {"a": None, "b": [None, 1.5], "c": 2.0, "d": [1, 2]}


def check_latex(text: str, tmp_path) -> None:
    """table.tex: the preamble named in its first line; every row as wide as its tabular; no TeX special
    left unescaped in a cell; compiled with pdflatex when one is installed."""
    assert text.startswith("% needs booktabs") and PREAMBLE in text.splitlines()[0]
    for spec, body in re.findall(r"\\begin\{tabular\}\{(l+)\}\n(.*?)\\end\{tabular\}", text, re.S):
        assert len(spec) <= 8
        for line in body.splitlines():
            if line.endswith(r"\\"):
                cells = re.split(r"(?<!\\)&", line[:-2])
                assert len(cells) == len(spec), line
                for c in cells:
                    assert not re.search(r"(?<!\\)[_%#^]", c.replace(r"\textasciicircum{}", "")), c
    if shutil.which("pdflatex"):
        (tmp_path / "table.tex").write_text(text)
        (tmp_path / "doc.tex").write_text(PREAMBLE + "\n\\begin{document}\n\\input{table.tex}\n\\end{document}\n")
        res = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stdout[-2000:]


def test_latex_tables_escape_split_and_compile(tmp_path):
    assert tex("a_b 50% & #1 ^2 ~ {x} $") == (r"a\_b 50\% \& \#1 \textasciicircum{}2 \textasciitilde{} \{x\} \$")
    columns = ["name"] + [f"m_{i}" for i in range(12)]
    rows = [{"name": "q^2_x", **{f"m_{i}": i + 0.5 for i in range(12)}}, {"name": "nan row", "m_0": float("nan")}]
    text = latex_table(rows, columns, "caption with MMD^2 & 5%", {"m_1": "MMD^2"})
    assert text.count(r"\begin{tabular}") == 2 and "(part 2 of 2)" in text  # 1 + 7, then 1 + 5 columns
    check_latex(text, tmp_path)


def test_a_registered_metric_reaches_the_study_files(dark_share, tmp_path):
    plan = Plan(pairs=["gaussian/gaussian", "laplace/laplace"], T_train=[10], seeds=[0, 1, 2])
    rows = []
    for seed in plan.seeds:
        for pair, shift in (("gaussian/gaussian", 0.0), ("laplace/laplace", 0.1)):
            q, p = pair.split("/")
            row = {"pair": pair, "q": q, "p": p, "seed": seed, "T_train": 10, "sampler": "walk", "T_sample": 10}
            row.update(law_sample=p, weights_from=pair, bpd_ode=2.0 + 0.01 * seed, bpd_bound=float("nan"))
            row.update(dark_share=0.2 + shift + 0.001 * seed * (1 if shift else -1))
            rows.append(row)
    comparisons = compare_rows(rows, plan)
    assert any(c["metric"] == "dark_share" for c in comparisons if c["kind"] == "pairs")
    result = {
        "dataset": "digits",
        "plan": dataclasses.asdict(plan),
        "seconds": 1.0,
        "rows": rows,
        "comparisons": comparisons,
        "findings": findings(comparisons, plan),
    }
    assert any("higher dark_share" in f for f in result["findings"])
    files = write_study(tmp_path, result, {}, {})
    assert set(files) >= {"study.json", "study.md", "table.tex"}
    saved = _strict((tmp_path / "study.json").read_text())  # bpd_bound NaN -> null
    assert saved["units"]["dark_share"] == "share" and saved["rows"][0]["bpd_bound"] is None
    assert "dark_share (share)" in (tmp_path / "study.md").read_text()
    check_latex((tmp_path / "table.tex").read_text(), tmp_path)


E2E = [
    "net.width=8",
    "net.ch_mult=[1]",
    "net.attn_resolutions=[]",
    "train.batch=32",
    "diffusion.T=8",
    "train.warmup=2",
    "train.steps=3",
]


def test_eval_json_has_every_metric_and_says_what_it_skipped(dark_share, tmp_path, monkeypatch, capsys):
    """eval.json: the style metrics, a newly registered metric, FD and KID; on data without labels FD and
    KID are skipped with the reason, in the JSON and in one line of output."""
    from nonnormal import runs
    from nonnormal.data.datasets import Examples
    from nonnormal.metrics import features as features_lib

    class Pixels:  # the classifier's place: pixels as features (training one is test_features.py's business)
        test_accuracy = 0.5

        def __call__(self, x):
            return x.flatten(1).double().numpy()

    monkeypatch.setattr(features_lib, "features_for", lambda data, progress=False: Pixels())
    run = tmp_path / "run"
    train_lib.train(config.load(None, E2E), run, progress=False)
    common = ["--n-test", "12", "--n-samples", "12", "--rtol", "1e-2", "--quiet", "--device", "cpu"]
    assert main(["eval", str(run), *common]) == 0
    result = _strict((run / "eval.json").read_text())
    for key in ("bpd_ode", "bpd_bound", "fd", "kid", "saturation", "total_variation", "hf_power", "hist_distance"):
        assert isinstance(result[key], float), key
    assert 0 <= result["dark_share"] <= 1 and result["classifier_accuracy"] == 0.5
    assert (
        result["skipped"]
        == {  # pixels have no classifier head; digits' classes are balanced
            "class_tv_train": "the feature map has no classifier head to give the samples' classes",
            "rare_share": result["skipped"]["rare_recall"],
            "rare_recall": result["skipped"]["rare_recall"],
        }
        and "balanced" in result["skipped"]["rare_recall"]
    )
    capsys.readouterr()

    real = runs.load_data

    def unlabelled(cfg):  # the same images without their classes
        data = real(cfg)
        return dataclasses.replace(data, train=Examples(data.train.x), test=Examples(data.test.x))

    monkeypatch.setattr(runs, "load_data", unlabelled)
    out = tmp_path / "unlabelled.json"
    assert main(["eval", str(run), *common, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = _strict(out.read_text())
    assert result["fd"] is None and "no class labels" in result["skipped"]["fd"]
    assert isinstance(result["saturation"], float) and "dark_share" in result
    assert re.search(r"^skipped fd, kid, .*precision: .*no class labels", printed, re.M)


def _pixels(x):
    return x.flatten(1).double().numpy()


def _inputs(data: str, samples, reference):
    if data == "points":
        return table.MetricInputs(samples, None, reference, seed=0)
    from nonnormal.data import unit_to_levels

    return table.MetricInputs(
        samples,
        8,
        reference,
        train_levels=lambda: unit_to_levels(reference, 8),
        features=lambda: (_pixels, _pixels(reference)),
        seed=0,
        classifier=lambda: _brightness,  # two classes, dark and light; the training split 90:10
        labels=lambda: (np.repeat([0, 1], [90, 10]), _brightness(reference)),
        num_classes=2,
    )


def _brightness(x):
    return (x.flatten(1).mean(1) > 0).long().numpy()


@pytest.mark.parametrize("name", table.names(sampled=True))
def test_every_sample_metric_keeps_the_contract(name):
    """Every sample metric of the table: a unit and a one-line description; the same inputs give the same
    numbers; each key is a finite number or null with a one-line reason; and a metric whose lower is
    better scores the reference itself no worse than a shifted copy of it."""
    m = table.get(name)
    assert m.unit and m.description and "\n" not in m.description
    g = torch.Generator().manual_seed(0)
    data = "points" if m.data == "points" else "images"
    if data == "points":
        reference = torch.randn(200, 2, generator=g)
        shifted = reference + 1.0
    else:
        reference = table.snap(torch.rand(64, 1, 8, 8, generator=g) * 2 - 1, 8)
        shifted = table.snap((reference + 0.5).clamp(-1, 1), 8)
    values, skipped = table.compute(_inputs(data, reference, reference), data, only=[name])
    again, _ = table.compute(_inputs(data, reference, reference), data, only=[name])
    assert values == again and name not in skipped
    for key in m.keys:
        v = values[key]
        assert (isinstance(v, float) and v == v and abs(v) != float("inf")) or (
            v is None and "\n" not in skipped[key]
        ), key
    if m.direction == "lower":
        far, _ = table.compute(_inputs(data, shifted, reference), data, only=[name])
        assert values[name] <= far[name]
