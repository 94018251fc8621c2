"""pcl.config: validation messages, hashing, canonical configs and presets."""
from __future__ import annotations

import dataclasses
import json

import pytest

from pcl.config import ConfigError, RunConfig, canonical
from pcl.presets import PRESETS, get_preset


def _raises(match_all, **kw):
    with pytest.raises(ConfigError) as ei:
        RunConfig(**kw)
    msg = str(ei.value)
    for s in match_all:
        assert s in msg, f"{s!r} not in {msg!r}"
    return msg


# --- validation ---------------------------------------------------------------------------------
def test_unknown_method_names_value_and_allowed():
    _raises(["'sgd'", "'ce'", "'supcon'"], method="sgd")


def test_unknown_pruning_schedule_names_value_and_allowed():
    _raises(["'magic'", "'none'", "'gmp_early'", "'gmp_late'", "'oneshot'"], pruning="magic",
            sparsity=0.5)


def test_unknown_preset_names_value_and_allowed():
    with pytest.raises(ConfigError) as ei:
        get_preset("huge")
    msg = str(ei.value)
    assert "'huge'" in msg
    for name in ("paper", "cpu", "smoke"):
        assert name in msg


def test_unknown_dataset_for_preset():
    with pytest.raises(ConfigError, match="imagenet"):
        get_preset("smoke", dataset="imagenet")


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5])
def test_bad_sparsity(s):
    msg = _raises([str(s)], pruning="oneshot", sparsity=s)
    assert "[0, 1)" in msg


def test_sparsity_without_pruning_and_pruning_without_sparsity():
    _raises(["0.5", "gmp_early"], pruning="none", sparsity=0.5)
    _raises(["'gmp_early'", "0.0"], pruning="gmp_early", sparsity=0.0)


@pytest.mark.parametrize("field", ["epochs", "batch_size", "gmp_events"])
def test_zero_epochs_and_sizes(field):
    msg = _raises([field, "got 0"], **{field: 0})
    assert "positive" in msg


def test_supcon_head_epochs_zero():
    _raises(["head_epochs", "0"], method="supcon", head_epochs=0)


@pytest.mark.parametrize("depth", [12, 4, 15, 0])
def test_depth_not_6n_plus_4(depth):
    msg = _raises([f"got {depth}", "6n+4"], depth=depth)
    assert "16" in msg and "10" in msg  # names allowed values


@pytest.mark.parametrize("depth", [10, 16, 22, 28])
def test_valid_depths_accepted(depth):
    assert RunConfig(depth=depth).depth == depth


@pytest.mark.parametrize("begin,end", [(0.5, 0.5), (0.6, 0.2)])
def test_gmp_begin_not_before_end(begin, end):
    msg = _raises([str(begin), str(end)], pruning="gmp", sparsity=0.5, gmp_begin=begin,
                  gmp_end=end)
    assert "begin" in msg and "end" in msg


@pytest.mark.parametrize("field,v", [("gmp_begin", -0.1), ("gmp_end", 1.5), ("gmp_begin", 1.01)])
def test_gmp_fractions_outside_unit_interval(field, v):
    kw = dict(pruning="gmp", sparsity=0.5, gmp_begin=0.1, gmp_end=0.5)
    kw[field] = v
    msg = _raises([field, str(v)], **kw)
    assert "[0, 1]" in msg


@pytest.mark.parametrize("m", [(0.0,), (1.0,), (0.5, 1.2), (-0.1,)])
def test_lr_milestones_outside_open_interval(m):
    _raises(["lr_milestones"], lr_schedule="step", lr_milestones=m)


@pytest.mark.parametrize("field,value,allowed", [
    ("lr_schedule", "linear", "'cosine'"), ("gmp_scope", "channel", "'layerwise'"),
    ("oneshot_scope", "block", "'global'"), ("dataset", "mnist", "'cifar10'"),
    ("head_lr_schedule", "warm", "'constant'")])
def test_other_choices(field, value, allowed):
    _raises([repr(value), allowed], **{field: value})


def test_subset_sizes_and_synthetic_size():
    _raises(["train_per_class", "0"], train_per_class=0)
    _raises(["synthetic_size"], dataset="synthetic", synthetic_size=5)


def test_config_is_frozen():
    c = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 3  # type: ignore[misc]


def test_from_dict_rejects_unknown_fields():
    d = RunConfig().to_dict()
    d["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="learning_rate"):
        RunConfig.from_dict(d)


# --- hashing ------------------------------------------------------------------------------------
_BASE = dict(method="supcon", seed=1, dataset="synthetic", synthetic_size=100, train_per_class=5,
             test_per_class=5, pruning="gmp", sparsity=0.5, gmp_begin=0.1, gmp_end=0.5,
             lr_schedule="step", lr_milestones=(0.5,))


def _other_value(name: str, v):
    """A different value that keeps _BASE valid."""
    choices = {"method": "ce", "dataset": "cifar10", "pruning": "oneshot", "lr_schedule": "cosine",
               "head_lr_schedule": "constant", "gmp_scope": "global", "oneshot_scope": "layerwise",
               "depth": v + 6 if isinstance(v, int) else None, "lr_milestones": (0.25, 0.75),
               "sparsity": 0.7, "gmp_begin": 0.2, "gmp_end": 0.6, "precision": "bf16",
               "hparams": (("head_gmp", (0.1, 0.6)),)}
    if name in choices:
        return choices[name]
    if isinstance(v, bool):
        return not v
    if v is None:
        return 3
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 0.5 + 0.01
    raise AssertionError(f"no alternative for {name}={v!r}")


def test_hash_round_trip_through_dict_and_json():
    c = RunConfig(**_BASE)
    assert RunConfig.from_dict(c.to_dict()) == c
    assert RunConfig.from_dict(c.to_dict()).run_hash() == c.run_hash()
    back = RunConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c and back.run_hash() == c.run_hash()
    h = c.run_hash()
    assert len(h) == 12 and int(h, 16) >= 0
    assert RunConfig(**_BASE).run_hash() == h  # stable across instances


def test_hash_changes_with_every_single_field():
    base = RunConfig(**_BASE)
    hashes = {base.run_hash()}
    fields = dataclasses.fields(RunConfig)
    for f in fields:
        v = getattr(base, f.name)
        other = dataclasses.replace(base, **{f.name: _other_value(f.name, v)})
        assert getattr(other, f.name) != v
        h = other.run_hash()
        assert h not in hashes, f"changing {f.name} did not change the hash (or collided)"
        hashes.add(h)
    assert len(hashes) == len(fields) + 1


# --- canonical configs and presets --------------------------------------------------------------
@pytest.mark.parametrize("preset", ["paper", "cpu", "smoke", "smoke-synthetic"])
@pytest.mark.parametrize("method", ["ce", "supcon"])
def test_oneshot_parent_is_the_presets_dense_run(preset, method):
    p = get_preset("smoke", dataset="synthetic") if preset == "smoke-synthetic" else PRESETS[preset]
    for seed in (0, 3):
        dense = p.run(method, seed)
        for s in p.sparsities:
            one = p.run(method, seed, "oneshot", s)
            assert one.parent() == dense
            assert one.parent().run_hash() == dense.run_hash()
        # finetune-only options do not change the parent
        one = p.run(method, seed, "oneshot", 0.9, finetune_head_only=True, finetune_epochs=7)
        assert one.parent().run_hash() == dense.run_hash()
    # other seeds have other parents
    assert p.run(method, 1, "oneshot", 0.9).parent().run_hash() != p.run(method, 0).run_hash()
    # non-oneshot runs have no parent
    assert p.run(method, 0).parent() is None
    assert p.run(method, 0, "gmp_early", 0.9).parent() is None


def test_canonical_resets_unused_fields_only():
    d = RunConfig()
    c = RunConfig(method="ce", temperature=0.1, finetune_epochs=3, gmp_begin=0.2, gmp_end=0.4,
                  synthetic_size=50)
    k = canonical(c)
    # unused by a dense CE run on cifar10: back to defaults, so the hash is the default's
    assert k == d and k.run_hash() == d.run_hash()
    # used fields survive
    g = canonical(RunConfig(method="supcon", pruning="gmp", sparsity=0.5, gmp_begin=0.2,
                            gmp_end=0.4, temperature=0.1))
    assert (g.gmp_begin, g.gmp_end, g.temperature) == (0.2, 0.4, 0.1)
    assert canonical(canonical(c)) == canonical(c)


def test_preset_run():
    p = get_preset("smoke", dataset="synthetic")
    c = p.run("ce", 5, "gmp_early", 0.9)
    assert (c.method, c.seed, c.pruning, c.sparsity) == ("ce", 5, "gmp_early", 0.9)
    assert c.dataset == "synthetic" and c.synthetic_size == 200
    assert c.train_per_class is None and c.test_per_class is None
    assert (c.depth, c.width, c.epochs, c.batch_size) == (10, 1, 2, 64)
    assert c.gmp_window == (0.0125, 0.25)
    s = p.run("supcon", 1, "gmp_late", 0.5)
    assert s.gmp_window == (0.10, 0.194) and s.method == "supcon" and s.head_epochs == 1
    o = p.run("ce", 0, "gmp", 0.9, gmp_begin=0.4, gmp_end=0.6)
    assert o.gmp_window == (0.4, 0.6) and o.schedule == "gmp@0.40-0.60"
    assert p.run("ce", 0).schedule == "dense"
    with pytest.raises(ConfigError, match="'resnet'"):
        p.run("resnet", 0)
    with pytest.raises(ConfigError):
        p.run("ce", 0, "gmp_early", 1.0)
    with pytest.raises(ConfigError):
        p.run("ce", 0, "oneshot")  # pruning without sparsity


def test_paper_preset_matches_protocol_table():
    p = PRESETS["paper"]
    ce, sc = p.ce, p.supcon
    assert (ce.epochs, ce.batch_size, ce.lr, ce.lr_schedule, ce.momentum, ce.weight_decay) == (
        205, 128, 0.1, "cosine", 0.9, 5e-4)
    assert ce.vflip is True
    assert (sc.epochs, sc.batch_size, sc.lr, sc.lr_schedule, sc.weight_decay) == (
        500, 1024, 0.05, "constant", 4e-4)
    assert (sc.temperature, sc.base_temperature) == (0.5, 0.07)
    assert (sc.head_epochs, sc.head_batch_size, sc.head_lr, sc.head_lr_schedule,
            sc.head_weight_decay) == (100, 256, 0.1, "cosine", 0.0)
    assert (ce.finetune_epochs, ce.finetune_lr, ce.finetune_batch_size) == (30, 1e-3, 128)
    assert ce.oneshot_scope == "global" and ce.gmp_scope == "layerwise"
    assert (ce.depth, ce.width) == (16, 2) and p.seeds == 30
    assert p.sparsities == (0.3, 0.5, 0.7, 0.9, 0.95)
    assert PRESETS["smoke"].ce.vflip is False and PRESETS["cpu"].ce.vflip is False


# --- types and ranges ---------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("epochs", 2.0), ("epochs", True), ("seed", "0"), ("seed", -1), ("num_classes", 0),
    ("num_classes", 1), ("temperature", 0.0), ("temperature", -0.5), ("lr", 0.0), ("lr", -0.1),
    ("lr", float("nan")), ("head_lr", 0), ("finetune_lr", float("inf")), ("weight_decay", -1e-4),
    ("momentum", 1.0), ("base_temperature", 0.0), ("batch_size", 64.0), ("train_per_class", 2.5),
    ("vflip", 1), ("precision", "fp16"), ("lr_milestones", (0.5, "x")),
])
def test_bad_types_and_ranges_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        RunConfig(**{field: value})


def test_ints_are_accepted_for_float_fields():
    assert RunConfig(lr=1, momentum=0).lr == 1


# --- run names that last ------------------------------------------------------------------------
def test_hash_ignores_fields_at_their_defaults():
    """Only non-default fields are hashed, so a field added later with a default renames nothing:
    the default config hashes the empty dict."""
    import hashlib

    assert RunConfig().run_hash() == hashlib.sha256(b"{}").hexdigest()[:12]
    one = RunConfig(seed=3)
    assert one.run_hash() == hashlib.sha256(b'{"seed":3}').hexdigest()[:12]


GOLDEN = ("77ceb83b54f7", "dc0d3a7595a5")


def test_golden_hashes():
    """Pinned: changing these renames every stored run (a default must never change)."""
    a = RunConfig(method="supcon", seed=7, depth=10, width=1, epochs=3, precision="bf16")
    b = RunConfig(method="ce", pruning="oneshot", sparsity=0.9, train_per_class=200)
    assert (a.run_hash(), b.run_hash()) == GOLDEN


def test_precision_auto_resolves_to_native_bf16_or_fp32():
    from pcl.config import native_bf16, resolve_precision

    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32"
    with pytest.raises(ConfigError, match="'fp16'"):
        resolve_precision("fp16")
    p = get_preset("smoke", precision="bf16")
    assert {p.run(m, 0).precision for m in p.methods} == {"bf16"}
