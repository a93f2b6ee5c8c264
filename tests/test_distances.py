"""Sample distances: exact 1-D answers and the over-dispersion that the energy distance under-weights."""

import numpy as np
import pytest
import torch
from scipy import stats

from nonnormal.metrics.distances import energy_distance, sliced_wasserstein


def test_sliced_wasserstein_is_exact_w1_in_one_dimension():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 1, generator=g), 0.5 + 2 * torch.randn(500, 1, generator=g)
    # in 1-D every projection is +-x: SW equals W1 of the two samples
    assert sliced_wasserstein(x, y, projections=4) == pytest.approx(
        stats.wasserstein_distance(x[:, 0], y[:, 0]), rel=1e-9
    )


def test_sliced_wasserstein_of_a_shift():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 2, generator=g, dtype=torch.float64)
    shift = torch.tensor([3.0, 4.0], dtype=torch.float64)  # |shift| = 5
    # W1 of a projected shift is |<shift, theta>|, exactly, for any sample x (the sorted projections of
    # x + shift are those of x moved by <shift, theta>), so 200 points do what 4000 did; its mean over
    # the circle is 5 * 2/pi. Only the projections are random: |cos| has sd 0.31 around 2/pi = 0.64,
    # a relative sd of 0.48 per projection: over 4000 the mean has a relative se of 0.76%, and rel=0.02 is 2.6 se.
    assert sliced_wasserstein(x, x + shift, projections=4000) == pytest.approx(5 * 2 / np.pi, rel=0.02)
    assert sliced_wasserstein(x, x) == 0.0


def test_over_dispersion_is_penalized():
    g = torch.Generator().manual_seed(2)
    data, good = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    wide = 1.6 * torch.randn(400, 2, generator=g)
    assert sliced_wasserstein(wide, data) > 3 * sliced_wasserstein(good, data)
    assert energy_distance(good, data) < energy_distance(wide, data)
