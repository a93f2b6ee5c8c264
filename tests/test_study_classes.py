"""The study's conditional axis: plan keys, conditional model folders and configs, the labels of
conditional samples, the classifier of a long tail, and comparisons and findings on constructed rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nonnormal import config as config_lib
from nonnormal.errors import NonnormalError
from nonnormal.metrics.table import NO_LABELS
from nonnormal.study import Plan, Study, compare_rows, findings, load_plan, plan_from_table
from nonnormal.study_classes import plan_dict, sample_labels

ROOT = Path(__file__).parent.parent
TINY = {
    "data": {"dataset": "digits:imbalance=100"},
    "net": {"name": "unet", "width": 8, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": []},
    "train": {"steps": 2, "batch": 16, "warmup": 1, "device": "cpu"},
}


# ----- the plan ------------------------------------------------------------------------------------


def test_plan_keys_defaults_and_what_study_json_holds():
    plan = plan_from_table({})
    assert plan.conditional == [False] and plan.label_dropout == 0.1 and plan.guidance == 1.0
    assert not {"conditional", "label_dropout", "guidance"} & set(plan_dict(plan))  # an unconditional study's plan
    plan = plan_from_table({"conditional": [False, True], "label_dropout": 0.2, "guidance": 2})
    assert plan.conditional == [False, True] and plan.guidance == 2.0 and plan.label_dropout == 0.2
    assert plan_dict(plan)["conditional"] == [False, True] and plan_dict(plan)["guidance"] == 2.0


@pytest.mark.parametrize(
    "table, match",
    [
        ({"conditional": []}, "study.conditional must be a non-empty list of distinct booleans"),
        ({"conditional": [1]}, "study.conditional must be a non-empty list of distinct booleans"),
        ({"conditional": [True, True]}, "study.conditional must be a non-empty list of distinct booleans"),
        ({"conditional": True}, "study.conditional must be list"),
        ({"label_dropout": 1.0}, r"study.label_dropout must lie in \[0, 1\)"),
        ({"label_dropout": -0.1}, r"study.label_dropout must lie in \[0, 1\)"),
        ({"label_dropout": "0.1"}, "study.label_dropout must be float"),
        ({"guidance": -1}, "study.guidance must be a finite number >= 0"),
        ({"guidance": float("nan")}, "study.guidance must be a finite number >= 0"),
        ({"guidance": 1e308}, r"study.guidance 1e\+308 is over 100"),
        ({"conditional": [True], "guidance": 2, "label_dropout": 0}, "needs the unconditional model"),
    ],
)
def test_bad_plan_values_are_one_line_errors(table, match):
    with pytest.raises(NonnormalError, match=match) as err:
        plan_from_table(dict(table))
    assert "\n" not in str(err.value)


def test_plan_keys_read_from_a_toml(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[study]\nconditional = [false, true]\nguidance = 1.5\n\n[data]\ndataset = "digits"\n')
    plan, run = load_plan(path)
    assert plan.conditional == [False, True] and plan.guidance == 1.5 and run["data"]["dataset"] == "digits"


# ----- models, labels, classifier ------------------------------------------------------------------


def test_conditional_models_get_their_own_folder_and_config(tmp_path):
    plan = Plan(pairs=["gaussian/gaussian", "uniform/gaussian"], T_train=[4], seeds=[0], conditional=[False, True])
    study = Study(tmp_path, plan.check(), json.loads(json.dumps(TINY)), progress=False)
    # uniform/gaussian reuses gaussian/gaussian's weights: one unconditional and one conditional model
    assert sorted(study.configs) == [("gaussian", "gaussian", 4, 0, False), ("gaussian", "gaussian", 4, 0, True)]
    cond, uncond = (
        study.configs[("gaussian", "gaussian", 4, 0, True)],
        study.configs[("gaussian", "gaussian", 4, 0, False)],
    )
    assert cond["net"]["num_classes"] == 10 and cond["train"]["label_dropout"] == 0.1
    assert not uncond["net"].get("num_classes") and not uncond["train"].get("label_dropout")
    assert {k: v for k, v in cond.items() if k not in ("net", "train")} == {
        k: v for k, v in uncond.items() if k not in ("net", "train")
    }
    assert study.model_dir("gaussian", "gaussian", 4, 0, True).name == "gaussian-gaussian-T4-seed0-cond"
    assert study.model_dir("gaussian", "gaussian", 4, 0).name == "gaussian-gaussian-T4-seed0"
    assert study.test_labels().shape == (study.x_test.shape[0],)


def test_a_conditional_study_of_unlabelled_data_is_refused_in_one_line(tmp_path):
    plan = Plan(pairs=["gaussian/gaussian"], T_train=[4], seeds=[0], conditional=[True]).check()
    run = {**json.loads(json.dumps(TINY)), "data": {"dataset": "toy2d:name=moons"}}
    with pytest.raises(NonnormalError, match="needs a labelled dataset") as err:
        Study(tmp_path, plan, run, progress=False)
    assert "\n" not in str(err.value)


def test_sample_labels_follow_the_training_profile_and_extend_image_by_image():
    counts = torch.tensor([133, 79, 47, 28, 17, 10, 6, 3, 2, 1])
    labels = sample_labels(1000, counts, seed=0, total=1000)
    share = torch.bincount(labels, minlength=10) / 1000
    assert (share - counts / counts.sum()).abs().max() <= 1 / 1000 + 1e-12  # each class its share to one sample
    assert not torch.equal(labels, labels.sort().values)  # shuffled: a Figure-1 row shows several classes
    assert torch.equal(sample_labels(12, counts, 0, 1000), labels[:12])  # Figure 1's row: the first metric samples
    assert torch.equal(sample_labels(1000, counts, 0, 1000), labels)  # reproducible from the seed
    assert not torch.equal(sample_labels(1000, counts, 1, 1000), labels)


def test_the_classifier_of_a_long_tail_is_its_balanced_base():
    from nonnormal import data as data_lib

    tail = data_lib.load("digits:imbalance=100")
    base = data_lib.balanced(tail, 0)
    assert base.name == "digits" and len(base.train) == 1437 and len(tail.train) == 326
    assert torch.equal(base.tensor("test"), tail.tensor("test"))
    assert data_lib.balanced(base, 0) is base
    assert data_lib.balanced_spec("digits:imbalance=100") == "digits" == data_lib.balanced_spec("digits")


# ----- comparisons and findings on constructed rows ------------------------------------------------------

TRAIN_SHARE = 6 / 326  # the rare classes' share of digits:imbalance=100's training split


def _rows(shares: dict) -> list[dict]:
    """Rows of a 2-pair x 1 T x 3 seed x (unconditional, conditional) study on a long tail:
    ``shares[(pair, cond)]`` the rare share before a seed wobble shared by every model."""
    rows = []
    for seed, wobble in enumerate((-0.002, 0.0, 0.003)):
        for (pair, cond), share in shares.items():
            q, p = pair.split("/")
            rows.append(
                {
                    "pair": pair,
                    "q": q,
                    "p": p,
                    "seed": seed,
                    "T_train": 10,
                    "conditional": cond,
                    "sampler": "walk",
                    "T_sample": 10,
                    "law_sample": p,
                    "bpd_ode": 2.0 - (0.05 + 0.001 * seed if cond else 0) + 0.01 * seed,
                    "rare_share": share + wobble + (0.0005 * seed if pair == "laplace/laplace" else 0),
                    "rare_share_train": TRAIN_SHARE,
                    "class_tv_train": 0.1,
                    "weights_from": pair,
                }
            )
    return rows


SHARES = {
    ("gaussian/gaussian", False): 0.005,  # under-produces the rare classes
    ("laplace/laplace", False): 0.025,  # more than gaussian/gaussian: about the training share
    ("gaussian/gaussian", True): 0.018,
    ("laplace/laplace", True): 0.060,  # over-produces them
}
CPLAN = Plan(pairs=["gaussian/gaussian", "laplace/laplace"], T_train=[10], seeds=[0, 1, 2], conditional=[False, True])


def test_comparisons_group_by_conditional_and_pair_conditional_with_unconditional():
    comps = compare_rows(_rows(SHARES), CPLAN)
    pairs = [c for c in comps if c["kind"] == "pairs" and c["metric"] == "rare_share"]
    assert sorted(c["conditional"] for c in pairs) == [False, True]
    by = {c["conditional"]: c["rows"][0] for c in pairs}
    assert by[False]["diff"] == pytest.approx(0.020 + 0.0005) and by[True]["diff"] == pytest.approx(0.042 + 0.0005)
    cond = {c["pair"]: c["rows"][0] for c in comps if c["kind"] == "conditional" and c["metric"] == "rare_share"}
    assert cond["gaussian/gaussian"]["diff"] == pytest.approx(0.013) and not cond["gaussian/gaussian"]["exact"]
    assert cond["gaussian/gaussian"]["lo"] == pytest.approx(0.013)  # no spread over seeds: a point interval
    assert cond["laplace/laplace"]["diff"] == pytest.approx(0.035) and cond["laplace/laplace"]["pair"] == "conditional"
    bpd = {c["pair"]: c["rows"][0]["diff"] for c in comps if c["kind"] == "conditional" and c["metric"] == "bpd_ode"}
    assert bpd == pytest.approx({"gaussian/gaussian": -0.051, "laplace/laplace": -0.051})  # seed effects cancel
    profile = {(c["conditional"], r["pair"]): r for c in comps if c["kind"] == "profile" for r in c["rows"]}
    assert profile[(False, "gaussian/gaussian")]["diff"] == pytest.approx(0.005 + 1 / 3000 - TRAIN_SHARE)
    assert profile[(False, "gaussian/gaussian")]["lo"] < profile[(False, "gaussian/gaussian")]["hi"] < 0


def test_findings_word_the_rare_share_by_direction_and_against_the_training_profile():
    text = findings(compare_rows(_rows(SHARES), CPLAN), CPLAN)
    joined = "\n".join(text)
    assert (
        "T=10, unconditional: laplace/laplace makes a larger share of rare classes than gaussian/gaussian: +0.0205"
        in joined
    )
    assert (
        "T=10: the conditional laplace/laplace makes a larger share of rare classes than its unconditional model"
        in joined
    )
    assert "T=10, unconditional: gaussian/gaussian under-produces the rare classes" in joined
    assert "T=10, conditional: laplace/laplace over-produces the rare classes" in joined
    assert "better" not in joined and "worse" not in joined  # a share is no quality
    lower = dict(SHARES)
    lower[("laplace/laplace", False)] = 0.001
    lower[("laplace/laplace", True)] = TRAIN_SHARE  # the training share, up to the seed wobble
    said = "\n".join(findings(compare_rows(_rows(lower), CPLAN), CPLAN))
    assert "T=10, unconditional: laplace/laplace makes a smaller share of rare classes than gaussian/gaussian" in said
    assert "T=10, conditional: laplace/laplace is not distinguishable from the training share of rare classes" in said
    # a distinguishable bpd_ode difference of the conditional model is worded too
    said = [f for f in text if "the conditional gaussian/gaussian has lower bpd_ode than its unconditional model" in f]
    assert len(said) == 1 and "given the test labels" in said[0]


T95 = {2: 4.302652729749464, 4: 2.7764451051977987}  # Student's t, two-sided 95%, by degrees of freedom


def _share_rows(shares: dict) -> list[dict]:
    """Rows whose rare_share is ``shares[(pair, cond)][seed]`` exactly (multiples of 1/200: 200 samples)."""
    rows = _rows({key: 0.0 for key in shares})
    for r in rows:
        r["rare_share"] = shares[(r["pair"], r["conditional"])][r["seed"]] / 200
    return rows


def test_conditional_and_profile_intervals_against_a_hand_computation():
    counts = {
        ("gaussian/gaussian", False): [1, 2, 6],
        ("gaussian/gaussian", True): [4, 4, 7],  # differences 3, 2, 1 (/200)
        ("laplace/laplace", False): [5, 3, 4],
        ("laplace/laplace", True): [6, 7, 5],  # differences 1, 4, 1 (/200)
    }
    comps = compare_rows(_share_rows(counts), CPLAN)
    cond = {c["pair"]: c for c in comps if c["kind"] == "conditional" and c["metric"] == "rare_share"}
    # pooled over the two pairs: ((1 + 0 + 1) + (1 + 4 + 1)) / 200^2 over 2 + 2 dof
    sd = (8 / 4) ** 0.5 / 200
    for pair, mean in (("gaussian/gaussian", 2 / 200), ("laplace/laplace", 2 / 200)):
        c, row = cond[pair], cond[pair]["rows"][0]
        assert c["dof"] == 4 and c["comparisons"] == 2 and c["pooled_sd"] == pytest.approx(sd)
        assert row["diff"] == pytest.approx(mean)
        assert row["hi"] - row["diff"] == pytest.approx(T95[4] * sd / 3**0.5)
        assert not row["exact"]
    # the profile: each pair's own spread of rare_share - rare_share_train, t with n - 1 = 2 dof
    profile = {(c["conditional"], r["pair"]): r for c in comps if c["kind"] == "profile" for r in c["rows"]}
    row = profile[(False, "gaussian/gaussian")]
    d = torch.tensor([1, 2, 6], dtype=torch.float64) / 200 - TRAIN_SHARE
    assert row["diff"] == pytest.approx(float(d.mean())) and row["n"] == 3
    assert row["hi"] - row["diff"] == pytest.approx(T95[2] * float(d.std()) / 3**0.5)
    assert row["rare_share"] == pytest.approx(3 / 200) and row["rare_share_train"] == pytest.approx(TRAIN_SHARE)


def test_a_rare_share_equal_on_every_seed_keeps_the_binomial_interval():
    """Three seeds that make the same count of rare samples (as 3 conditional models did: 14 of 1000 each)
    have no seed spread; the profile's interval falls back to a share's binomial sd, never to a point."""
    counts = {key: [3, 3, 3] for key in (("gaussian/gaussian", False), ("gaussian/gaussian", True))}
    counts.update({key: [1, 2, 6] for key in (("laplace/laplace", False), ("laplace/laplace", True))})
    plan = Plan(pairs=CPLAN.pairs, T_train=[10], seeds=[0, 1, 2], conditional=[False, True], n_samples=200)
    comps = compare_rows(_share_rows(counts), plan)
    profile = {(c["conditional"], r["pair"]): r for c in comps if c["kind"] == "profile" for r in c["rows"]}
    row = profile[(False, "gaussian/gaussian")]
    s = 3 / 200
    assert row["sd_floored"] and row["diff"] == pytest.approx(s - TRAIN_SHARE)
    assert row["hi"] - row["diff"] == pytest.approx(T95[2] * (s * (1 - s) / 200) ** 0.5 / 3**0.5)
    assert not row["distinguishable"]  # 0.015 against 0.0184 with 200 samples: within the binomial noise
    assert not profile[(False, "laplace/laplace")]["sd_floored"]  # a seed spread above the floor is kept


def test_a_share_that_differs_by_the_same_count_on_every_seed_is_not_exact():
    """Shares are multiples of 1/n: two models a constant count apart on every seed is chance, not a
    constant of construction (as uniform/gaussian reusing gaussian/gaussian's weights is)."""
    counts = {
        ("gaussian/gaussian", False): [1, 2, 6],
        ("gaussian/gaussian", True): [4, 4, 7],
        ("laplace/laplace", False): [3, 4, 8],  # 2 more than gaussian/gaussian on every seed
        ("laplace/laplace", True): [6, 7, 5],
    }
    rows = _share_rows(counts)
    comps = compare_rows(rows, CPLAN)
    row = next(c for c in comps if c["kind"] == "pairs" and c["metric"] == "rare_share" and not c["conditional"])
    assert not row["rows"][0]["exact"] and row["dof"] == 2 and row["rows"][0]["diff"] == pytest.approx(2 / 200)
    said = "\n".join(findings(comps, CPLAN))
    assert "the same difference on every seed" not in said
    assert "laplace/laplace makes a larger share of rare classes than gaussian/gaussian: +0.01" in said
    # a pair that reuses the reference's weights can be exact: uniform/gaussian samples as gaussian/gaussian
    plan = Plan(pairs=["gaussian/gaussian", "uniform/gaussian"], T_train=[10], seeds=[0, 1, 2])
    same = [
        {**r, "pair": "uniform/gaussian", "q": "uniform", "weights_from": "gaussian/gaussian"}
        for r in rows
        if r["pair"] == "gaussian/gaussian" and not r["conditional"]
    ]
    base = [r for r in rows if r["pair"] == "gaussian/gaussian" and not r["conditional"]]
    for r in base + same:
        r.pop("conditional")
    comps = compare_rows(base + same, plan)
    row = next(c for c in comps if c["kind"] == "pairs" and c["metric"] == "rare_share")["rows"][0]
    assert row["exact"] and row["diff"] == 0


def test_an_unconditional_study_has_no_class_axis_in_its_comparisons():
    rows = [{k: v for k, v in r.items() if k != "conditional"} for r in _rows(SHARES) if not r["conditional"]]
    for r in rows:
        r["rare_share"] = r["rare_share_train"] = None  # balanced data: skipped
    plan = Plan(pairs=CPLAN.pairs, T_train=[10], seeds=[0, 1, 2])
    comps = compare_rows(rows, plan)
    assert comps and all("conditional" not in c for c in comps) and {c["kind"] for c in comps} == {"pairs"}
    assert not any("rare classes" in f or "conditional" in f for f in findings(comps, plan))


# ----- end to end --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_conditional_study_end_to_end(tmp_path):
    path = tmp_path / "c.toml"
    plan = (
        '[study]\npairs = ["gaussian/gaussian", "laplace/laplace"]\nT_train = [4]\nseeds = [0, 1]\n'
        "conditional = [false, true]\node = true\nn_samples = 24\nn_test = 8\nrtol = 1e-2\ncolumns = 4\n\n"
    )
    path.write_text(plan + config_lib.to_toml(config_lib.load(None, [], base=json.loads(json.dumps(TINY)))))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "nonnormal.cli",
            "study",
            "--config",
            str(path),
            "--out",
            str(tmp_path / "s"),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "s" / "study.json").read_text())
    assert len(out["rows"]) == 2 * 2 * 2 * 2  # pairs x seeds x (uncond, cond) x (walk, ode)
    for r in out["rows"]:
        for key in ("class_tv_train", "rare_share", "rare_share_train", "rare_recall", "precision", "recall"):
            assert isinstance(r[key], float) and 0 <= r[key] <= 1, (key, r)
        assert r["rare_share_train"] == pytest.approx(6 / 326)
    assert {r["conditional"] for r in out["rows"]} == {False, True}
    cond = {(r["pair"], r["seed"], r["sampler"]): r for r in out["rows"] if r["conditional"]}
    uncond = {(r["pair"], r["seed"], r["sampler"]): r for r in out["rows"] if not r["conditional"]}
    assert all(cond[k]["bpd_ode"] != uncond[k]["bpd_ode"] for k in cond)  # different models, different likelihoods
    kinds = {c["kind"] for c in out["comparisons"]}
    assert kinds == {"pairs", "conditional", "profile"}
    assert any("rare classes" in f for f in out["findings"])
    assert (tmp_path / "s" / "models" / "laplace-laplace-T4-seed1-cond").is_dir()
    md = (tmp_path / "s" / "study.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| pair |"))
    assert "| conditional |" in header and "training profile" in md  # the axis is a column; the profile a reference


def test_a_frontier_refuses_conditional_models_in_one_line(tmp_path):
    from nonnormal.frontier import Frontier
    from nonnormal.frontier_plan import FrontierPlan

    plan = Plan(pairs=["gaussian/gaussian"], T_train=[4], seeds=[0], conditional=[False, True]).check()
    with pytest.raises(NonnormalError, match="a frontier compares unconditional models") as err:
        Frontier(tmp_path, FrontierPlan(), plan, json.loads(json.dumps(TINY)))
    assert "\n" not in str(err.value)


def test_a_cache_written_before_the_class_axis_is_recomputed_not_reused_without_class_metrics(tmp_path):
    """Before the study gave the class metrics its classifier and labels, its cache held them skipped
    ("no classifier was given"); such a value is stale now, not silently reused with empty class columns."""
    from nonnormal.cli import main
    from nonnormal.study import current_sample_metrics

    plan = (
        '[study]\npairs = ["gaussian/gaussian"]\nT_train = [4]\nseeds = [0]\node = false\nn_samples = 8\n'
        "n_test = 8\nrtol = 1e-2\ncolumns = 4\n\n"
    )
    cfg, out = tmp_path / "tiny.toml", tmp_path / "s"
    cfg.write_text(plan + config_lib.to_toml(config_lib.load(None, [], base=json.loads(json.dumps(TINY)))))
    args = ["study", "--config", str(cfg), "--out", str(out), "--quiet"]
    assert main(args) == 0
    result = json.loads((out / "study.json").read_text())
    fresh = result["rows"][0]
    (said,) = [f for f in result["findings"] if "has one seed, so no interval" in f]
    assert "nan" not in said and "CI" not in said  # one seed: no interval to print
    (entry,) = (out / "cache").rglob("samples-*.json")
    saved = json.loads(entry.read_text())
    old = saved["value"]
    for key in ("class_tv_train", "class_tv_test", "rare_share", "rare_share_train", "rare_recall"):
        old["values"][key] = None
    old["skipped"].update(
        class_tv_train="no classifier was given", rare_share="no classifier was given", rare_recall=NO_LABELS
    )
    entry.write_text(json.dumps(saved))
    assert current_sample_metrics(old, labelled=True) is None
    assert current_sample_metrics(old, labelled=False) == old  # unlabelled data: those skips are right
    assert main(args + ["--force"]) == 0
    again = json.loads((out / "study.json").read_text())["rows"][0]
    for key in ("class_tv_train", "rare_share", "rare_recall"):
        assert again[key] == fresh[key] is not None, key


def test_a_conditional_study_scores_given_the_test_labels_and_samples_one_coupled_profile(tmp_path, monkeypatch):
    """Every conditional model's bits/dim (ODE and bound) get the test images' own labels; every model's
    samples (every pair and seed) get the same labels, in the training split's profile; the class metrics
    use the classifier of the long tail's balanced base."""
    from nonnormal import diffusion as diffusion_lib
    from nonnormal.metrics import features as features_lib

    seen = {"ode": [], "bound": [], "sample": [], "features": []}

    def spy(name, method):
        def wrapped(self, *args, **kw):
            labels = (kw.get("extra_args") or {}).get("class_labels")
            seen[name].append((args[1] if name != "sample" else args[1][0], labels))
            return method(self, *args, **kw)

        return wrapped

    for name, attr in (("ode", "bits_per_dim"), ("bound", "bound_bits_per_dim"), ("sample", "sample")):
        monkeypatch.setattr(diffusion_lib.Diffusion, attr, spy(name, getattr(diffusion_lib.Diffusion, attr)))
    features_for = features_lib.features_for
    monkeypatch.setattr(
        features_lib, "features_for", lambda data, **kw: seen["features"].append(data.name) or features_for(data, **kw)
    )
    plan = Plan(
        pairs=["gaussian/gaussian", "laplace/laplace"],
        T_train=[4],
        seeds=[0, 1],
        conditional=[True],
        ode=False,
        n_samples=20,
        n_test=8,
        rtol=1e-2,
        columns=4,
    ).check()
    study = Study(tmp_path, plan, json.loads(json.dumps(TINY)), progress=False)
    rows = study.run()["rows"]
    assert len(rows) == 4 and all(r["conditional"] and r["rare_share"] is not None for r in rows)
    test_labels = study.data.labels("test")[:8]
    for name in ("ode", "bound"):
        assert len(seen[name]) == 4
        for x, labels in seen[name]:
            assert torch.equal(x, study.x_test) and torch.equal(labels, test_labels)
    labels = [y for n, y in seen["sample"] if n == 20]
    assert len(labels) == 4 and all(torch.equal(y, labels[0]) for y in labels)  # coupled: one set of labels
    train = torch.bincount(study.data.labels("train"), minlength=10).double()
    share = torch.bincount(labels[0], minlength=10).double()
    assert ((share - 20 * train / train.sum()).abs() <= 1 + 1e-9).all()  # each class its share to one sample
    assert seen["features"] == ["digits"]  # the balanced base's classifier, not the long tail's
