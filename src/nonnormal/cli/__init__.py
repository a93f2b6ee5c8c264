"""The ``nonnormal`` command: parses, validates, calls the library. No math lives here.

One module per group of commands: :mod:`.runs` (train, sample, eval, export) and :mod:`.studies`
(laws, kl, presets, invariance, compare, study); :mod:`.common` holds their shared checks.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import NonnormalError
from ..jobs import AGAIN
from .fit import add_parser as add_fit_parser
from .frontier import add_parser as add_frontier_parser
from .runs import cmd_eval, cmd_export, cmd_sample, cmd_train
from .studies import cmd_compare, cmd_invariance, cmd_kl, cmd_laws, cmd_presets, cmd_study


def _seed(text: str) -> int:
    """A seed: an integer in [0, 2^32) (numpy's and every generator's range)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed must be an integer, got {text!r}") from None
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"a seed must lie in [0, 2^32), got {v}")
    return v


def _count(lo: int, hi: int):
    """An integer flag with bounds checked before any work (a size that cannot run is refused with the number)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must lie in [{lo:,}, {hi:,}], got {v:,}")
        return v

    return parse


def _text(text: str) -> str:
    """A non-empty value: an empty string is a mistake, not "use the default"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (leave the flag out for the default)")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, and where to look) and exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="nonnormal", description="Non-normal diffusion models.")
    parser.add_argument("--version", action="version", version=f"nonnormal {__version__}")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module (or .py file) that registers laws, schedules, networks or samplers; repeatable; "
        "runs record it, so later commands on the run load it again",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("laws", help="list the increment laws")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=cmd_laws)

    p = sub.add_parser("presets", help="list the packaged configs (--config NAME), or print one")
    p.add_argument("name", nargs="?", help="print this preset's TOML (copy it to change it)")
    p.set_defaults(handler=cmd_presets)

    p = sub.add_parser("kl", help="the per-step divergence K(u) of a (q, p) pair of laws")
    p.add_argument("q", help="law of the data walk's steps, e.g. uniform")
    p.add_argument("p", help="law of the model walk's steps, e.g. laplace")
    p.add_argument("--u", default="0,0.5,1,2,4", help="comma-separated standardized shifts u")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_kl)

    p = sub.add_parser("invariance", help="forward walks with non-normal increments against their Gaussian limit")
    p.add_argument(
        "--laws",
        type=_text,
        default="laplace,uniform,rademacher",
        help="comma-separated laws (gaussian is always added)",
    )
    p.add_argument("--steps", default="4,16,64,256", help="comma-separated step counts T")
    p.add_argument("--schedule", type=_text, default="vdm", help="noise schedule: vdm, cosine, ddpm-linear, brownian")
    p.add_argument("--paths", type=_count(16, 10_000_000), default=200_000, help="number of simulated walks")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", type=_text, default=None, help="output folder (default runs/invariance-<timestamp>)")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_invariance)

    def run_options(p, steps_help, default_config="the built-in defaults"):
        p.add_argument(
            "--config",
            type=_text,
            default=None,
            help=f"TOML file or preset name (nonnormal presets lists them; default {default_config}); "
            "flags below override it",
        )
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
        p.add_argument(
            "--dataset", type=_text, default=None, help="dataset spec, e.g. digits, mnist5k, cifar10:path=FILE"
        )
        p.add_argument(
            "--schedule", type=_text, default=None, help="noise schedule: vdm, cosine, ddpm-linear, brownian"
        )
        p.add_argument("--T", type=int, default=None, help="number of steps of the walk")
        p.add_argument("--steps", type=int, default=None, help=steps_help)
        p.add_argument("--batch", type=int, default=None, help="global batch size")
        p.add_argument("--seed", type=_seed, default=None, help="training seed")
        p.add_argument("--device", type=_text, default=None, help="auto, cpu, cuda, cuda:N")
        p.add_argument("--bf16", action="store_true", help="bf16 autocast")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    def jobs_option(p):
        p.add_argument(
            "--jobs",
            type=_count(1, 64),
            default=1,
            help="models trained at once, one process each (default 1; on a CPU, --jobs 2 on two cores trains "
            "small models about 1.4x faster than one process with two threads)",
        )

    p = sub.add_parser("train", help="train a model (launch with torchrun for several processes)")
    run_options(p, "optimizer steps")
    p.add_argument("--law", type=_text, default=None, help="increment law of both walks")
    p.add_argument("--q", type=_text, default=None, help="increment law of the data walk")
    p.add_argument("--p", type=_text, default=None, help="increment law of the model walk")
    p.add_argument("--out", type=_text, default=None, help="run folder (default runs/train-<timestamp>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint (from step 0 if it has none yet)",
    )
    p.add_argument("--tensorboard", action="store_true", help="also log metrics to OUT/tensorboard")
    p.set_defaults(handler=cmd_train, again="continue with --resume (same --out)")

    def sampler_options(p, what):
        from .. import samplers

        p.add_argument(
            "--sampler",
            type=_text,
            default="walk",
            help=f"sampler for {what}: {', '.join(samplers.names())} or a plugin's (default walk: ancestral, law p)",
        )
        p.add_argument(
            "--steps",
            type=_count(1, 1_000_000),
            default=None,
            help="grid steps of walk, ddim, heun, dpmsolver++, ... (default: the run's T); NFE is printed",
        )
        p.add_argument("--eta", type=float, default=None, help="ddim's eta in [0, 1] (0: deterministic, 1: the walk)")
        p.add_argument(
            "--kernel",
            type=_text,
            default=None,
            metavar="fitted|FILE",
            help="the walk's steps from a kernel fitted per step instead of a fixed law: fitted, the one `nonnormal fit` "
            "saved for the grid (RUN/kernels/T<N>-<spacing>-<family>.json; with --pretrained DIR, "
            "runs/pretrained-<DIR name>/kernels/), refused if several families were fitted; or FILE, one such file",
        )
        p.add_argument(
            "--spacing",
            type=_text,
            default=None,
            help="time grid: uniform, log-snr, quadratic, ddpm (default: the run's)",
        )
        p.add_argument(
            "--ode-method",
            type=_text,
            default=None,
            help="ODE method: dopri5 (adaptive, default), heun, euler, rk4, ...",
        )
        p.add_argument(
            "--ode-steps",
            type=_count(1, 1_000_000),
            default=None,
            help="steps of a fixed-step ODE method (default 100)",
        )
        p.add_argument("--rtol", type=float, default=1e-5, help="ODE tolerance of an adaptive method (rtol = atol)")

    def tail_options(p, out_help: str, force_help: str, handler) -> None:
        p.add_argument("--device", type=_text, default="auto")
        p.add_argument("--out", type=_text, default=None, help=out_help)
        p.add_argument("--force", action="store_true", help=force_help)
        p.add_argument("--quiet", action="store_true")
        p.set_defaults(handler=handler)

    p = sub.add_parser("sample", help="sample from a trained run: a PNG grid and an .npz")
    p.add_argument("run", nargs="?", help="run folder (or give --pretrained)")
    p.add_argument(
        "--pretrained",
        type=_text,
        default=None,
        metavar="DIR",
        help="a local diffusers pipeline or UNet folder instead of a run (needs the diffusers extra)",
    )
    p.add_argument("--n", type=_count(1, 1_000_000), default=64, help="number of samples")
    p.add_argument("--T", type=int, default=None, help="steps (default: the run's T)")
    p.add_argument("--rule", type=_text, default=None, help="posterior or euler (default: the run's)")
    p.add_argument("--law", type=_text, default=None, help="increment law of the reverse walk (default: the run's p)")
    p.add_argument("--seed", type=_seed, default=0, help="one seed couples every law: same prior, same uniforms")
    p.add_argument(
        "--class",
        dest="class_spec",
        type=_text,
        default=None,
        metavar="C",
        help="a conditional run's class: C, C1,C2,... (one per image) or 'all' (the classes in turn); grid by class",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale with --class (0: unconditional, 1: conditional, the default; >1: stronger)",
    )
    sampler_options(p, "the samples")
    tail_options(
        p, "output folder (default RUN/samples-<law>-T<T>-seed<seed>)", "overwrite earlier samples in --out", cmd_sample
    )

    p = sub.add_parser("eval", help="test-set bits/dim (ODE and bound) and sample quality (FD, KID) of a run")
    p.add_argument("run", nargs="?", help="run folder (or give --pretrained)")
    p.add_argument(
        "--pretrained",
        type=_text,
        default=None,
        metavar="DIR",
        help="a local diffusers pipeline or UNet folder instead of a run (needs --dataset)",
    )
    p.add_argument("--dataset", type=_text, default=None, help="test data for --pretrained, e.g. cifar10:path=DIR")
    p.add_argument("--n-test", type=_count(1, 10_000_000), default=None, help="first N test images (default all)")
    p.add_argument(
        "--n-samples", type=_count(2, 1_000_000), default=None, help="samples for FD/KID (default: test-set size)"
    )
    p.add_argument("--T", type=int, default=None, help="steps for the bound and the samples (default: the run's T)")
    p.add_argument("--seed", type=_seed, default=0)
    sampler_options(p, "FD/KID's samples (the ODE options also set bpd_ode's solver)")
    p.add_argument("--no-quality", action="store_true", help="skip sampling and FD/KID")
    tail_options(p, "JSON file (default RUN/eval.json)", "overwrite an earlier eval.json", cmd_eval)

    p = sub.add_parser("export", help="write a trained run as a diffusers pipeline folder")
    p.add_argument("run", help="run folder")
    p.add_argument("--diffusers", required=True, metavar="OUT", help="the pipeline folder to write")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("compare", help="the main job: train, evaluate and compare (q, p) pairs side by side")
    run_options(p, "optimizer steps per pair", "the preset compare-digits")
    jobs_option(p)
    p.add_argument(
        "--pairs",
        type=_text,
        default=None,
        help="comma-separated q/p pairs (default: the paper's four; add e.g. logistic/logistic,student_t/student_t)",
    )
    p.add_argument(
        "--seeds",
        type=_count(1, 100),
        default=2,
        help="training seeds per pair (seed, seed+1, ...): 2 or more give intervals",
    )
    p.add_argument(
        "--n-samples",
        type=_count(2, 1_000_000),
        default=None,
        help="samples per pair for FD/KID (default: test-set size)",
    )
    p.add_argument(
        "--n-test", type=_count(1, 10_000_000), default=None, help="first N test images for bits/dim (default all)"
    )
    p.add_argument("--rtol", type=float, default=1e-3, help="ODE tolerance for bits/dim (rtol = atol; eval uses 1e-5)")
    p.add_argument("--sample-seed", type=_seed, default=0, help="seed of the samples (shared by every pair)")
    p.add_argument(
        "--out",
        type=_text,
        default=None,
        help="output folder (default runs/compare-<timestamp>); an unfinished one resumes",
    )
    p.add_argument("--force", action="store_true", help="rebuild the table in a finished --out")
    p.set_defaults(handler=cmd_compare, again=AGAIN)

    p = sub.add_parser(
        "study", help="what the law changes: pairs x training T x seeds, sampled with several laws and T"
    )
    p.add_argument(
        "what",
        nargs="?",
        default="grid",
        choices=("grid", "bias"),
        help="grid (default): train and measure the grid of a study config; bias: the bias of non-L2 "
        "losses on exact-score mixtures",
    )
    run_options(p, "optimizer steps per model", "the preset study-digits, or study-quick with --quick")
    jobs_option(p)
    p.add_argument("--quick", action="store_true", help="the whole pipeline at a tiny size (preset study-quick)")
    p.add_argument(
        "--seeds", type=_count(1, 100), default=None, help="train seeds 0..N-1 (overrides the config's study.seeds)"
    )
    p.add_argument(
        "--pairs",
        type=_text,
        default=None,
        help="comma-separated q/p pairs (overrides study.pairs; bias: default the paper's four)",
    )
    p.add_argument(
        "--Ts",
        type=_text,
        default=None,
        help="comma-separated step counts (overrides study.T_train; bias: default 10,30,100,1000)",
    )
    p.add_argument(
        "--n", type=_count(16, 1_000_000), default=None, help="bias: samples per (pair, T, predictor) (default 1000)"
    )
    p.add_argument(
        "--out",
        type=_text,
        default=None,
        help="output folder (default runs/study-<timestamp>); an unfinished one resumes",
    )
    p.add_argument("--force", action="store_true", help="rebuild the outputs in a finished --out")
    p.set_defaults(handler=cmd_study, again=AGAIN)

    add_fit_parser(sub, count=_count, seed=_seed, text=_text)
    add_frontier_parser(sub, count=_count, text=_text, again=AGAIN, jobs_option=jobs_option)
    return parser


def _one_line(text) -> str:
    """A message on one line whatever the paths in it hold (a newline in a file name is shown as \\n)."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


UNKNOWN_NAMES = ("unknown increment law ", "unknown schedule ", "unknown network ")


def _plugin_hint(err: NonnormalError) -> str:
    """Where a law, schedule or network name is unknown: how to bring in one that a plugin registers."""
    if str(err).startswith(UNKNOWN_NAMES):
        return "; for one of your own, load the module that registers it: nonnormal --plugin FILE.py COMMAND ..."
    return ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .. import plugins

        plugins.load_entry_points()
        plugins.REQUESTED[:] = plugins.load(args.plugin)
        return args.handler(args)
    except NonnormalError as err:  # exit_code 75: stopped by a signal, continue (the message says how)
        code = getattr(err, "exit_code", 2)
        print(f"nonnormal: {'error: ' if code == 2 else ''}{_one_line(err)}{_plugin_hint(err)}", file=sys.stderr)
        return code
    except OSError as err:  # the environment, not the input: a path, its permissions, free space
        where = f" ({_one_line(err.filename)})" if getattr(err, "filename", None) else ""
        print(
            f"nonnormal: error: {_one_line(err.strerror or err)}{where}: check the path, its permissions and "
            "the free space",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        again = getattr(args, "again", None)  # how a long job continues
        print(f"nonnormal: interrupted{': ' + again if again else ''}", file=sys.stderr)
        return 130
