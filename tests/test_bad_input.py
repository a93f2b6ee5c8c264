"""Bad input through the command line: every case exits 2 with one line on stderr, no traceback,
and every file that existed before is byte-for-byte unchanged (nothing lost, nothing overwritten).

If a case fails, the command either crashed (a traceback a user would see), printed a multi-line
message, accepted input it should refuse, or touched a file it had no business touching.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from nonnormal.cli import main

TINY = """
[data]
dataset = "digits"
[net]
name = "unet"
width = 8
ch_mult = [1]
attn_resolutions = []
[diffusion]
T = 8
[train]
steps = 2
batch = 16
warmup = 1
checkpoint_every = 2
log_every = 1
device = "cpu"
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a tiny trained run, a corrupt run, user files, odd files; built once."""
    root = tmp_path_factory.mktemp("bad")
    (root / "tiny.toml").write_text(TINY)
    assert main(["train", "--config", str(root / "tiny.toml"), "--out", str(root / "run"), "--quiet"]) == 0
    assert main(["sample", str(root / "run"), "--n", "2", "--quiet", "--device", "cpu"]) == 0
    cond = ["--set", "net.num_classes=10", "--out", str(root / "cond"), "--quiet"]
    assert main(["train", "--config", str(root / "tiny.toml"), *cond]) == 0  # class-conditional, no label dropout
    (root / "afile").write_text("I am a file\n")
    (root / "garbage.npz").write_bytes(b"not an npz at all")
    (root / "bad.toml").write_text("this is = = not toml\n")
    (root / "bogus-section.toml").write_text("[bogus]\nx = 1\n")
    (root / "bad-study.toml").write_text("[study]\nbogus = 1\n")
    (root / "raises.py").write_text("raise RuntimeError('plugin exploded')\n")
    (root / "exits.py").write_text("import sys\nsys.exit(0)\n")
    os.mkfifo(root / "fifo")
    user = root / "user-folder"
    user.mkdir()
    (user / "config.toml").write_text("# my own notes\n")
    (user / "metrics.jsonl").write_text('{"mine": 1}\n')
    for name, damage in (("truncated", "truncate"), ("no-ema", "drop-ema"), ("mismatch", "mismatch")):
        run = root / name
        shutil.copytree(root / "run", run)
        _damage(run, damage)
    (root / "cifar-not-tar").write_text("hello")
    from PIL import Image

    (root / "run" / "eval.json").write_text('{"step": 2}\n')  # a result of the run's newest step
    (root / "mixed").mkdir()
    Image.new("L", (8, 8)).save(root / "mixed" / "gray.png")
    Image.new("RGB", (8, 8)).save(root / "mixed" / "rgb.png")
    return root


def _checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.suffix == ".safetensors")


def _damage(run: Path, how: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    for ckpt in _checkpoints(run):
        if how == "truncate":
            data = ckpt.read_bytes()
            ckpt.write_bytes(data[: len(data) // 2])
            continue
        with safe_open(str(ckpt), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if how == "drop-ema":
            tensors = {k: v for k, v in tensors.items() if not k.startswith("ema.")}
        else:
            key = next(k for k in tensors if k.startswith("model.") and tensors[k].ndim == 4)
            tensors[key] = torch.zeros(tuple(s + 1 for s in tensors[key].shape))
        save_file(tensors, str(ckpt), metadata=meta)


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file():  # the FIFO is checked by its type below
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# (id, argv with {R} for the world folder); each must be refused
CASES = [
    # arguments
    ("T-zero", "train --config {R}/tiny.toml --out {R}/n1 --T 0"),
    ("T-negative", "train --config {R}/tiny.toml --out {R}/n1 --T -5"),
    ("T-huge", "train --config {R}/tiny.toml --out {R}/n1 --T 1000000000000"),
    ("T-float", "train --config {R}/tiny.toml --out {R}/n1 --T 1e20"),
    ("batch-huge", "train --config {R}/tiny.toml --out {R}/n1 --batch 1000000000"),
    ("batch-zero", "train --config {R}/tiny.toml --out {R}/n1 --batch 0"),
    ("steps-zero", "train --config {R}/tiny.toml --out {R}/n1 --steps 0"),
    ("law-unknown", "train --config {R}/tiny.toml --out {R}/n1 --law nope"),
    ("law-no-fourth-moment", "train --config {R}/tiny.toml --out {R}/n1 --law student_t:nu=3"),
    ("law-param-nan", "train --config {R}/tiny.toml --out {R}/n1 --law student_t:nu=nan"),
    ("law-param-text", "train --config {R}/tiny.toml --out {R}/n1 --law student_t:nu=abc"),
    ("law-param-unknown", "train --config {R}/tiny.toml --out {R}/n1 --law laplace:scale=2"),
    ("p-bounded", "train --config {R}/tiny.toml --out {R}/n1 --q uniform --p uniform"),
    ("p-no-density", "train --config {R}/tiny.toml --out {R}/n1 --law rademacher"),
    ("law-and-q", "train --config {R}/tiny.toml --out {R}/n1 --law laplace --q gaussian"),
    ("schedule-unknown", "train --config {R}/tiny.toml --out {R}/n1 --schedule nope"),
    ("schedule-reversed", "train --config {R}/tiny.toml --out {R}/n1 --schedule vdm:gamma_min=5:gamma_max=1"),
    ("lr-negative", "train --config {R}/tiny.toml --out {R}/n1 --set train.lr=-1"),
    ("lr-nan", "train --config {R}/tiny.toml --out {R}/n1 --set train.lr=nan"),
    ("ema-one", "train --config {R}/tiny.toml --out {R}/n1 --set train.ema=1"),
    ("keep-zero", "train --config {R}/tiny.toml --out {R}/n1 --set train.keep=0"),
    ("section-unknown", "train --config {R}/tiny.toml --out {R}/n1 --set nope.x=1"),
    ("key-unknown", "train --config {R}/tiny.toml --out {R}/n1 --set train.nope=1"),
    ("type-wrong", "train --config {R}/tiny.toml --out {R}/n1 --set train.steps=abc"),
    ("override-format", "train --config {R}/tiny.toml --out {R}/n1 --set badformat"),
    ("device-unknown", "train --config {R}/tiny.toml --out {R}/n1 --device tpu"),
    ("net-width", "train --config {R}/tiny.toml --out {R}/n1 --set net.width=-4"),
    ("net-halvings", "train --config {R}/tiny.toml --out {R}/n1 --set net.ch_mult=[1,2,2,2,2]"),
    ("net-unknown", "train --config {R}/tiny.toml --out {R}/n1 --set net.name=nope"),
    ("net-list-type", "train --config {R}/tiny.toml --out {R}/n1 --set net.ch_mult=[1.5]"),
    ("rule-unknown", "train --config {R}/tiny.toml --out {R}/n1 --set diffusion.rule=nope"),
    ("loss-unknown", "train --config {R}/tiny.toml --out {R}/n1 --set diffusion.loss=nope"),
    ("spacing-unknown", "train --config {R}/tiny.toml --out {R}/n1 --set diffusion.spacing=nope"),
    ("dtype-unknown", "train --config {R}/tiny.toml --out {R}/n1 --set train.dtype=float16"),
    (
        "continuous-cusp",
        "train --config {R}/tiny.toml --out {R}/n1 --law gennorm:beta=0.5 --set diffusion.loss=continuous",
    ),
    # configs and datasets
    ("config-missing", "train --config {R}/nope.toml --out {R}/n1"),
    ("config-invalid", "train --config {R}/bad.toml --out {R}/n1"),
    ("config-section", "train --config {R}/bogus-section.toml --out {R}/n1"),
    ("dataset-unknown", "train --config {R}/tiny.toml --out {R}/n1 --dataset nope"),
    ("dataset-folder-missing", "train --config {R}/tiny.toml --out {R}/n1 --dataset folder:path={R}/nowhere"),
    ("dataset-cifar-not-tar", "train --config {R}/tiny.toml --out {R}/n1 --dataset cifar10:path={R}/cifar-not-tar"),
    ("dataset-npz-garbage", "train --config {R}/tiny.toml --out {R}/n1 --dataset npz:path={R}/garbage.npz"),
    ("toy2d-with-unet", "train --config {R}/tiny.toml --out {R}/n1 --dataset toy2d:name=moons"),
    ("dataset-folder-mixed", "train --config {R}/tiny.toml --out {R}/n1 --dataset folder:path={R}/mixed"),
    # folders
    ("out-is-file", "train --config {R}/tiny.toml --out {R}/afile"),
    ("out-under-file", "train --config {R}/tiny.toml --out {R}/afile/sub"),
    ("out-user-folder", "train --config {R}/tiny.toml --out {R}/user-folder"),
    ("out-existing-run", "train --config {R}/tiny.toml --out {R}/run"),
    ("resume-other-config", "train --out {R}/run --resume --config {R}/tiny.toml --T 7"),
    # checkpoints
    ("sample-truncated", "sample {R}/truncated --n 2 --device cpu --out {R}/s1"),
    ("sample-mismatch", "sample {R}/mismatch --n 2 --device cpu --out {R}/s1"),
    ("eval-no-ema", "eval {R}/no-ema --device cpu --out {R}/e1.json"),
    ("resume-mismatch", "train --out {R}/mismatch --resume --steps 4"),
    ("sample-missing-run", "sample {R}/nope --n 2"),
    ("eval-missing-run", "eval {R}/nope"),
    ("sample-run-is-file", "sample {R}/afile --n 2"),
    ("sample-n-zero", "sample {R}/run --n 0 --out {R}/s1"),
    ("sample-T-zero", "sample {R}/run --T 0 --out {R}/s1"),
    ("sample-law-unknown", "sample {R}/run --law nope --out {R}/s1"),
    ("sample-rule-unknown", "sample {R}/run --rule nope --out {R}/s1"),
    ("sample-out-file", "sample {R}/run --out {R}/afile"),
    ("sample-exists", "sample {R}/run --n 2 --device cpu"),
    ("eval-rtol-negative", "eval {R}/run --rtol -1 --out {R}/e1.json"),
    ("eval-rtol-nan", "eval {R}/run --rtol nan --out {R}/e1.json"),
    ("eval-n-test-zero", "eval {R}/run --n-test 0 --out {R}/e1.json"),
    ("eval-out-folder", "eval {R}/run --out {R}/user-folder"),
    ("eval-out-no-parent", "eval {R}/run --out {R}/nowhere/e.json"),
    ("eval-exists-newest-step", "eval {R}/run --n-test 2 --no-quality --device cpu"),
    # other commands
    ("kl-unknown", "kl nope laplace"),
    ("kl-bounded-p", "kl uniform uniform"),
    ("kl-u-text", "kl gaussian laplace --u abc"),
    ("invariance-steps", "invariance --steps 0,4 --out {R}/i1"),
    ("invariance-paths", "invariance --paths 3 --out {R}/i1"),
    ("compare-pair-format", "compare --pairs gaussian --out {R}/c1"),
    ("compare-pair-law", "compare --pairs gaussian/nope --out {R}/c1"),
    ("plugin-missing", "--plugin nope_not_a_module laws"),
    ("plugin-raises", "--plugin {R}/raises.py laws"),
    ("study-bad-key", "study --config {R}/bad-study.toml --out {R}/st1"),
    ("unknown-flag", "laws --bogus"),
    # found by a hostile review
    ("export-onto-run", "export {R}/run --diffusers {R}/run --force"),
    ("export-onto-parent", "export {R}/run --diffusers {R} --force"),
    ("eval-out-fifo", "eval {R}/run --out {R}/fifo --force --n-test 2 --no-quality"),
    ("seed-negative", "train --config {R}/tiny.toml --out {R}/n1 --seed -1"),
    ("seed-huge", "sample {R}/run --seed 99999999999999999999 --out {R}/s1"),
    ("n-samples-huge", "eval {R}/run --n-samples 100000000 --out {R}/e1.json"),
    ("paths-huge", "invariance --paths 99999999999 --out {R}/i1"),
    ("seeds-huge", "compare --seeds 1000000000 --out {R}/c1"),
    ("law-empty", "train --config {R}/tiny.toml --out {R}/n1 --law {EMPTY}"),
    ("pairs-empty", "compare --pairs {EMPTY} --out {R}/c1"),
    ("law-param-twice", "train --config {R}/tiny.toml --out {R}/n1 --law student_t:nu=5:nu=6"),
    ("newline-in-path", "sample {R}/no{NL}run --n 2"),
    ("newline-in-config", "train --config {R}/no{NL}file.toml --out {R}/n1"),
    ("plugin-exits", "--plugin {R}/exits.py laws"),
    ("kl-u-nan", "kl gaussian laplace --u nan,1"),
    ("config-is-folder", "train --config {R}/user-folder --out {R}/n1"),
    ("invariance-steps-twice", "invariance --steps 4,4 --out {R}/i1"),
    # found by the review of the samplers, kernels and classes
    ("fit-conditional-null-untrained", "fit {R}/cond --T 2 --n 4 --no-bound --device cpu --quiet"),
    ("fit-run-is-file", "fit {R}/afile --T 2"),
    ("fit-family-unknown", "fit {R}/run --family x --T 2"),
    ("fit-n-one", "fit {R}/run --n 1"),
    ("sample-eta-nan", "sample {R}/run --sampler ddim --eta nan --out {R}/s1"),
    ("sample-eta-with-heun", "sample {R}/run --sampler heun --eta 0.5 --out {R}/s1"),
    ("sample-law-with-heun", "sample {R}/run --sampler heun --law laplace --out {R}/s1"),
    ("sample-steps-with-ode", "sample {R}/run --sampler ode --steps 4 --out {R}/s1"),
    ("sample-sampler-unknown", "sample {R}/run --sampler nope --out {R}/s1"),
    ("eval-eta-over-one", "eval {R}/run --sampler ddim --eta 1.5 --out {R}/e1.json"),
    ("presets-unknown", "presets nope"),
    ("config-preset-unknown", "train --config nope-preset --out {R}/n1"),
]


@pytest.mark.parametrize("case,argv", CASES, ids=[c for c, _ in CASES])
def test_refused_with_one_line(world, case, argv, capsys):
    before = _snapshot(world)
    capsys.readouterr()
    args = [a.replace("{NL}", "\n") for a in argv.format(R=world, EMPTY="{EMPTY}", NL="{NL}").split()]
    args = ["" if a == "{EMPTY}" else a for a in args]
    try:
        code = main(args)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, f"{case}: exit {code}, stderr: {err[-2000:]}"
    assert len(lines) == 1, f"{case}: {len(lines)} lines on stderr:\n{err[-2000:]}"
    assert "Traceback" not in err and lines[0].startswith("nonnormal"), err
    after = _snapshot(world)
    changed = [k for k in before if after.get(k) != before[k]]
    assert not changed, f"{case} changed or removed {changed}"
    assert stat.S_ISFIFO(os.stat(world / "fifo").st_mode), f"{case} replaced the FIFO"
    for p in ("n1", "s1", "e1.json", "i1", "c1", "st1", "afile/sub"):  # nothing half-created
        assert not (world / p).exists() or p in before, f"{case} left {p}"


@pytest.mark.parametrize(
    "argv",
    ["kl sech laplace", "train --config {R}/tiny.toml --out {R}/n1 --schedule sechy", "sample {R}/run --law sech"],
)
def test_an_unknown_name_points_to_plugins(world, argv, capsys):
    """Issue 17 item 7: a law, schedule or network that may live in a plugin: the error says --plugin."""
    assert main(argv.format(R=world).split()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown" in err and "--plugin FILE.py" in err


def test_case_count():
    assert len(CASES) >= 60
