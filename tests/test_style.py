import pytest
import torch

from nonnormal.errors import NonnormalError
from nonnormal.metrics import style


def checkerboard(n=3, h=8, w=8):
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((i + j) % 2 * 2 - 1).double().expand(n, 1, h, w).clone()  # -1 / +1


def test_constant_image():
    x = torch.full((4, 1, 6, 5), 0.3, dtype=torch.float64)
    assert style.total_variation(x) == 0.0
    assert style.high_frequency_share(x) == 0.0
    assert style.saturation(x, 256) == 0.0
    assert style.saturation(torch.full((2, 6, 5), 255), 256) == 1.0  # integer levels, (N, H, W)


def test_checkerboard_known_answers():
    """Neighbours differ by 2 on the [-1, 1] scale in both directions: TV = 4; all power at Nyquist."""
    x = checkerboard()
    assert style.total_variation(x) == pytest.approx(4.0)
    assert style.high_frequency_share(x) == pytest.approx(1.0)
    assert style.high_frequency_share(x, cutoff=0.7) == pytest.approx(1.0)  # at (0.5, 0.5): radius 0.707
    assert style.high_frequency_share(x, cutoff=0.71) == pytest.approx(0.0)
    assert style.saturation(x, 2) == 1.0 and style.saturation(x, 256) == 1.0
    levels = ((x + 1) / 2 * 255).round().long()  # the same board in integer levels 0 and 255, whose bin
    assert style.total_variation(levels, 256) == pytest.approx(4 * (1 - 1 / 256))  # centres are 1/256 inside +-1


def test_stripes_and_smooth_ramp():
    """Vertical stripes: TV 2 (horizontal only), power at fx = 0.5 only; a ramp: TV 2/(W-1); a slow
    cosine (one period across): all power at 1/32 cycles per pixel, none above the cutoff."""
    x = checkerboard()[..., :1, :].expand(3, 1, 8, 8).clone()  # rows of -1, 1, -1, ...
    assert style.total_variation(x) == pytest.approx(2.0)
    assert style.high_frequency_share(x) == pytest.approx(1.0)
    ramp = torch.linspace(-1, 1, 32, dtype=torch.float64).expand(2, 1, 32, 32).clone()
    assert style.total_variation(ramp) == pytest.approx(2 / 31)
    wave = torch.cos(torch.arange(32, dtype=torch.float64) * 2 * torch.pi / 32).expand(2, 1, 32, 32).clone()
    assert style.high_frequency_share(wave) == pytest.approx(0.0, abs=1e-20)
    assert style.high_frequency_share(wave, cutoff=1 / 33) == pytest.approx(1.0)


def test_saturation_share_and_rounding():
    """A known share at the extremes: 3 of 8 pixels at 0 or 255; floats go to the bin that holds them."""
    from nonnormal.data import levels_to_unit

    lv = torch.tensor([[[0, 255, 255, 3], [128, 254, 1, 7]]])
    assert style.saturation(lv, 256) == pytest.approx(3 / 8)
    unit = levels_to_unit(lv, 256).double()
    assert style.saturation(unit, 256) == pytest.approx(3 / 8)
    assert style.saturation(unit * 1.5, 256) > 3 / 8  # values past [-1, 1] are clamped to the extremes


def test_histogram_distances():
    a = torch.zeros(1, 4, 4, dtype=torch.long)
    b = torch.full((1, 4, 4), 3, dtype=torch.long)
    h = style.histogram_distance(a, b, 4)
    assert h["tv"] == pytest.approx(1.0) and h["w1"] == pytest.approx(1.5)  # level 0 vs 3: bin centres -3/4 vs 3/4
    assert style.histogram_distance(a, a, 4) == {"tv": 0.0, "w1": 0.0}
    half = torch.tensor([[[0, 0], [1, 1]]])
    h = style.histogram_distance(half, torch.zeros(1, 2, 2, dtype=torch.long), 2)
    assert h["tv"] == pytest.approx(0.5) and h["w1"] == pytest.approx(0.5)  # half the mass moves by 1 (-1/2 to 1/2)


def test_style_metrics_row_and_errors():
    x = checkerboard()
    row = style.style_metrics(x, 256, data=torch.zeros(2, 1, 8, 8))
    assert set(row) == {"saturation", "tv", "hf_share", "hist_tv", "hist_w1"}
    assert row["hist_w1"] == pytest.approx(1.0, abs=1e-2)  # +-1 against the middle level
    with pytest.raises(NonnormalError, match="levels 0..3"):
        style.saturation(torch.tensor([[[0, 4], [1, 2]]]), 4)
    with pytest.raises(NonnormalError, match="shaped"):
        style.total_variation(torch.zeros(5))
