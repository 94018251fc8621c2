"""Stored run names never change: the run hash of every config the presets plan, and of a grid of
varied configs, equals the one recorded in ``tests/data/run_hashes.json``.

A run's folder is named by its hash, so a refactoring that changed any of these would orphan
every stored run. Regenerate the fixture only for a deliberate rename (and say so in the README):
``python tests/test_run_names.py``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pcl.config import RunConfig
from pcl.presets import get_preset
from pcl.study import plan

FIXTURE = Path(__file__).parent / "data" / "run_hashes.json"
#: Presets whose plans are recorded (paper's plan is extended's without SimCLR).
RECORDED = ("cpu", "smoke", "extended")


def _name(c: RunConfig) -> str:
    return f"{c.method}/{c.schedule}/{c.sparsity}/seed{c.seed}"


def preset_hashes(name: str) -> dict[str, str]:
    """Run name -> hash of every config ``plan(preset, 'all')`` lists (the floor included)."""
    return {_name(c): c.run_hash() for c in plan(get_preset(name, precision="fp32"))}


def grid() -> list[RunConfig]:
    """Configs with non-default values in every kind of field, for every method and schedule."""
    p = get_preset("smoke-extended", dataset="synthetic")
    out = []
    for m in p.methods:
        base = [p.run(m, 3), p.run(m, 1, "gmp_early", 0.5), p.run(m, 2, "gmp_late", 0.95),
                p.run(m, 0, "oneshot", 0.7),
                p.run(m, 4, "gmp", 0.8, gmp_begin=0.1, gmp_end=0.3)]
        for c in base:
            out += [c, replace(c, precision="bf16"),
                    replace(c, lr=0.03, epochs=7, lr_schedule="step", lr_milestones=(0.5, 0.75)),
                    replace(c, depth=16, width=2, nesterov=True, weight_decay=1e-4),
                    replace(c, gmp_events=10, gmp_scope="global") if c.pruning != "none" else c,
                    replace(c, finetune_epochs=3, finetune_lr=0.01, finetune_head_only=m != "ce",
                            oneshot_scope="layerwise") if c.pruning == "oneshot" else c,
                    replace(c, temperature=0.2, proj_dim=64, head_epochs=3, head_lr=0.5)
                    if m != "ce" else c]
    return out


def _fields(c: RunConfig) -> str:
    """The config's non-default fields (so a field added later with a default keeps the key)."""
    default = RunConfig().to_dict()
    return json.dumps({k: v for k, v in c.to_dict().items() if v != default[k]}, sort_keys=True)


def grid_hashes() -> dict[str, str]:
    return {_fields(c): c.run_hash() for c in grid()}


def _fixture() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", ("cpu", "paper", "smoke", "extended"))
def test_preset_run_names_unchanged(name: str) -> None:
    recorded = _fixture()["presets"]["extended" if name == "paper" else name]
    methods = get_preset(name).methods
    want = {k: v for k, v in recorded.items() if k.split("/")[0] in methods}
    got = preset_hashes(name)
    changed = {k: (want.get(k), v) for k, v in got.items() if want.get(k) != v}
    missing = sorted(set(want) - set(got))
    assert not changed and not missing, f"{name}: renamed {changed}, missing {missing}"


def test_varied_configs_keep_their_names() -> None:
    want = _fixture()["grid"]
    got = grid_hashes()
    assert len(got) == len(want) > 50
    assert got == want


if __name__ == "__main__":  # regenerate the fixture (a deliberate rename only)
    FIXTURE.write_text(json.dumps({
        "presets": {n: preset_hashes(n) for n in RECORDED},
        "grid": grid_hashes()}, indent=0, sort_keys=True) + "\n")
