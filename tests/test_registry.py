"""The method and schedule registries: SimCLR, the presets, and a toy method end to end.

The toy method is defined and registered in this file only: it must go through plan -> train ->
evaluate -> claims without any other module knowing its name (the definition of done of the
registry design).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcl import augment, claims, evaluate, methods, schedules, study
from pcl.config import ConfigError, RunConfig, canonical
from pcl.losses import supcon_loss
from pcl.models import SupConNet
from pcl.presets import PRESETS, get_preset
from pcl.registry import RegistryError
from pcl.store import RunStore
from pcl.train import load_model, train_run


# --- SimCLR --------------------------------------------------------------------------------------
def _nt_xent_loop(views: torch.Tensor, T: float) -> float:
    """NT-Xent as SimCLR writes it (Chen et al. 2020), one anchor at a time: 2N views numbered so
    that 2k and 2k+1 are the two views of image k; l(i, j) = -log(exp(s_ij/T) / sum_{m != i}
    exp(s_im/T)) with cosine similarity s; the loss is the mean of l over all 2N anchors."""
    n = views.shape[0]
    z = [views[k, v].double() for k in range(n) for v in range(2)]  # interleaved, not view-major

    def sim(a, b):
        return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))

    total = 0.0
    for i in range(2 * n):
        j = i + 1 if i % 2 == 0 else i - 1
        denom = sum(math.exp(sim(z[i], z[m]) / T) for m in range(2 * n) if m != i)
        total += -math.log(math.exp(sim(z[i], z[j]) / T) / denom)
    return total / (2 * n)


@pytest.mark.parametrize("T,base_T", [(0.5, 0.5), (0.5, 0.07), (0.2, 0.07)])
def test_nt_xent_equals_a_per_anchor_loop(T, base_T):
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(7, 2, 5, generator=g), dim=2)
    expected = (T / base_T) * _nt_xent_loop(f, T)  # scaled by T / base_T like SupCon
    assert float(supcon_loss(f, None, T, base_T)) == pytest.approx(expected, rel=1e-6)


def test_simclr_training_loss_is_nt_xent_of_two_views_and_ignores_labels():
    """The SimCLR phase's loss on a batch = the loop over the model's projections of the same two
    augmented views (same generator state), and does not depend on the labels; SupCon's does."""
    cfg = get_preset("smoke-extended", dataset="synthetic").run("simclr", 0, proj_dim=16)
    assert (cfg.method, cfg.temperature, cfg.base_temperature) == ("simclr", 0.5, 0.07)
    torch.manual_seed(0)
    model = methods.get("simclr").build(cfg).eval()  # eval: BN in a fixed state for the comparison
    net = methods.get("simclr").network(model)
    spec = methods.get("simclr").phases(cfg)[0]
    loss_fn = spec.loss(model, net, cfg, torch.device("cpu"))
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y1, y2 = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([3, 1, 4, 1, 5, 9])
    with torch.no_grad():
        a = float(loss_fn(x, y1, torch.Generator().manual_seed(2)))
        b = float(loss_fn(x, y2, torch.Generator().manual_seed(2)))
        v = augment.supcon_augment(x, torch.Generator().manual_seed(2))
        z = model.project(v)
    views = torch.stack([z[:6], z[6:]], 1)
    assert a == b
    assert a == pytest.approx((0.5 / 0.07) * _nt_xent_loop(views, 0.5), rel=1e-5)
    supcon = methods.get("supcon").phases(replace(cfg, method="supcon"))[0]
    sl = supcon.loss(model, net, cfg, torch.device("cpu"))
    with torch.no_grad():
        assert float(sl(x, y1, torch.Generator().manual_seed(2))) != pytest.approx(a, rel=1e-4)


def test_simclr_is_supcon_without_labels_in_everything_else():
    p = get_preset("extended")
    sim, sup = p.run("simclr", 3), p.run("supcon", 3)
    assert replace(sim, method="supcon") == sup  # same hyperparameters, augmentation and head
    assert sim.run_hash() != sup.run_hash()
    assert isinstance(methods.get("simclr").build(replace(sim, depth=10, width=1)), SupConNet)
    assert [s.name for s in methods.get("simclr").phases(sim)] == ["train", "head"]
    one = p.run("simclr", 3, "oneshot", 0.9)
    assert one.parent() == sim
    g = p.run("simclr", 3, "gmp_early", 0.9)
    assert g.parent() is None and g.temperature == 0.5


def test_presets_methods():
    assert PRESETS["paper"].methods == PRESETS["cpu"].methods == PRESETS["smoke"].methods == ("ce", "supcon")
    assert PRESETS["extended"].methods == ("ce", "supcon", "simclr")
    paper, ext = study.plan(get_preset("paper")), study.plan(get_preset("extended"))
    assert {c.method for c in paper} == {"ce", "supcon"}
    assert {c.method for c in ext} == {"ce", "supcon", "simclr"}
    # the extended plan is the paper plan plus the same runs for SimCLR
    assert {c.run_hash() for c in ext if c.method != "simclr"} == {c.run_hash() for c in paper}
    assert len(ext) == len(paper) * 3 // 2
    assert get_preset("smoke", methods=("ce", "simclr")).methods == ("ce", "simclr")
    with pytest.raises(ConfigError, match="'byol'.*'simclr'"):
        get_preset("smoke", methods=("ce", "byol"))


# --- registries ------------------------------------------------------------------------------------
def test_registry_names_and_errors():
    assert methods.names()[:3] == ("ce", "supcon", "simclr")
    assert set(schedules.names()) == {"none", "gmp_early", "gmp_late", "gmp", "oneshot"}
    with pytest.raises(ConfigError, match="'sgd'.*'ce'.*'supcon'.*'simclr'"):
        RunConfig(method="sgd")
    with pytest.raises(RegistryError, match="already registered"):
        methods.register(methods.Method())
    with pytest.raises(RegistryError, match="like"):
        methods.register(methods.Method("x", like="dino"))
    with pytest.raises(RegistryError, match="already registered"):
        schedules.register(schedules.OneShot())
    with pytest.raises(RegistryError, match="'lth'.*'oneshot'"):
        schedules.get("lth")
    with pytest.raises(RegistryError, match="Method instance"):
        methods.register(schedules.OneShot("x"))


# hand-written: which of these fields each (method, schedule) uses
USES = {"ce": set(), "supcon": {"temperature", "head_epochs"}, "simclr": {"temperature", "head_epochs"},
        "none": set(), "gmp_early": {"gmp_events"}, "gmp": {"gmp_begin", "gmp_end", "gmp_events"},
        "oneshot": {"finetune_epochs"}}


def test_fields_a_run_does_not_use_are_reset_by_ownership():
    """canonical() keeps exactly the fields the run's method and schedule own."""
    odd = dict(temperature=0.3, head_epochs=7, finetune_epochs=9, gmp_begin=0.1, gmp_end=0.2,
               gmp_events=11)
    for m in ("ce", "supcon", "simclr"):
        for sch, s in (("none", 0.0), ("gmp_early", 0.5), ("gmp", 0.5), ("oneshot", 0.5)):
            c = canonical(RunConfig(method=m, pruning=sch, sparsity=s, **odd))
            for f in odd:
                assert (getattr(c, f) != getattr(RunConfig(), f)) == (f in USES[m] | USES[sch]), (m, sch, f)


def test_entry_hparams_enter_the_hash_only_when_used_and_not_default():
    p = get_preset("smoke", dataset="synthetic")
    one = p.run("supcon", 0, "oneshot", 0.9)
    assert one.hparams == () and one.hp("finetune_nesterov") is True and one.hp("head_gmp") == (0.025, 0.5)
    # a non-default value names another run; the default is the same run as not giving it
    assert p.run("supcon", 0, "oneshot", 0.9, finetune_momentum=0.9).run_hash() == one.run_hash()
    moved = p.run("supcon", 0, "oneshot", 0.9, finetune_momentum=0.5)
    assert moved.run_hash() != one.run_hash() and moved.hp("finetune_momentum") == 0.5
    head = p.run("supcon", 0, "gmp_early", 0.9, head_gmp=(0.1, 0.6))
    assert head.run_hash() != p.run("supcon", 0, "gmp_early", 0.9).run_hash()
    assert RunConfig.from_dict(head.to_dict()) == head
    # the one-shot optimiser does not belong to a GMP run, the head window not to CE
    with pytest.raises(ConfigError, match="finetune_momentum"):
        p.run("supcon", 0, "gmp_early", 0.9, finetune_momentum=0.5)
    with pytest.raises(ConfigError, match="head_gmp"):
        p.run("ce", 0, head_gmp=(0.1, 0.6))
    with pytest.raises(ConfigError, match="tuple"):
        RunConfig(method="supcon", hparams=(("head_gmp", 0.5),))
    # the dense parent of a one-shot run keeps the method's hparams, drops the schedule's
    assert moved.parent() == p.run("supcon", 0)
    assert head.parent() is None and p.run("supcon", 0, "oneshot", 0.9, head_gmp=(0.1, 0.6)).parent() == \
        p.run("supcon", 0, head_gmp=(0.1, 0.6))


def test_stages_and_plan_read_the_schedule_registry():
    assert schedules.stages() == ("dense", "floor", "gmp", "oneshot", "onset")
    p = get_preset("smoke", dataset="synthetic")
    # a new schedule listed in a preset is planned in its stage, with no change to study.plan
    schedules.register(schedules.FixedGMP("gmp_mid_test", fixed=(0.3, 0.5)))
    try:
        q = replace(p, schedules=("gmp_mid_test", "oneshot"))
        gmp = study.plan(q, "gmp")
        assert {c.pruning for c in gmp} == {"gmp_mid_test"}
        assert len(gmp) == len(q.methods) * q.seeds * len(q.sparsities)
        assert gmp[0].gmp_window == (0.3, 0.5) and gmp[0].schedule == "gmp_mid_test"
        assert gmp[0].parent() is None
    finally:
        schedules.unregister("gmp_mid_test")
    # every child is planned after its parent
    order = {c.run_hash(): i for i, c in enumerate(study.plan(p))}
    for c in study.plan(p):
        if c.parent() is not None:
            assert order[c.parent().run_hash()] < order[c.run_hash()]


def test_onset_points_are_the_planned_sweep_and_the_declared_schedules():
    p = get_preset("smoke", dataset="synthetic")
    assert evaluate.onset_begins(p) == {"gmp_early": 0.0125, "gmp@0.40-0.64": 0.4}
    # a schedule with the sweep's duration joins only when declared, never by its window length
    schedules.register(schedules.FixedGMP("gmp_same_len", fixed=(0.3, 0.5375)))
    try:
        q = replace(p, schedules=("gmp_early", "gmp_same_len"), onset_points_from=())
        assert evaluate.onset_begins(q) == {"gmp@0.40-0.64": 0.4}
        q = replace(q, onset_points_from=("gmp_same_len",))
        assert evaluate.onset_begins(q) == {"gmp_same_len": 0.3, "gmp@0.40-0.64": 0.4}
    finally:
        schedules.unregister("gmp_same_len")


# --- a toy method, defined here only, through plan -> train -> evaluate -> claims ------------------
CALLS = {"toy": 0}


def _smoothed_ce(model, net, cfg, device):
    """CE with label smoothing 0.2 on the CE augmentation: a loss no module of pcl knows."""
    def loss_fn(x, y, g):
        CALLS["toy"] += 1
        logits = model(augment.ce_augment(x, g, cfg.vflip).contiguous(memory_format=torch.channels_last))
        return F.cross_entropy(logits, y, label_smoothing=0.2)
    return loss_fn


@dataclass(frozen=True)
class SmoothCE(methods.Method):
    name: str = "toy"
    like: str = "ce"
    label: str = "toy CE"

    def phases(self, cfg):
        return (replace(methods.CE_TRAIN, loss=_smoothed_ce),)


@pytest.fixture
def toy():
    m = methods.register(SmoothCE())
    yield m
    methods.unregister("toy")


def test_toy_method_end_to_end(toy, tmp_path):
    base = get_preset("smoke", dataset="synthetic")
    p = replace(base, methods=("ce", "toy"), schedules=("gmp_early", "oneshot"), sparsities=(0.9,),
                onset_begins=(), noise_floor=False, ce=replace(base.ce, epochs=1), headline_sparsity=0.9)
    configs = study.plan(p)
    assert {(c.method, c.schedule) for c in configs} == {
        (m, s) for m in ("ce", "toy") for s in ("dense", "gmp_early", "oneshot")}
    store = RunStore(tmp_path / "runs")
    for c in configs:  # plan order: every parent before its children
        CALLS["toy"] = 0
        r = train_run(c, store, device="cpu", progress=False, threads=1)
        assert (CALLS["toy"] > 0) == (c.method == "toy" and c.pruning != "oneshot"), c.schedule
        if c.pruning != "none":
            assert r["sparsity"] == pytest.approx(0.9, abs=0.01)
    toy_one = p.run("toy", 1, "oneshot", 0.9)
    assert toy_one.parent() == p.run("toy", 1)
    # the two methods trained differently from the same initialisation (seed 0)
    a, b = store.load_state(p.run("ce", 0)), store.load_state(p.run("toy", 0))
    assert not torch.equal(a["fc.weight"], b["fc.weight"])
    assert isinstance(load_model(p.run("toy", 0), store), torch.nn.Module)

    pops = evaluate.populations(p, store)
    assert {k for k in pops if k[0] == "toy"} == {("toy", "dense", 0.0), ("toy", "gmp_early", 0.9),
                                                   ("toy", "oneshot", 0.9)}
    data = evaluate.study_data(p)
    labels = data.test.labels.numpy()
    runs = evaluate.run_table(p, store)
    assert set(runs.method) == {"ce", "toy"} and len(runs) == len(configs)
    pies = evaluate.pie_table(p, store, labels)
    qs = evaluate.qscore_table(p, store, labels)
    depths = evaluate.depth_table(p, store, data, device="cpu", progress=False)
    for t in (pies, qs, depths):
        assert {"ce", "toy"} <= set(t.method)
    # the PIE flags of the toy population are the modal-label disagreement, recomputed here
    tp = pies[(pies.method == "toy") & (pies.schedule == "gmp_early")].sort_values("image")
    dense = np.stack([store.load_logits(c).argmax(1).numpy() for c in pops[("toy", "dense", 0.0)]])
    pruned = np.stack([store.load_logits(c).argmax(1).numpy() for c in pops[("toy", "gmp_early", 0.9)]])

    def modal(pr):  # ties to the smallest class
        return np.array([np.bincount(col, minlength=10).argmax() for col in pr.T])
    assert (tp.pie.to_numpy() == (modal(dense) != modal(pruned))).all()
    # claims: the public entry point, with prediction depth (data given)
    t1 = claims.claims_table(p, store, data)
    assert len(t1) and t1.comparison.str.contains("toy").any()
    assert t1.verdict.notna().all()


def test_phases_own_their_parameters_and_train_mode():
    """The linear head trains only ``fc`` with the encoder in eval mode; GMP prunes the encoder in
    the contrastive phase and the head in the head phase, with the head's own window."""
    from pcl.pruning import Pruner
    from pcl.train import build_phase

    p = get_preset("smoke-extended", dataset="synthetic")
    cfg = p.run("simclr", 0, "gmp_early", 0.5)
    m = methods.get("simclr")
    torch.manual_seed(0)
    model = m.build(cfg)
    net = m.network(model)
    split = evaluate.study_data(p).train
    train, head = (build_phase(cfg, s, model, net, split, torch.device("cpu")) for s in m.phases(cfg))
    assert {id(q) for q in train.params} == {id(q) for q in model.parameters()}
    assert {id(q) for q in head.params} == {id(q) for q in net.fc.parameters()}
    head.train_mode()
    assert net.fc.training and not net.training and not any(b.training for b in net.groups)
    train.train_mode()
    assert model.training and net.groups[0].training
    (pt,), (ph,) = train.callbacks, head.callbacks
    assert isinstance(pt, Pruner) and isinstance(ph, Pruner)
    assert pt.include("net.stem.weight")
    assert not pt.include("head.0.weight") and not pt.include("net.fc.weight")
    assert ph.include("fc.weight") and not ph.include("stem.weight")
    steps = (len(split) // cfg.head_batch_size) * cfg.head_epochs
    assert (ph.begin, ph.end) == (round(0.025 * steps), max(round(0.5 * steps), round(0.025 * steps) + 1))
