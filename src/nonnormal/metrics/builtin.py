"""The built-in entries of the metrics table (:mod:`nonnormal.metrics.table`), in the order of every
table's columns: the likelihoods (computed by the evaluation engine), FD and KID in the dataset
classifier's features, the style metrics, and the point-cloud distances of continuous data."""

from __future__ import annotations

from .table import Metric, MetricInputs, Skipped, register  # noqa: F401 -- Skipped: for metrics that give up


def _fd(inputs: MetricInputs) -> float:
    from .features import frechet_distance

    return frechet_distance(inputs.features()[1], inputs.fake_features())


def _kid(inputs: MetricInputs) -> dict:
    from .features import kernel_distance

    real, fake = inputs.features()[1], inputs.fake_features()
    subset = 1000  # kernel_distance's default subset size
    kid, std = kernel_distance(real, fake, seed=inputs.seed, subset_size=subset)
    if len(real) == len(fake) <= subset:  # every subset is both whole sets, shuffled: no spread at all
        return {
            "kid": kid,
            "kid_std": None,
            "kid_std_skipped": f"every KID subset holds all {len(real)} real and {len(fake)} sampled images: "
            f"the subsets do not vary, so there is no spread (use more than {subset} images)",
        }
    return {"kid": kid, "kid_std": std}


def _saturation(inputs: MetricInputs) -> float:
    from .style import saturation

    return saturation(inputs.sample_levels, inputs.levels)


def _total_variation(inputs: MetricInputs) -> float:
    from .style import total_variation

    return total_variation(inputs.sample_levels, inputs.levels)


def _hf_power(inputs: MetricInputs) -> float:
    from .style import high_frequency_share

    return high_frequency_share(inputs.sample_levels, inputs.levels, 0.25)


def _hist(inputs: MetricInputs) -> dict:
    from .style import histogram_distance

    h = histogram_distance(inputs.sample_levels, inputs.train_levels, inputs.levels)
    return {"hist_distance": h["tv"], "hist_w1": h["w1"]}


def _energy(inputs: MetricInputs) -> float:
    from .distances import energy_distance

    return energy_distance(inputs.samples, inputs.test)


def _sliced(inputs: MetricInputs) -> float:
    from .distances import sliced_wasserstein

    return sliced_wasserstein(inputs.samples, inputs.test, seed=inputs.seed)


for _m in (
    Metric(
        "bpd_ode",
        None,
        "bits/dim",
        "lower",
        ("model", "test", "levels"),
        "-log2 p of dequantized test images under the probability-flow ODE (Hutchinson trace), per dimension",
        headline=True,
    ),
    Metric(
        "bpd_bound",
        None,
        "bits/dim",
        "lower",
        ("model", "test", "levels"),
        "the paper's discrete bound at T (prior + T step KLs + decoder); mismatched pairs carry T K(0)/ln 2",
        headline=True,
        findings=False,  # its constant T K(0)/ln 2 differs between pairs by construction
    ),
    Metric(
        "fd",
        _fd,
        "classifier-feature FD",
        "lower",
        ("samples", "levels", "features"),
        "Frechet distance of samples to the test split in the dataset classifier's features",
        headline=True,
    ),
    Metric(
        "kid",
        _kid,
        "MMD^2",
        "lower",
        ("samples", "levels", "features"),
        "KID: unbiased MMD^2 (cubic kernel) of samples to the test split in the classifier's features; "
        "kid_std: its spread over random subsets",
        extras=("kid_std",),
        headline=True,
        findings=False,  # FD's sentence says it; KID ranks the same way
    ),
    Metric(
        "saturation",
        _saturation,
        "share at extreme levels",
        None,
        ("samples", "levels"),
        "share of sample pixels at the lowest or highest level",
        headline=True,
    ),
    Metric(
        "total_variation",
        _total_variation,
        "mean |neighbour difference| on [-1, 1]",
        None,
        ("samples", "levels"),
        "mean absolute difference between neighbouring pixels (horizontal plus vertical): higher is rougher",
        headline=True,
    ),
    Metric(
        "hf_power",
        _hf_power,
        "power share above 1/4 cycle/px",
        None,
        ("samples", "levels"),
        "share of the samples' spectral power (mean removed) above 1/4 cycle per pixel",
    ),
    Metric(
        "hist_distance",
        _hist,
        "TV distance of pixel histograms",
        "lower",
        ("samples", "levels", "train"),
        "total variation distance between the samples' and the training images' pixel histograms; "
        "hist_w1: their 1-D Wasserstein distance on [-1, 1]",
        extras=("hist_w1",),
        extra_units=("W1 of pixel values on [-1, 1]",),
    ),
    Metric(
        "nll_ode",
        None,
        "nats/dim",
        "lower",
        ("model", "test"),
        "-log p of test points under the probability-flow ODE, per dimension (continuous data)",
        data="points",
    ),
    Metric(
        "energy_distance",
        _energy,
        "squared energy distance",
        "lower",
        ("samples", "test"),
        "energy distance between samples and test points (0 iff same law)",
        data="points",
    ),
    Metric(
        "sliced_wasserstein",
        _sliced,
        "W1 over projections",
        "lower",
        ("samples", "test"),
        "1-Wasserstein distance averaged over random 1-D projections (punishes over-dispersed samples)",
        data="points",
    ),
):
    register(_m, builtin=True)
