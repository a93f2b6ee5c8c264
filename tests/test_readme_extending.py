"""README's "Extending" section: every Python block in it runs, each is under 15 lines of code, and each adds
one entry to one registry, which then works (the blocks' own last lines use it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nonnormal import data, increments, nets, samplers, schedules
from nonnormal.metrics import table as metric_table

README = Path(__file__).resolve().parents[1] / "README.md"
REGISTRIES = {
    "law": increments.LAWS,
    "schedule": schedules.SCHEDULES,
    "network": nets.NETS,
    "dataset": data.specs.DATASETS,
    "metric": metric_table.TABLE,
    "sampler": samplers.SAMPLERS,
}
metric_table.names()  # the built-in metrics load on first use: load them before counting entries


def extending_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Extending\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert section, "README.md has no '## Extending' section"
    return re.findall(r"^```python\n(.*?)^```", section.group(1), flags=re.M | re.S)


BLOCKS = extending_blocks()


def test_extending_shows_a_law_a_schedule_a_network_a_dataset_a_metric_and_a_sampler():
    assert len(BLOCKS) >= 5
    kinds = [
        next(
            k
            for k, word in (
                ("law", "@increments."),
                ("schedule", "@schedules."),
                ("network", "@nets."),
                ("dataset", "@data."),
                ("metric", "table."),
                ("sampler", "@samplers."),
            )
            if f"{word}register" in b
        )
        for b in BLOCKS[:6]
    ]
    assert sorted(kinds) == sorted(REGISTRIES)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_extending_block_runs_in_under_15_lines_and_registers_one_entry(index):
    block = BLOCKS[index]
    code = [line for line in block.splitlines() if line.strip()]  # lines of code (ruff format adds blank ones)
    assert len(code) < 15, f"README Extending block {index + 1} has {len(code)} lines of code, not under 15"
    for name in re.findall(r"register\(\"([^\"]+)\"", block):  # the same name left by another test module
        for registry in REGISTRIES.values():
            registry.unregister(name)
    before = {kind: set(r.names()) for kind, r in REGISTRIES.items()}
    namespace = {"__name__": f"readme_extending_{index}"}
    try:
        exec(compile(block, f"README.md (Extending, block {index + 1})", "exec"), namespace)
        added = {kind: set(r.names()) - before[kind] for kind, r in REGISTRIES.items()}
        assert sum(len(v) for v in added.values()) == 1, added
    finally:
        for kind, registry in REGISTRIES.items():
            for name in set(registry.names()) - before[kind]:
                registry.unregister(name)
    result = namespace.get("d", namespace.get("net", namespace.get("x")))
    assert result is not None, "each block ends by using what it registered"
