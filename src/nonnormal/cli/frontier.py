"""``nonnormal frontier``: quality per network call for every sampler x law (issue 18, section 4)."""

from __future__ import annotations

import time
from pathlib import Path

DEFAULT, QUICK = "frontier-digits", "frontier-quick"  # packaged presets


def add_parser(sub, *, count, text, again, jobs_option) -> None:
    """Register ``frontier`` on the command's subparsers (``count``/``text``: the CLI's flag types;
    ``jobs_option``: adds the shared ``--jobs``)."""
    p = sub.add_parser(
        "frontier", help="quality per network call: FD, KID, style and the bound of every sampler x law at each NFE"
    )
    p.add_argument(
        "--config", type=text, default=None, help=f"TOML file or preset name (default {DEFAULT}; {QUICK} with --quick)"
    )
    p.add_argument("--quick", action="store_true", help=f"the whole pipeline at a tiny size (preset {QUICK})")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a run config key (repeatable)")
    p.add_argument("--seeds", type=count(1, 100), default=None, help="train seeds 0..N-1 (overrides study.seeds)")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the recipe check (the models trained with frontier.check_factor x the steps); the report says so",
    )
    p.add_argument(
        "--out",
        type=text,
        default=None,
        help="output folder (default runs/frontier-<timestamp>); an unfinished one resumes",
    )
    p.add_argument("--force", action="store_true", help="rebuild the outputs in a finished --out (from its cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    jobs_option(p)
    p.set_defaults(handler=cmd_frontier, again=again)


def cmd_frontier(args) -> int:
    from ..frontier import run_frontier

    config = args.config or (QUICK if args.quick else DEFAULT)
    out = Path(args.out) if args.out else Path("runs") / f"frontier-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.time()
    seeds = list(range(args.seeds)) if args.seeds else None
    result = run_frontier(
        out,
        config,
        list(args.set or []),
        {"seeds": seeds},
        force=args.force,
        progress=not args.quiet,
        check=not args.no_check,
        n_jobs=args.jobs,
    )
    print()
    print((out / "frontier.md").read_text().split("## Training check")[0].rstrip())
    print(
        f"\nwrote {out}/: frontier.json, frontier.md, frontier.html, frontier.tex, frontier.png "
        f"({time.time() - t0:.0f} s, {len(result['rows'])} rows)"
    )
    return 0
