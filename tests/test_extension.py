"""Extending the study from this file alone: a fourth method and a fifth schedule.

A new contributor's extension, registered exactly as ``docs/ARCHITECTURE.md`` says and touching
no other file: SimSiam (a predictor head on a projector, stop-gradient, symmetric negative cosine)
with a hyperparameter of its own (``pred_dim``), and GMP with a linear ramp over gmp_early's
window. Both go through plan -> training -> tables -> claims -> every figure on synthetic data.

With them registered, the existing study must not move: claim 3's inputs and verdicts for the
existing methods and schedules are those of the study without them (the linear schedule has the
onset sweep's duration, yet is no onset point: the preset declares those), and F0 draws the
linear ramp that the Pruner followed.

The local executor's workers import ``pcl`` afresh, where these entries do not exist, so the
runs train in this process with ``train_run``, in plan order (parents first), as ``run_all``
would.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import matplotlib
import matplotlib.colors
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

matplotlib.use("Agg")

from pcl import augment, claims, evaluate, gallery, methods, plots, pruning, schedules, study  # noqa: E402
from pcl.config import ConfigError  # noqa: E402
from pcl.models import WideResNet, autocast, channels_last  # noqa: E402
from pcl.presets import get_preset  # noqa: E402
from pcl.store import RunStore  # noqa: E402
from pcl.train import steps_per_epoch, train_run  # noqa: E402

LINEAR = "gmp_linear"
EARLY_WINDOW = schedules.get("gmp_early").fixed


# --- the method ---------------------------------------------------------------------------------
class SimSiamNet(nn.Module):
    """WRN encoder (``net``, evaluated) + projector + predictor (``pred_dim`` hidden units)."""

    def __init__(self, depth: int, width: int, num_classes: int, proj_dim: int, pred_dim: int):
        super().__init__()
        self.net = WideResNet(depth, width, num_classes)
        f = self.net.feature_dim
        self.projector = nn.Sequential(nn.Linear(f, f), nn.ReLU(inplace=True), nn.Linear(f, proj_dim))
        self.predictor = nn.Sequential(nn.Linear(proj_dim, pred_dim), nn.ReLU(inplace=True),
                                       nn.Linear(pred_dim, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient: p, z are (2B, d), first views then second."""
    b = p.shape[0] // 2
    z = z.detach()
    return -0.5 * (F.cosine_similarity(p[:b], z[b:]).mean() + F.cosine_similarity(p[b:], z[:b]).mean())


def _simsiam_loss_fn(model: SimSiamNet, net: WideResNet, cfg, device):
    def loss_fn(x, y, g):
        v = channels_last(augment.supcon_augment(x, g))
        with autocast(device, cfg.precision):
            z = model.projector(model.net.features(v)).float()
            p = model.predictor(z).float()
        return simsiam_loss(p, z)
    return loss_fn


SIMSIAM_TRAIN = methods.PhaseSpec("train", methods.main_optim, lambda model, net: list(model.parameters()),
                                  _simsiam_loss_fn, prune=lambda model, net: (model, pruning.encoder_only))


@dataclass(frozen=True)
class SimSiam(methods.Contrastive):
    name: str = "simsiam"
    label: str = "SimSiam"
    hparams: dict[str, Any] = field(default_factory=lambda: {"head_gmp": (0.025, 0.5), "pred_dim": 32},
                                    hash=False, compare=False)

    def build(self, cfg):
        return SimSiamNet(cfg.depth, cfg.width, cfg.num_classes, cfg.proj_dim, cfg.hp("pred_dim"))

    def phases(self, cfg):
        return (SIMSIAM_TRAIN, methods.LINEAR_HEAD)


# --- the study ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registered():
    methods.register(SimSiam())
    schedules.register(schedules.FixedGMP(LINEAR, fixed=EARLY_WINDOW, ramp=pruning.linear))
    yield
    methods.unregister("simsiam")
    schedules.unregister(LINEAR)


def _presets():
    """The study without and with the extension (2 seeds, one sparsity: 24 small runs)."""
    base = get_preset("smoke", dataset="synthetic", synthetic_size=100)
    small = dict(sparsities=(0.9,), onset_begins=(0.4,), noise_floor=False,
                 ce=replace(base.ce, batch_size=16), supcon=replace(base.supcon, batch_size=32))
    old = replace(base, methods=("ce",), schedules=("gmp_early", "gmp_late", "oneshot"), **small)
    new = replace(old, methods=("ce", "simsiam"), schedules=old.schedules + (LINEAR,))
    return old, new


@pytest.fixture(scope="module")
def trained(registered, tmp_path_factory):
    old, new = _presets()
    store = RunStore(tmp_path_factory.mktemp("ext") / "runs")
    for c in study.plan(new):  # parents first
        train_run(c, store, device="cpu", progress=False, threads=1)
    return old, new, store, evaluate.study_data(new)


def test_own_hyperparameter_enters_only_its_runs_hash(registered):
    _, p = _presets()
    c = p.run("simsiam", 0)
    assert c.hp("pred_dim") == 32 and c.hparams == ()
    assert p.run("simsiam", 0, pred_dim=32).run_hash() == c.run_hash()
    assert p.run("simsiam", 0, pred_dim=16).run_hash() != c.run_hash()
    with pytest.raises(ConfigError, match="pred_dim"):
        p.run("ce", 0, pred_dim=16)
    model = methods.get("simsiam").build(p.run("simsiam", 0, pred_dim=16))
    assert model.predictor[0].out_features == 16


def test_simsiam_loss_hand_worked_and_stops_gradients():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0], [0.0, 2.0]], requires_grad=True)
    # cos(p1, z2) = 0, cos(p2, z1) = 1/sqrt(2)
    assert float(simsiam_loss(p, z).detach()) == pytest.approx(-0.5 * (0.0 + 2 ** -0.5))
    simsiam_loss(p, z).backward()
    assert z.grad is None and p.grad is not None


def test_plan_trains_the_new_entries_and_onset_points_stay(trained):
    old, new, store, _ = trained
    planned = {(c.method, c.schedule) for c in study.plan(new)}
    assert ("simsiam", LINEAR) in planned and ("simsiam", "oneshot") in planned
    assert all(store.is_done(c) for c in study.plan(new))
    # same duration as the sweep, but not declared an onset point: not one
    assert evaluate.onset_begins(new) == evaluate.onset_begins(old) == {
        "gmp_early": EARLY_WINDOW[0], "gmp@0.40-0.64": 0.4}


def test_pruner_followed_the_linear_ramp(trained):
    _, new, store, data = trained
    cfg = new.run("ce", 0, LINEAR, 0.9)
    events = store.load_history(cfg)["pruning_events"]["train"]
    total = steps_per_epoch(len(data.train), cfg.batch_size) * cfg.epochs
    b, e = round(EARLY_WINDOW[0] * total), round(EARLY_WINDOW[1] * total)
    assert len(events) >= 2
    for step, target, _ in events:  # hand-worked linear ramp in steps
        assert target == pytest.approx(0.9 * min(1.0, (step - b) / (e - b)))
    early = store.load_history(new.run("ce", 0, "gmp_early", 0.9))["pruning_events"]["train"]
    assert early[0][1] > events[0][1]  # the cubic ramp prunes faster at first


def test_claim_3_for_the_existing_study_is_unchanged(trained):
    old, new, store, data = trained
    ev_old, ev_new = claims.load_evidence(old, store), claims.load_evidence(new, store)
    assert {k: w for k, w in ev_new.onset.items() if k.method != "simsiam"} == ev_old.onset
    assert all(k.schedule != LINEAR for k in ev_new.onset)
    cols = ["comparison", "statistic", "estimate", "ci_low", "ci_high", "verdict"]
    t_old = claims.run_claims(ev_old, [claims.claim_3])[cols]
    t_new = claims.run_claims(ev_new, [claims.claim_3])[cols]
    t_new = t_new[~t_new.comparison.str.contains("simsiam")].reset_index(drop=True)
    assert len(t_old) and t_old.equals(t_new)


def _legends(fig) -> list:
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]


def _legend_texts(fig) -> str:
    return " ".join(t.get_text() for leg in _legends(fig) for t in leg.get_texts())


def _legend_colour(fig, label: str) -> str:
    """The colour of the legend entry ``label`` (the one per method every panel shares)."""
    for leg in _legends(fig):
        for text, handle in zip(leg.get_texts(), leg.legend_handles, strict=True):
            if text.get_text() == label:
                return matplotlib.colors.to_hex(handle.get_color())
    raise AssertionError(f"no legend entry {label!r}")


def test_tables_claims_and_every_figure(trained, tmp_path):
    _, p, store, data = trained
    labels = data.test.labels.numpy()
    runs = evaluate.study_table("runs", p, store)
    pies = evaluate.study_table("pies", p, store, data=data)
    qscores = evaluate.study_table("qscores", p, store, data=data)
    depths = evaluate.study_table("depths", p, store, data=data)
    for t in (runs, pies, qscores, depths):
        assert {"simsiam"} <= set(t.method)
    assert LINEAR in set(runs.schedule)
    t1 = claims.claims_table(p, store, data)
    assert t1.comparison.str.contains("simsiam").any() and t1.verdict.notna().all()
    counts = claims.pie_count_intervals(p, store)
    per_image = evaluate.images_table(evaluate.population_predictions(p, store), labels,
                                      p.ce.num_classes, qscores, depths)
    oc, _ = claims.overlap_matrix(evaluate.population_predictions(p, store), p.ce.num_classes,
                                  p.headline_sparsity)
    rng = np.random.default_rng(0)
    emb = {f"{m} dense": rng.normal(size=(len(labels), 2)) for m in p.methods}
    hist = {m: store.load_history(p.run(m, 0)) for m in p.methods}
    onset = evaluate.onset_table(runs, counts, p)
    sched_cfgs = {s: p.run("ce", 0, s, 0.9) for s in ("gmp_early", LINEAR)}
    figs = {
        "F0": plots.fig_training_curves(hist),
        "F0b": plots.fig_gmp_schedules(sched_cfgs),
        "F1": plots.fig_accuracy(runs),
        "F2": plots.fig_pie_counts(counts),
        "F3": plots.fig_pies_per_class(pies, p.headline_sparsity),
        "F4": plots.fig_overlap(oc, p.headline_sparsity),
        "F5": plots.fig_qscore(qscores, pies, p.headline_sparsity),
        "F6": plots.fig_depth(depths, pies, p.headline_sparsity),
        "F6b": plots.fig_depth_distributions(depths, pies, p.headline_sparsity),
        "F7": plots.fig_umap(emb, labels),
        "F8": plots.fig_schedules(runs, counts, p.headline_sparsity, onset),
        "F9": plots.fig_pie_gallery(gallery.gallery_panels(per_image, p.headline_sparsity,
                                                           p.schedules), data.test.images),
        "F9b": plots.fig_unique_pies(gallery.unique_panels(per_image, p.headline_sparsity,
                                                           p.schedules), data.test.images),
    }
    for name, fig in figs.items():
        assert plots.save(fig, name, tmp_path, "test"), name
    for name in ("F1", "F2", "F8"):
        assert "SimSiam" in _legend_texts(figs[name]), name
    # one method, one colour: the same in every figure, and distinct from CE's
    colours = {name: _legend_colour(figs[name], "SimSiam") for name in ("F1", "F2", "F8")}
    assert len(set(colours.values())) == 1, colours
    assert colours["F1"] != _legend_colour(figs["F1"], "CE")
    assert LINEAR in _legend_texts(figs["F1"]) + _legend_texts(figs["F2"])
    # F0 draws the linear ramp (hand-worked), not gmp_early's cubic
    (line,) = [ln for ln in figs["F0b"].axes[0].lines if ln.get_label().startswith(LINEAR)]
    t, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    b, e = EARLY_WINDOW
    np.testing.assert_allclose(y, 0.9 * np.clip((t - b) / (e - b), 0, 1), atol=1e-12)
