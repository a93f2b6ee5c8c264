"""Timing harness: two callables, interleaved, after warm-up; the ratio of medians and its spread."""

from __future__ import annotations

import statistics
import time


def interleaved(ours, reference, reps: int = 7, inner: int = 3, warmup: int = 2) -> dict:
    """``time(ours) / time(reference)``: each repetition times ``inner`` calls of one, then of the other
    (alternating which goes first), so drifts of the machine hit both alike."""
    for _ in range(warmup):
        ours()
        reference()
    t_ours, t_ref = [], []
    for rep in range(reps):
        pair = [(ours, t_ours), (reference, t_ref)]
        for fn, sink in pair if rep % 2 == 0 else pair[::-1]:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sink.append((time.perf_counter() - t0) / inner)
    ratios = [a / b for a, b in zip(t_ours, t_ref)]
    return {
        "ratio": statistics.median(t_ours) / statistics.median(t_ref),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ours_s": statistics.median(t_ours),
        "reference_s": statistics.median(t_ref),
        "reps": reps,
        "inner": inner,
    }
