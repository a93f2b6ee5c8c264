"""The fitted kernel as an object: per-step step laws, their increments, the bound's step loss, JSON.

A :class:`FittedKernel` holds, for every step k of one grid (schedule, T, spacing, rule), the
model's step law ``zeta_k ~ s_k * law_k`` in units of the rule's ``c_z``: ``law_k`` the
family's standardized law at the fitted shape, ``s_k^2`` the variance ratio to the rule's own
step. It plugs into

- sampling: :meth:`FittedKernel.increments` gives ``s_k * law_k.icdf(u)`` for uniforms u, the
  ``noise(k)`` of the ancestral walk (``walk_sampler(..., noise=lambda k: kernel.increments(k, u_k))``);
- the bound: :func:`step_loss` is the :class:`~nonnormal.losses.StepKLLoss` whose step k has
  ``K(u) = KL(q(. - u) || s_k law_k)``, for :func:`nonnormal.likelihood.bound_bits_per_dim`; with
  ``s_k = 1`` and ``law_k = p`` it is the pair's own loss, term for term.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import increments
from ..divergences import divergence
from ..errors import NonnormalError
from ..increments import IncrementLaw
from ..losses import StepKLLoss
from .mle import FAMILIES

FORMAT = "nonnormal-kernel-1"
FOLDER = "kernels"  # RUN/kernels/<grid name>-<family>.json (before: <grid name>.json, still read)


class ScaledLaw(IncrementLaw):
    """``scale * law``: the law of ``zeta_k`` of a fitted step (variance ``scale^2``, so not a
    standardized increment law: it is only ever a model's step law in a divergence or a sampler)."""

    def __init__(self, law: IncrementLaw, scale: float):
        self.base, self.scale = law, float(scale)  # the standardized law and the factor on it
        self.name, self.has_density, self.symmetric = law.name, law.has_density, law.symmetric
        self.support = tuple(self.scale * e for e in law.support)
        self.kinks = tuple(self.scale * c for c in law.kinks)
        self.breaks = tuple(self.scale * c for c in law.breaks)
        self.tail_exponent, self.moment_bound = law.tail_exponent, law.moment_bound
        self.fourth_moment = None if law.fourth_moment is None else law.fourth_moment * self.scale**4

    @property
    def spec(self) -> str:
        return f"{self.base.spec}*{self.scale!r}"

    @property
    def tails(self):
        def side(t):
            if t is None or t[0] in ("bounded", "poly"):
                return t
            if t[0] == "power":
                return ("power", t[1], None if t[2] is None else t[2] * self.scale ** -t[1])
            return ("dexp", t[1] / self.scale)

        return tuple(side(t) for t in self.base.tails)

    def icdf(self, u):
        return self.scale * self.base.icdf(u)

    def cdf(self, z):
        return self.base.cdf(z / self.scale)

    def log_prob(self, z):
        return self.base.log_prob(z / self.scale) - math.log(self.scale)


def family_law(family: str, shape: float | None) -> IncrementLaw:
    """The family's standardized law at ``shape`` (beta for gennorm, nu for student_t)."""
    if family == "gaussian":
        return increments.get("gaussian")
    return increments.get(family, **{"gennorm": {"beta": shape}, "student_t": {"nu": shape}}[family])


def grid_name(T: int, spacing: str, family: str | None = None) -> str:
    """The file stem of a grid's kernel of a family: ``T10-uniform-gennorm`` (``T10-uniform``: the grid alone,
    the name kernels had before they were named by family too)."""
    return f"T{int(T)}-{spacing}" + (f"-{family}" if family else "")


@dataclass
class FittedKernel:
    """The reverse kernel fitted per step on one grid (see :func:`nonnormal.kernels.fit_kernel`)."""

    family: str  # gennorm, student_t or gaussian
    schedule: str  # the grid: schedule spec, T, spacing, reverse rule
    T: int
    spacing: str
    rule: str
    q: str  # law of the data walk's steps the residuals were drawn with
    p: str  # the model walk's own law (a fixed law the fit is compared with)
    n: int  # examples per step (each gives D residuals)
    first: int  # the first fitted step (1 on the ddpm spacing: step 0 is the decoder's, no noise)
    t: list[float]  # t_{k+1}: where step k evaluates the model, k = 0..T-1
    scale: list[float]  # s_k: the step law is s_k * law_k in units of the rule's c_z (s_k^2: variance ratio)
    shape: list[float | None]  # beta (gennorm), nu (student_t), None (gaussian; unfitted steps)
    clip: list[list[float]]  # [lo, hi]: the bounds s_k^2 was clipped to (Analytic-DPM's)
    loglik: list[float | None]  # mean log-density of the true reverse residuals under the fit, nats/dim
    terms: dict[str, list[float | None]]  # the bound's step term (nats/dim) on the same residuals: "fitted", fixed laws
    bound: dict[str, float] | None = None  # the whole bound (bits/dim) per label, where one was computed

    def __post_init__(self):
        self._laws: dict[int, IncrementLaw] = {}  # law_k, built on first use

    # ----- the step laws -----
    @property
    def variance_ratio(self) -> list[float]:
        """``s_k^2``: the fitted step's variance over the rule's ``c_z^2``."""
        return [s * s for s in self.scale]

    def law(self, k: int) -> IncrementLaw | None:
        """``law_k``, the standardized shape of step k (None where no step was fitted)."""
        if k < self.first:
            return None
        if k not in self._laws:
            self._laws[k] = family_law(self.family, self.shape[k])
        return self._laws[k]

    def step_law(self, k: int) -> IncrementLaw:
        """The law of ``zeta_k``: ``s_k * law_k`` (``law_k`` itself where ``s_k = 1``)."""
        law = self.law(k)
        if law is None:
            raise NonnormalError(f"step {k} of this kernel is deterministic (the decoder's): it has no step law")
        return law if self.scale[k] == 1.0 else ScaledLaw(law, self.scale[k])

    def increments(self, k: int, u: torch.Tensor) -> torch.Tensor:
        """``zeta_k = s_k * law_k.icdf(u)`` for uniforms ``u`` (any shape, e.g. the state's), in u's
        dtype; zeros at a deterministic step (its ``c_z`` is 0)."""
        if not 0 <= k < self.T:
            raise NonnormalError(f"step {k} is outside this kernel's grid of T = {self.T} steps")
        law = self.law(k)
        return torch.zeros_like(u) if law is None else self.scale[k] * law.icdf(u)

    def check_grid(self, diffusion, T: int | None = None, spacing: str | None = None, rule: str | None = None) -> None:
        """Refuse a Diffusion (with T / spacing / rule overrides) whose grid or rule is not this kernel's."""
        want = {
            "schedule": diffusion.schedule.spec,
            "T": diffusion.T if T is None else T,
            "spacing": spacing or diffusion.spacing,
            "rule": rule or diffusion.rule,
        }
        for key, value in want.items():
            if getattr(self, key) != value:
                raise NonnormalError(
                    f"the fitted kernel is for {key} {getattr(self, key)!r}, not {value!r}: fit one for this grid "
                    f"(nonnormal fit RUN --T {want['T']} --spacing {want['spacing']})"
                )

    def bound_diffusion_bits(self) -> dict[str, float]:
        """``sum_k`` of each label's step term in bits/dim: the bound's diffusion part on the fit's residuals."""
        return {k: sum(v for v in terms if v is not None) / math.log(2) for k, terms in self.terms.items()}

    # ----- JSON -----
    def to_json(self) -> str:
        """Strict JSON (no NaN or infinity), with a format tag."""
        d = {"format": FORMAT, **asdict(self)}
        try:
            return json.dumps(d, indent=1, allow_nan=False) + "\n"
        except ValueError:
            raise NonnormalError("the fitted kernel holds a value that is not finite: refit it") from None

    @classmethod
    def from_json(cls, text: str, where: str = "the kernel file") -> FittedKernel:
        def bad(why: str) -> NonnormalError:
            return NonnormalError(f"{where} is not a fitted kernel ({why}): rerun nonnormal fit")

        def no_constant(name):
            raise ValueError(f"{name} is not strict JSON")

        try:
            d = json.loads(text, parse_constant=no_constant)
        except ValueError as err:
            raise bad(str(err).splitlines()[0]) from None
        if not isinstance(d, dict) or d.pop("format", None) != FORMAT:
            raise bad(f"no format {FORMAT!r}")
        names = list(cls.__dataclass_fields__)
        if set(d) != set(names):
            raise bad("keys " + ", ".join(sorted(set(d) ^ set(names))))
        if d["family"] not in FAMILIES or not isinstance(d["T"], int) or d["T"] < 1:
            raise bad(f"family {d['family']!r}, T {d['T']!r}")
        lists = [d[k] for k in ("t", "scale", "shape", "clip", "loglik")] + list(d["terms"].values())
        if any(not isinstance(v, list) or len(v) != d["T"] for v in lists):
            raise bad(f"per-step lists of another length than T = {d['T']}")
        return cls(**d)


def step_loss(diffusion, model_law, T: int | None = None, spacing: str | None = None) -> StepKLLoss:
    """The bound's step loss on a grid with the model's step law ``model_law``: a fixed law (the
    pair ``(q, law)``'s own :class:`StepKLLoss`) or a :class:`FittedKernel` (step k's law ``s_k law_k``).
    Pass it to :func:`nonnormal.likelihood.bound_bits_per_dim`."""
    T, spacing = diffusion.T if T is None else T, spacing or diffusion.spacing
    if isinstance(model_law, FittedKernel):
        model_law.check_grid(diffusion, T, spacing)
        return KernelStepLoss(diffusion, model_law)
    return StepKLLoss(diffusion.schedule, T, diffusion.q, model_law, diffusion.rule, spacing=spacing)


class KernelStepLoss(StepKLLoss):
    """:class:`StepKLLoss` whose divergence changes with the step: ``K_k(u) = KL(q(. - u) || s_k law_k)``."""

    def __init__(self, diffusion, kernel: FittedKernel):
        super().__init__(diffusion.schedule, kernel.T, diffusion.q, diffusion.p, kernel.rule, spacing=kernel.spacing)
        self.kernel = kernel  # the fitted step laws
        self.step_divergences = {k: divergence(diffusion.q, kernel.step_law(k)) for k in range(self.first, self.T)}

    def term(self, eps_model, x0: torch.Tensor, k: torch.Tensor, eps: torch.Tensor, extra_args=None) -> torch.Tensor:
        out, n = None, x0.shape[0]
        for j in torch.unique(k).tolist():  # the parent's term, one step's divergence at a time
            m = k == j
            self.divergence = self.step_divergences[j]
            extra = {  # per-example extra arguments (class labels) follow their examples
                key: (v[m] if torch.is_tensor(v) and v.ndim and v.shape[0] == n else v)
                for key, v in (extra_args or {}).items()
            }
            part = super().term(eps_model, x0[m], k[m], eps[m], extra)
            out = part.new_zeros(x0.shape[0]) if out is None else out
            out[m] = part
        return out


def kernel_path(run_dir, T: int, spacing: str, family: str | None = None) -> Path:
    """``RUN/kernels/T<N>-<spacing>-<family>.json`` (without ``family``: the older name, by grid only)."""
    return Path(run_dir) / FOLDER / f"{grid_name(T, spacing, family)}.json"


def save_kernel(kernel: FittedKernel, run_dir) -> Path:
    """Write ``RUN/kernels/T<N>-<spacing>-<family>.json`` atomically; returns its path."""
    from ..runs import write_atomic

    path = kernel_path(run_dir, kernel.T, kernel.spacing, kernel.family)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NonnormalError(f"cannot create {path.parent}: {err.strerror or err}") from None
    write_atomic(path, kernel.to_json().encode())
    return path


def read_kernel(path) -> FittedKernel:
    """The kernel in one file written by :func:`save_kernel` (any name); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise NonnormalError(f"kernel file {path} not found: give a file written by `nonnormal fit` (RUN/kernels/)")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise NonnormalError(
            f"{path} is not a fitted kernel (not text): give a T<N>-<spacing>-<family>.json that `nonnormal fit` wrote"
        ) from None
    except OSError as err:
        raise NonnormalError(f"cannot read {path}: {err.strerror or err}") from None
    return FittedKernel.from_json(text, str(path))


def kernel_files(run_dir, T: int, spacing: str) -> dict[str, Path]:
    """The kernel files fitted for a grid, by family: ``T<N>-<spacing>-<family>.json``, and a file of the
    older name ``T<N>-<spacing>.json`` under the family it holds unless a newer file of that family exists."""
    found = {f: kernel_path(run_dir, T, spacing, f) for f in FAMILIES}
    found = {f: p for f, p in found.items() if p.is_file()}
    old = kernel_path(run_dir, T, spacing)
    if old.is_file():
        family = read_kernel(old).family
        found.setdefault(family, old)
    return found


def find_kernel(run_dir, T: int, spacing: str, family: str | None = None, *, source: str | None = None) -> Path:
    """The file of the kernel fitted for a grid (of ``family``, or the only family fitted); one-line errors
    that name the command to run (``nonnormal fit SOURCE ...``, ``source`` default ``run_dir``; for a
    pretrained model ``--pretrained DIR --dataset DATA``) or the files to choose from."""
    found = kernel_files(run_dir, T, spacing)
    fit = f"nonnormal fit {source or run_dir} --T {T} --spacing {spacing}" + (f" --family {family}" if family else "")
    if family is not None:
        if family not in found:
            raise NonnormalError(
                f"no {family} kernel fitted for T = {T}, spacing {spacing} in {run_dir}: run `{fit}` first"
            )
        return found[family]
    if not found:
        raise NonnormalError(f"no fitted kernel for T = {T}, spacing {spacing} in {run_dir}: run `{fit}` first")
    if len(found) > 1:
        files = ", ".join(str(p) for p in found.values())
        raise NonnormalError(
            f"{len(found)} kernels were fitted for T = {T}, spacing {spacing} ({', '.join(found)}, fit --family): "
            f"choose one with --kernel FILE, one of {files}"
        )
    return next(iter(found.values()))


def load_kernel(run_dir, T: int, spacing: str, family: str | None = None) -> FittedKernel:
    """The kernel fitted for a run's grid (T, spacing) by ``nonnormal fit``: of ``family``, or of the only
    family fitted for it (several: a one-line error naming the files); missing: a one-line error naming
    the command to run."""
    path = find_kernel(run_dir, T, spacing, family)
    kernel = read_kernel(path)
    if family is not None and kernel.family != family:  # a file renamed by hand
        raise NonnormalError(f"{path} holds a {kernel.family} kernel, not {family}: rename it or refit with --family")
    return kernel
