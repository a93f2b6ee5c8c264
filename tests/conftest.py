"""Suite-wide test settings: one OpenMP thread, passive waiting.

The suite's tensors are small, so a second intra-op thread buys nothing, while on a machine whose
cores are busy with other work every parallel region waits for a thread the scheduler has not
run yet (and, by OpenMP's default, idle threads spin, taking CPU from the ones working). Measured
on two cores shared with other jobs: the DDPM pipeline test of test_diffusers.py took 317 s wall
(161 s CPU) with OMP_NUM_THREADS=2 and 5 s (2.7 s CPU) with one thread; test_training_reduces_the_loss
13 s with two passive threads, 1.3 s with one; the default suite about 12 min, against 4 with one.
No test result depends on the thread count (tests that are about threads set it themselves).

This has to happen before torch, and its OpenMP runtime, loads: here, in the conftest pytest
imports first. The CLI subprocesses the tests start inherit it. NONNORMAL_TEST_THREADS=n runs
the suite with n threads instead.
"""

import os
import sys

os.environ["OMP_NUM_THREADS"] = os.environ.get("NONNORMAL_TEST_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if "torch" in sys.modules:  # pragma: no cover - imported earlier by some plugin: too late for OpenMP's settings
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
