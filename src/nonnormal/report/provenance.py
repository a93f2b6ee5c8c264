"""What made a result: package version, git commit (when run from a checkout), command line, time."""

from __future__ import annotations

from pathlib import Path


def provenance() -> dict:
    """``{"version", "commit", "command", "time"}`` of this process."""
    import subprocess
    import sys
    import time

    from .. import __version__

    commit = "unknown"
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if res.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            commit = res.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "version": __version__,
        "commit": commit,
        "command": " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
