"""Suite-wide test settings.

OpenMP's default wait policy keeps each idle worker thread spinning for a while after every
parallel region. On a machine whose cores are busy with other work, those spinning threads
compete with the threads doing the work, and the suite's small tensor operations paid for it:
measured on two cores shared with other jobs, one DDPM pipeline test took 160 s of CPU with
OMP_NUM_THREADS=2 and 2.7 s with one thread or with ``OMP_WAIT_POLICY=PASSIVE`` (the default
suite went from ~12 min to ~4 min of wall time). Passive waiting changes no result. It has to
be set before torch (and its OpenMP runtime) loads, so here, in the first conftest pytest
imports; it is inherited by the CLI subprocesses the tests start. An explicit setting wins.
"""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if "torch" in sys.modules and os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE":  # pragma: no cover
    import warnings

    warnings.warn("torch was imported before tests/conftest.py: OMP_WAIT_POLICY=PASSIVE came too late "
                  "for this process (its subprocesses still get it)", stacklevel=1)
