"""check-study: the seed-noise rule against hand-worked numbers and simulation, and both paths
(bit for bit on this machine, statistical on a faked other one, a changed config failing) on a
small synthetic study."""
from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pcl import check_study, evaluate, provenance
from pcl.store import RunStore


def test_bounds_hand_worked():
    # values 1..5: mean 3, sd^2 = 2.5, sd^2 * (1 + 1/5) = 3; t(4, 0.975) = 2.7764451 (tables)
    lo, hi = check_study.bounds(np.arange(1.0, 6.0), 0.05)
    assert lo == pytest.approx(3 - 2.7764451 * 3 ** 0.5, abs=1e-6)
    assert hi == pytest.approx(3 + 2.7764451 * 3 ** 0.5, abs=1e-6)
    assert check_study.bounds([2.0, 2.0, 2.0], 0.01) == (2.0, 2.0)
    for bad in ([1.0], [[1.0, 2.0]]):
        with pytest.raises(ValueError, match="at least 2 values"):
            check_study.bounds(bad, 0.05)
    with pytest.raises(ValueError, match="alpha"):
        check_study.bounds([1.0, 2.0], 1.5)


def test_bounds_cover_one_more_draw_at_the_stated_rate():
    """A new draw of the values' distribution falls outside with probability alpha (a z interval,
    or one without the 1/n term, would be outside about twice as often at n = 5)."""
    rng = np.random.default_rng(0)
    draws = rng.normal(0.6, 0.01, size=(4000, 6))
    outside = np.mean([not check_study._within(d[5], d[:5], 0.1) for d in draws])
    assert 0.08 < outside < 0.12


def _brute_modal(column: np.ndarray) -> int:
    c = Counter(column.tolist())
    top = max(c.values())
    return min(k for k, v in c.items() if v == top)  # ties: the smallest class


def test_loo_agreement_against_brute_force():
    rng = np.random.default_rng(1)
    preds = rng.integers(0, 4, size=(5, 60))
    got = check_study.loo_agreement(preds, 4)
    for i in range(5):
        others = np.delete(preds, i, 0)
        modal = np.array([_brute_modal(others[:, j]) for j in range(60)])
        assert got[i] == pytest.approx(np.mean(preds[i] == modal))
    assert check_study.loo_outside([1.0, 1.1, 0.9, 1.0, 50.0], 0.01) >= 1
    with pytest.raises(ValueError, match="models >= 2"):
        check_study.loo_agreement(preds[:1], 4)


def _population(rng, easy: np.ndarray, truth: np.ndarray, models: int, classes: int = 10):
    """Models that predict the true class of image i with probability easy[i], else a random one."""
    right = rng.random((models, len(truth))) < easy
    return np.where(right, truth, rng.integers(0, classes, (models, len(truth))))


def test_agreement_rule_by_simulation():
    """A new draw of a population, compared as check-study compares a retrained run (its agreement
    with the modal label of the seeds other than its own, against the seeds' leave-one-out
    agreements), fails at about the rule's rate; a model of a changed population fails nearly
    always."""
    rng = np.random.default_rng(2)
    n_img, seeds, reps, alpha = 400, 5, 300, 0.1
    truth = rng.integers(0, 10, n_img)
    easy = rng.beta(4, 2, n_img)
    false_alarm = changed = 0
    for _ in range(reps):
        pop = _population(rng, easy, truth, seeds)
        ref = check_study.loo_agreement(pop, 10)
        others = pop[1:]  # the retrained run is seed 0: leave the committed seed 0 out
        new = _population(rng, easy, truth, 1)[0]
        false_alarm += not check_study._within(check_study.agreement(new, others, 10), ref, alpha)
        worse = _population(rng, 0.8 * easy, truth, 1)[0]
        changed += not check_study._within(check_study.agreement(worse, others, 10), ref, alpha)
    assert false_alarm / reps < alpha + 0.05
    assert changed / reps > 0.9


def test_dense_reference_includes_the_noise_floor(smoke, monkeypatch):
    """The dense population is compared with its dense and noise-floor seeds (one config, other
    seeds); a pruned one with its own seeds only; a sampled run the preset lacks is left out."""
    from pcl.keys import PopKey

    dense = [smoke.run("ce", s) for s in range(2)]
    floor = [smoke.run("ce", s) for s in range(2, 4)]
    early = [smoke.run("ce", s, "gmp_early", 0.9) for s in range(2)]
    pops = {PopKey.dense("ce"): dense, PopKey.floor("ce"): floor,
            PopKey("ce", "gmp_early", 0.9): early}
    monkeypatch.setattr(check_study, "populations", lambda preset, store: pops)
    sample = (("ce", "none"), ("ce", "gmp_early"), ("ce", "gmp_late"), ("simclr", "none"))
    got = check_study.reference_populations(smoke, None, sample)
    assert got == {PopKey.dense("ce"): dense + floor, PopKey("ce", "gmp_early", 0.9): early}
    assert [c.run_hash() for c in check_study.sample_configs(smoke, sample)] == [
        dense[0].run_hash(), early[0].run_hash(), smoke.run("ce", 0, "gmp_late", 0.9).run_hash()]


# ------------------------------------------------------------------------------------------------
SAMPLE = (("ce", "none"),)


def _preset(**ce):
    """A learnable synthetic study: CE only, 6 seeds, no floor. 12 epochs of batch 16 reach about
    70 % on 200 synthetic images (seed sd about 9 points); at lr 1e-3 about 12 %, more than five
    seed sds below, where the rule's bounds for 6 seeds lie."""
    from pcl.presets import get_preset

    p = get_preset("smoke", dataset="synthetic", methods=("ce",))
    return replace(p, seeds=6, noise_floor=False,
                   ce=replace(p.ce, epochs=12, batch_size=16, **ce))


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """A committed study in a temporary folder, made as notebook 04 makes one."""
    from pcl.train import train_run

    root = tmp_path_factory.mktemp("study")
    p, store = _preset(), RunStore(root / "runs")
    for seed in range(p.seeds):
        train_run(p.run("ce", seed), store, device="cpu", progress=False)
    results = root / "results"
    results.mkdir()
    runs = evaluate.run_table(p, store)
    runs.to_csv(results / "runs.csv", index=False, float_format="%.5g")
    machine = check_study.record_study(p, store, results, sample=SAMPLE)
    return p, store, results, runs, machine


@pytest.mark.slow
def test_committed_tables_carry_provenance(committed):
    p, store, results, runs, machine = committed
    cfgs = [p.run("ce", s) for s in range(p.seeds)]
    assert list(runs.logits_hash) == [provenance.logits_hash(store.load_logits(c)) for c in cfgs]
    key = provenance.fingerprint_key(store.load_env(cfgs[0]))
    assert set(runs.fingerprint) == {key}
    assert machine["runs"] == p.seeds and machine["unrecorded"] == 0
    assert [m["fingerprint"] for m in machine["machines"]] == [key]
    back = check_study.load_committed(results)
    assert back.machine == machine and back.meta["num_classes"] == 10
    assert back.reference["ce|dense|0|preds"].shape == (p.seeds, 200)


def _check(preset, results, tmp_path):
    lines: list[str] = []
    checks = check_study.check(preset, check_study.load_committed(results), workers=1,
                               device="cpu", root=tmp_path / "retrained", sample=SAMPLE,
                               progress=False, say=lines.append)
    return checks, check_study.verdict(checks), "\n".join(lines)


@pytest.mark.slow
def test_same_machine_is_bit_for_bit(committed, tmp_path):
    p, _, results, _, _ = committed
    checks, (ok, line), text = _check(p, results, tmp_path)
    assert ok and [c.path for c in checks] == ["bit-for-bit"], text
    assert line.startswith("VERDICT: PASS: all 1 runs equal the committed ones bit for bit")
    assert "Retrained here: Made on one machine" in text


@pytest.fixture
def other_machine(committed, tmp_path):
    """The committed study as if made on another machine (its fingerprints replaced)."""
    results = tmp_path / "other"
    shutil.copytree(committed[2], results)
    runs = pd.read_csv(results / "runs.csv", dtype=str)
    runs["fingerprint"] = "0" * 12
    runs.to_csv(results / "runs.csv", index=False)
    return results


@pytest.mark.slow
def test_other_machine_is_judged_by_seed_noise(committed, other_machine, tmp_path):
    checks, (ok, line), text = _check(committed[0], other_machine, tmp_path)
    assert ok and checks[0].path == "statistical" and checks[0].stats_ok, text
    assert "accuracy" in checks[0].detail and "agreement" in checks[0].detail
    assert line.startswith("VERDICT: PASS: 1 of 1 runs (another machine) lie within seed noise")


@pytest.mark.slow
def test_a_changed_config_fails(committed, other_machine, tmp_path):
    checks, (ok, line), text = _check(_preset(lr=1e-3), other_machine, tmp_path)
    assert not ok and line.startswith("VERDICT: FAIL: 1 of 1 runs"), text
    assert checks[0].stats_ok is False and "OUTSIDE" in checks[0].detail
    assert "config differs" in checks[0].detail


def test_main_without_a_committed_study(tmp_path, capsys):
    assert check_study.main(["--preset", "cpu", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "runs.csv" in err and "check_reference.npz" in err and "notebook 04" in err
