"""Benchmarks: each compares two things in one process, interleaved, as a ratio of medians.

    python benchmarks/run.py            # all of them (under 10 minutes on two cores)
    python benchmarks/run.py --quick    # a tiny configuration: the smoke test (seconds)

Writes benchmarks/results.json and refreshes benchmarks/RESULTS.md (machine, command, date).
Ratios are time(ours) / time(reference): lower is better. Peers (diffusers) come from the
`bench` extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import interleaved  # noqa: E402
from nonnormal import config  # noqa: E402
from nonnormal.train import Batches, build_loss, build_model, optimizer_step  # noqa: E402

HERE = Path(__file__).parent


class Setup:
    """A model, its optimizer and EMA, and a batch source for one (q, p) pair and image size."""

    def __init__(
        self,
        size: int,
        q: str = "gaussian",
        p: str = "gaussian",
        quick: bool = False,
        T: int = 1000,
        batch: int = 128,
        model: torch.nn.Module | None = None,
    ):
        over = [f'diffusion.q="{q}"', f'diffusion.p="{p}"', f"diffusion.T={T}", f"train.batch={batch}"]
        if quick:
            over += ["net.width=8", "net.attn_resolutions=[]"]
        self.cfg = config.load(None, over)
        torch.manual_seed(0)
        self.model = model if model is not None else build_model(self.cfg, (1, size, size))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.ema = [w.detach().clone() for w in self.model.parameters()]
        self.loss = build_loss(self.cfg)
        levels = 17 if size == 8 else 256
        data = torch.randint(0, levels, (1024, 1, size, size), generator=torch.Generator().manual_seed(0)).to(
            torch.uint8
        )
        self.batches = Batches(
            data, levels, True, self.loss, batch, torch.Generator().manual_seed(0), torch.device("cpu")
        )

    def step(self, amp=None):
        x0, draw, _ = self.batches.next()
        optimizer_step(self.model, self.loss, self.opt, self.ema, x0, draw, 1e-4, 1.0, 0.999, amp or nullcontext())

    def bare(self):
        """The network's own work on one batch: forward, MSE to a fixed target, backward, AdamW."""
        x0, (k, eps), _ = self.batches.next()
        t = k.double() / self.cfg["diffusion"]["T"]

        def fn():
            out = self.model(x0, t.float())
            loss = (out - eps).square().mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

        return fn


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def entry(name, result, target, **extra):
    met = None if target is None else bool(result["ratio"] <= target)
    return {"name": name, "target": target, "met": met, **result, **extra}


def bench_train_overhead(a, results):
    for size in [8] if a.quick else [8, 28]:
        s = Setup(size, quick=a.quick, batch=a.batch)
        ref = Setup(size, quick=a.quick, batch=a.batch, model=copy.deepcopy(s.model))
        r = interleaved(s.step, ref.bare(), a.reps, 1 if size > 8 else a.inner)
        results.append(
            entry(
                f"train_step_overhead_{size}x{size}",
                r,
                1.03,
                params=params(s.model),
                what="full gaussian step (draws, noising, loss, backward, clip, AdamW, EMA) vs "
                "network forward+backward+AdamW on the same batch",
            )
        )


def _ms(fn, n: int = 100) -> float:
    """Mean milliseconds of ``fn`` alone, after warm-up: the profile of one small piece."""
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def _k_ms(q: str, p: str, batch: int) -> float:
    from nonnormal.divergences import divergence

    d, u = divergence(q, p), torch.randn(batch, 1, 8, 8).requires_grad_(True)
    return _ms(lambda: d(u).sum().backward())


def bench_laws(a, results):
    base = Setup(8, quick=a.quick, batch=a.batch)
    k_gauss = _k_ms("gaussian", "gaussian", a.batch)
    for q, p in (("laplace", "laplace"), ("uniform", "laplace"), ("logistic", "student_t")):
        s = Setup(8, q, p, quick=a.quick, batch=a.batch, model=copy.deepcopy(base.model))
        r = interleaved(s.step, base.step, a.reps, a.inner)
        results.append(
            entry(
                f"law_cost_{q}_{p}",
                r,
                1.03,
                k_fwd_bwd_ms=_k_ms(q, p, a.batch),
                gaussian_k_fwd_bwd_ms=k_gauss,
                what=f"{q}/{p} training step vs gaussian/gaussian; k_fwd_bwd_ms: the pair's K(u) "
                "forward+backward on the batch alone",
            )
        )


def bench_sampling(a, results):
    from nonnormal import Diffusion
    from nonnormal.samplers import coupled_noise, walk_sampler

    s = Setup(8, quick=a.quick, batch=a.batch)
    model = s.model.eval()
    x = torch.randn(a.batch, 1, 8, 8)
    steps = 10
    t = torch.full((a.batch,), 0.5)

    def bare():
        with torch.no_grad():
            for _ in range(steps):
                model(x, t)

    forward_ms = _ms(lambda: model(x, t), 10) if not a.quick else float("nan")
    for law in ("gaussian", "laplace", "uniform", "logistic", "student_t", "rademacher"):
        walk = Diffusion("vdm", steps).walk(law)
        g = torch.Generator().manual_seed(0)
        draw = coupled_noise(law, x.shape, g)

        def ours():
            walk_sampler(model, x, walk, noise=coupled_noise(law, x.shape, g))

        r = interleaved(ours, bare, 2 * a.reps, 1)
        with torch.no_grad():
            noise_ms = _ms(lambda: draw(0))
        results.append(
            entry(
                f"sampling_step_{law}",
                r,
                1.03,
                noise_ms=noise_ms,
                forward_ms=forward_ms,
                what=f"{steps} ancestral steps of the {law} walk (coupled noise) vs {steps} bare "
                "forwards; noise_ms: one step's increments alone, forward_ms: one forward alone",
            )
        )


def bench_seeds(a, results):
    """Per-image generators (image i's prior and uniforms from (seed, i)) against one shared generator."""
    from nonnormal import Diffusion, increments
    from nonnormal.samplers import coupled_noise, walk_sampler

    model = Setup(8, quick=a.quick, batch=a.batch).model.eval()
    shape, steps = (a.batch, 1, 8, 8), 10
    d = Diffusion("vdm", steps)
    walk = d.walk()

    def ours():
        d.sample(model, shape, seed=0)

    def one_generator():  # the sampler before per-image seeds: prior and every step from one generator
        g = torch.Generator().manual_seed(0)
        x = increments.get("gaussian").icdf(increments.uniforms(shape, g)).float()
        walk_sampler(model, x, walk, noise=coupled_noise("gaussian", shape, g))

    r = interleaved(ours, one_generator, 2 * a.reps, 1)
    results.append(
        entry(
            f"per_image_seeds_batch{a.batch}",
            r,
            1.05,
            what=f"{steps} ancestral steps at batch {a.batch} on 8x8 digits with a generator per image "
            "(prior and uniforms from (seed, i)) vs one generator for the batch",
        )
    )


def bench_diffusers(a, results):
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        results.append(
            {"name": "peer_diffusers_ddpm_step", "skipped": "diffusers is not installed: pip install -e '.[bench]'"}
        )
        return
    s = Setup(8, quick=a.quick, batch=a.batch)
    peer = Setup(8, quick=a.quick, batch=a.batch, model=copy.deepcopy(s.model))
    sched = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(1)

    def peer_step(model=peer.model, opt=peer.opt, call=lambda m, x, t: m(x, t.float() / 1000)):
        x0, _, _ = peer.batches.next()
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        x_t = sched.add_noise(x0, noise, t)
        loss = (call(model, x_t, t) - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    r = interleaved(s.step, peer_step, a.reps, a.inner)
    results.append(
        entry(
            "peer_diffusers_ddpm_step",
            r,
            1.0,
            what="our full gaussian step vs diffusers "
            "DDPMScheduler.add_noise + eps-MSE + AdamW on the same network (no EMA, no clip on their side)",
        )
    )
    # the same UNet2DModel trained both ways: through nonnormal (net "diffusers-unet2d") and by hand
    from nonnormal.integrations.diffusers import DiffusersUNet, NonNormalScheduler

    width = 8 if a.quick else 32
    torch.manual_seed(0)
    ours = Setup(8, quick=a.quick, batch=a.batch, model=DiffusersUNet((1, 8, 8), block_out_channels=(width, 2 * width)))
    unet = copy.deepcopy(ours.model.unet)
    uopt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    r = interleaved(ours.step, lambda: peer_step(unet, uopt, lambda m, x, t: m(x, t).sample), a.reps, a.inner)
    results.append(
        entry(
            "peer_diffusers_unet2d_whole_stack",
            r,
            None,
            params=params(unet),
            what="our whole gaussian step training a UNet2DModel (net diffusers-unet2d, with EMA and "
            "clipping) vs diffusers' own add_noise + eps-MSE + AdamW on an identical UNet2DModel "
            "(a figure, no target)",
        )
    )
    # one reverse step: the Laplace NonNormalScheduler (coupled increments icdf(Phi(z))) vs DDPMScheduler
    x, eps = torch.randn(a.batch, 1, 8, 8), torch.randn(a.batch, 1, 8, 8)
    ddpm, lap = DDPMScheduler(), NonNormalScheduler(law="laplace")
    gen = torch.Generator().manual_seed(0)
    r = interleaved(
        lambda: lap.step(eps, 500, x, generator=gen),
        lambda: ddpm.step(eps, 500, x, generator=gen),
        2 * a.reps,
        10 * a.inner,
    )
    results.append(
        entry(
            "peer_diffusers_scheduler_step_laplace",
            r,
            None,
            what="one NonNormalScheduler(law=laplace) "
            "step vs one DDPMScheduler step on the same batch (the cost of the law's quantiles; "
            "no network; a figure)",
        )
    )


def bench_likelihood(a, results):
    import numpy as np
    from scipy.integrate import solve_ivp

    from nonnormal import Diffusion
    from nonnormal.data import dequantize
    from nonnormal.data import load as load_dataset
    from nonnormal.ode import gaussian_log_prob
    from nonnormal.train import train

    run = a.outdir / ".cache" / ("likelihood-quick" if a.quick else "likelihood")
    cfg = config.load(
        "compare-digits",  # the packaged preset
        ["train.steps=20" if a.quick else "train.steps=300", "train.checkpoint_every=1000"],
    )
    train(cfg, run, resume=True, progress=False)  # a finished run is reused as it is
    from nonnormal.runs import load_run

    model, run_cfg, _ = load_run(run)
    data = load_dataset("digits")
    n = 16 if a.quick else 256
    x = dequantize(data.unit("test")[:n], 17, torch.Generator().manual_seed(0))
    tol = 1e-3 if a.quick else a.rtol
    diffusion = Diffusion.from_config(run_cfg["diffusion"])
    flow = diffusion.ode(model)  # for the reference's velocity
    D = x[0].numel()
    probe = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)).float() * 2 - 1

    def ours():
        logp, nfe = diffusion.log_likelihood(
            model, x, trace="hutchinson", rtol=tol, atol=tol, generator=torch.Generator().manual_seed(1)
        )
        return logp, nfe

    def reference():  # score_sde's likelihood.py: scipy RK45 on flat numpy state, network through torch
        nfe = 0

        def fun(t, y):
            nonlocal nfe
            nfe += 1
            xt = torch.from_numpy(y[:-n].reshape(x.shape)).float().requires_grad_(True)
            with torch.enable_grad():
                v = flow.velocity(xt, torch.tensor(t, dtype=torch.float64))
                (grad,) = torch.autograd.grad((v * probe).sum(), xt)
            div = (grad * probe).reshape(n, -1).sum(1)
            return np.concatenate([v.detach().numpy().ravel(), div.numpy()]).astype(np.float64)

        y0 = np.concatenate([x.numpy().ravel(), np.zeros(n)]).astype(np.float64)
        sol = solve_ivp(fun, (diffusion.schedule.t_min, 1.0), y0, rtol=tol, atol=tol, method="RK45")
        x1 = torch.from_numpy(sol.y[:-n, -1].reshape(x.shape))
        return gaussian_log_prob(x1) + torch.from_numpy(sol.y[-n:, -1]), nfe

    out = {}
    for label, fn in (("ours", ours), ("reference", reference), ("ours", ours), ("reference", reference)):
        t0 = time.perf_counter()
        logp, nfe = fn()
        dt = time.perf_counter() - t0
        bpd = -logp.double() / (D * math.log(2)) + math.log2(17 / 2)
        out.setdefault(label, []).append(
            {"s": dt, "nfe": nfe, "bpd": float(bpd.mean()), "se": float(bpd.std() / math.sqrt(n))}
        )
    med = {k: sorted(r["s"] for r in v)[len(v) // 2] for k, v in out.items()}
    times = [o["s"] / r["s"] for o, r in zip(out["ours"], out["reference"])]
    o, r = out["ours"][-1], out["reference"][-1]
    results.append(
        entry(
            "likelihood_pf_ode",
            {
                "ratio": med["ours"] / med["reference"],
                "ratio_min": min(times),
                "ratio_max": max(times),
                "ours_s": med["ours"],
                "reference_s": med["reference"],
            },
            1.0,
            n_images=n,
            rtol=tol,
            atol=tol,
            nfe_ours=o["nfe"],
            nfe_reference=r["nfe"],
            bpd_ours=o["bpd"],
            bpd_ours_se=o["se"],
            bpd_reference=r["bpd"],
            bpd_reference_se=r["se"],
            agree_within_se=abs(o["bpd"] - r["bpd"]) < math.hypot(o["se"], r["se"]),
            what="probability-flow bits/dim of digits test images: torchdiffeq dopri5 vs scipy RK45 "
            "on flattened numpy arrays (score_sde's approach), same tolerances, same probe",
        )
    )


def bench_bf16(a, results):
    size = 8 if a.quick else 28
    s = Setup(size, quick=a.quick, batch=a.batch)
    s16 = Setup(size, quick=a.quick, batch=a.batch, model=copy.deepcopy(s.model))
    amp = torch.autocast("cpu", dtype=torch.bfloat16)
    r = interleaved(lambda: s16.step(amp), s.step, max(2, a.reps // 2), 1, warmup=1)
    short = _bf16_short_runs(a)
    results.append(
        entry(
            f"bf16_vs_fp32_train_step_{size}x{size}",
            r,
            None,
            cpu_flags=_cpu_flags(),
            **short,
            what="bf16 autocast training step vs fp32, same network and batch; bpd_*: test bits/dim "
            "(ODE, rtol 1e-3, 256 digits) after the same short digits run in each precision",
        )
    )


def _bf16_short_runs(a) -> dict:
    """The same short run on digits in fp32 and in bf16 autocast, and the bits/dim of each."""
    from nonnormal import Diffusion
    from nonnormal.data import load as load_dataset
    from nonnormal.runs import load_run
    from nonnormal.train import train

    steps, n = (3, 16) if a.quick else (60, 256)
    x = load_dataset("digits").unit("test", n)
    out = {"short_run_steps": steps, "short_run_batch": 64}
    for name, flag in (("fp32", "false"), ("bf16", "true")):
        run = a.outdir / ".cache" / f"short-{name}-{steps}"
        cfg = config.load(
            "compare-digits",  # the packaged preset
            [f"train.steps={steps}", "train.batch=64", f"train.bf16={flag}", "train.checkpoint_every=1000"],
        )
        train(cfg, run, resume=True, progress=False)  # a finished run is reused as it is
        model, run_cfg, state = load_run(run)
        bpd, _ = Diffusion.from_config(run_cfg["diffusion"]).bits_per_dim(
            model, x, 17, generator=torch.Generator().manual_seed(0), trace="hutchinson", rtol=1e-3, atol=1e-3
        )
        out.update(
            {
                f"bpd_{name}": float(bpd.mean()),
                f"bpd_{name}_se": float(bpd.std() / math.sqrt(n)),
                f"train_seconds_{name}": state["train_seconds"],
            }
        )
    return out


def _cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return (
        " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2/avx512/amx"
    )


def bench_memory(a, results):
    size, steps = (8, 2) if a.quick else (28, 3)
    # VmHWM (peak RSS of this process image), not ru_maxrss: a child's ru_maxrss starts at its parent's
    code = f"""
import sys, torch
sys.path.insert(0, {str(HERE)!r})
torch.set_num_threads({a.threads})
from run import Setup
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
base = hwm()
s = Setup({size}, quick={a.quick}, batch={a.batch})
for _ in range({steps}):
    s.step()
print(base, hwm())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    base, peak = (int(v) / 1024 for v in out[-2:])
    results.append(
        {
            "name": f"peak_memory_train_{size}x{size}_batch{a.batch}",
            "ratio": None,
            "target": None,
            "met": None,
            "peak_rss_mib": round(peak, 1),
            "rss_after_imports_mib": round(base, 1),
            "what": "max RSS of a process training the default UNet (a figure)",
        }
    )


def bench_jobs(a, results):
    """Two models of the frontier preset's network trained at once in two processes (``--jobs 2``, one
    thread each) against one after another in this process with ``a.threads`` threads (``--jobs 1``);
    worker start-up (a fresh interpreter importing torch) is counted."""
    import shutil
    import tempfile

    from nonnormal.parallel import Job, train_many

    steps = 10 if a.quick else 150
    net = ["net.width=8", "net.ch_mult=[1]"] if a.quick else ["net.width=16", "net.ch_mult=[1, 2]"]
    over = [*net, "net.attn_resolutions=[]", "diffusion.T=1000", 'diffusion.loss="step"', 'train.device="cpu"']
    over += [f"train.steps={steps}", f"train.batch={a.batch}", "train.warmup=1", 'data.dataset="digits"']
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))

    def run(n_jobs):
        def go():
            folder = tmp / f"jobs{n_jobs}-{time.perf_counter_ns()}"
            jobs = [Job(f"m{i}", config.load(None, [*over, f"train.seed={i}"]), folder / f"m{i}") for i in range(2)]
            train_many(jobs, n_jobs, progress=False, log=lambda line: None)
            shutil.rmtree(folder)

        return go

    try:
        r = interleaved(run(2), run(1), max(2, a.reps // 2), 1, warmup=0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results.append(
        entry(
            "train_jobs2_vs_one_process",
            r,
            0.8,
            steps=steps,
            what=f"2 models x {steps} steps (frontier-digits network, batch {a.batch}): --jobs 2 (two worker "
            f"processes, one thread each, start-up included) vs --jobs 1 ({a.threads} threads, one after another)",
        )
    )


BENCHES = {
    "train": bench_train_overhead,
    "laws": bench_laws,
    "sampling": bench_sampling,
    "seeds": bench_seeds,
    "diffusers": bench_diffusers,
    "likelihood": bench_likelihood,
    "bf16": bench_bf16,
    "memory": bench_memory,
    "jobs": bench_jobs,
}


def write_markdown(path: Path, meta: dict, results: list[dict]) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} threads. "
        f"Command: `{meta['command']}`. Date: {meta['date']}. Total {meta['seconds']:.0f} s."
        + (f" Partial run: {meta['note']}." if meta.get("note") else ""),
        "",
        "Ratios are time(ours) / time(reference), the ratio of medians over repetitions "
        "(min..max of the per-repetition ratios); lower is better.",
        "",
        "| comparison | ratio | min..max | target | met | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['name']} | | | | | skipped: {r['skipped']} |")
            continue
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.3f}"
        spread = "" if r.get("ratio_min") is None else f"{r['ratio_min']:.3f}..{r['ratio_max']:.3f}"
        extra = {
            k: v
            for k, v in r.items()
            if k not in ("name", "ratio", "ratio_min", "ratio_max", "target", "met", "what", "reps", "inner")
        }
        notes = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        lines.append(
            f"| {r['name']} | {ratio} | {spread} | {r.get('target') or ''} | "
            f"{'' if r.get('met') is None else ('yes' if r['met'] else 'NO')} | {notes} |"
        )
    lines += ["", "What each comparison measures:", ""]
    lines += [f"- `{r['name']}`: {r['what']}" for r in results if "what" in r]
    findings = HERE / "FINDINGS.md"
    if findings.exists():
        lines += ["", findings.read_text().strip()]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (fixed and printed)")
    ap.add_argument("--reps", type=int, default=7, help="repetitions per comparison")
    ap.add_argument("--rtol", type=float, default=1e-4, help="ODE tolerance of the likelihood comparison")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/, or a temp folder with --quick)")
    a = ap.parse_args(argv)
    a.inner = 1 if a.quick else 3
    a.batch = 8 if a.quick else 128
    if a.quick:
        a.reps = 2
    names = a.only.split(",") if a.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark {unknown[0]!r}: choose from {', '.join(BENCHES)}")
    a.outdir = Path(a.out) if a.out else HERE
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    t0 = time.time()
    results: list[dict] = []
    for n in names:
        t1 = time.time()
        BENCHES[n](a, results)
        for r in results:
            if r.get("_printed"):
                continue
            r["_printed"] = True
            shown = "" if r.get("ratio") is None else f"ratio {r['ratio']:.3f} (target {r.get('target')})"
            print(f"{r['name']:<40} {shown} {r.get('peak_rss_mib', '')}", flush=True)
        print(f"  [{n}: {time.time() - t1:.0f} s]", flush=True)
    for r in results:
        r.pop("_printed", None)
    out = a.outdir
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({_cpu_flags()}), {platform.system()} "
        f"{platform.release()}",
        "torch": torch.__version__,
        "threads": a.threads,
        "command": "python benchmarks/run.py"
        + (" " + " ".join(argv or sys.argv[1:]) if (argv or sys.argv[1:]) else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": time.time() - t0,
    }
    previous = out / "results.json"
    if a.only and previous.exists() and not a.quick:  # a partial run keeps the other rows, each with its own date
        old = json.loads(previous.read_text())
        for r in results:
            r["measured"] = meta["date"]
        fresh = {r["name"] for r in results}
        kept = [
            {**r, "measured": r.get("measured", old["meta"]["date"])} for r in old["results"] if r["name"] not in fresh
        ]
        results = kept + results
        meta["note"] = (
            f"rows of {', '.join(names)} from this command; the others from earlier runs "
            f"(see each row's measured date; last full run: {old['meta'].get('full_run', old['meta']['date'])})"
        )
        meta["full_run"] = old["meta"].get("full_run", old["meta"]["date"])
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    write_markdown(out / "RESULTS.md", meta, results)
    print(f"wrote {out / 'results.json'} and {out / 'RESULTS.md'} ({meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
