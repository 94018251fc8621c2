"""pcl.store and pcl.train on tiny synthetic runs (smoke preset, 200 synthetic images)."""
from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
import torch

import pcl.train as TR
from pcl.data import synthetic_cifar
from pcl.presets import get_preset
from pcl.pruning import layer_sparsity, prunable
from pcl.store import RUN_FILES, CorruptRunError, RunStore, atomic_save, atomic_write_json

SMOKE = get_preset("smoke", dataset="synthetic")
CE = SMOKE.run("ce", 0)  # 2 epochs of 3 steps
CE_GMP = SMOKE.run("ce", 0, "gmp", 0.8, epochs=3, gmp_begin=0.2, gmp_end=0.9, gmp_events=6)
SC_GMP = SMOKE.run("supcon", 0, "gmp_early", 0.9)


def _train(cfg, store):
    return TR.train_run(cfg, store, device="cpu", progress=False)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def done_store(tmp_path_factory):
    """One store holding the finished dense CE run (shared by several tests)."""
    store = RunStore(tmp_path_factory.mktemp("done"))
    torch.set_num_threads(1)
    _train(CE, store)
    return store


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs in a separate store, trained once: {cfg: summary}."""
    store = RunStore(tmp_path_factory.mktemp("ref"))
    torch.set_num_threads(1)
    return store, {c: _train(c, store) for c in (CE, CE_GMP)}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- finished runs ------------------------------------------------------------------------------
def test_finished_run_has_done_and_all_files(done_store):
    d = done_store.path(CE)
    assert d == done_store.root / "ce" / CE.run_hash()
    names = {p.name for p in d.iterdir()}
    assert set(RUN_FILES) | {"DONE"} <= names
    assert "checkpoint.pt" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    recorded = json.loads((d / "DONE").read_text())
    assert set(recorded) == set(RUN_FILES) | {"env.json"}
    for name, digest in recorded.items():
        assert digest == _sha(d / name)
    assert json.loads((d / "config.json").read_text()) == CE.to_dict()
    logits = torch.load(d / "logits.pt")
    features = torch.load(d / "features.pt")
    assert logits.shape == (200, 10) and features.shape == (200, 64)
    # the recorded accuracy is that of the stored logits on the synthetic test labels
    test = synthetic_cifar(200).test
    hist = json.loads((d / "history.json").read_text())
    acc = sum(int(logits[i].argmax() == test.labels[i]) for i in range(200)) / 200
    assert hist["test_acc"] == pytest.approx(acc)
    assert [r["epoch"] for r in hist["epochs"]] == [1, 2]
    assert all(r["images"] == 192 for r in hist["epochs"])  # 3 full batches of 64
    assert done_store.is_done(CE)
    done_store.verify(CE)


def test_second_train_run_loads_without_training(done_store, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("fit called for a finished run")

    monkeypatch.setattr(TR, "fit", boom)
    before = done_store.load_state(CE)
    r = _train(CE, done_store)
    assert _states_equal(r["state"], before)
    assert r["path"] == done_store.path(CE)


def test_corrupt_model_file_is_reported(done_store, tmp_path):
    store = RunStore(tmp_path / "copy")
    src, dst = done_store.path(CE), store.path(CE)
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    store.load_state(CE)  # intact copy loads
    data = bytearray((dst / "model.pt").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    (dst / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CorruptRunError) as ei:
        store.load_state(CE)
    assert str(dst / "model.pt") in str(ei.value)
    with pytest.raises(CorruptRunError, match="model.pt"):
        _train(CE, store)  # never silently retrained or used
    with pytest.raises(CorruptRunError):
        store.verify(CE)
    store.load_logits(CE)  # other files are still fine


def test_unfinished_run_is_never_read(tmp_path):
    store = RunStore(tmp_path)
    store.begin(CE)
    assert not store.is_done(CE)
    with pytest.raises(FileNotFoundError, match="DONE"):
        store.load_state(CE)


def test_default_store_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PCL_RUNS", str(tmp_path / "r"))
    assert RunStore().root == tmp_path / "r"


# --- resuming -----------------------------------------------------------------------------------
def _record_fit(monkeypatch):
    calls = []
    real = TR.fit

    def wrapped(phase, split, seed, phase_id, device, start_epoch=0, *a, **k):
        calls.append((phase.name, start_epoch))
        return real(phase, split, seed, phase_id, device, start_epoch, *a, **k)

    monkeypatch.setattr(TR, "fit", wrapped)
    return calls


def _interrupt_after_first_checkpoint(monkeypatch):
    real = RunStore.save_checkpoint
    n = {"calls": 0}

    def save(self, cfg, state):
        if n["calls"] >= 1:
            raise KeyboardInterrupt
        n["calls"] += 1
        real(self, cfg, state)

    monkeypatch.setattr(RunStore, "save_checkpoint", save)
    return real


@pytest.mark.parametrize("cfg", [CE, CE_GMP], ids=["dense", "gmp"])
def test_interrupted_run_resumes_to_identical_weights(cfg, reference, tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    real = _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, store)
    assert not store.is_done(cfg)
    ckpt = torch.load(store.path(cfg) / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["phase"] == "train"
    monkeypatch.setattr(RunStore, "save_checkpoint", real)
    calls = _record_fit(monkeypatch)
    r = _train(cfg, store)
    assert calls == [("train", 1)]  # resumed from the checkpoint, not retrained
    ref_store, ref = reference
    assert _states_equal(r["state"], ref[cfg]["state"])
    assert torch.equal(store.load_logits(cfg), ref_store.load_logits(cfg))
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert strip(r["history"]["epochs"]) == strip(ref[cfg]["history"]["epochs"])
    assert r["history"]["pruning_events"] == ref[cfg]["history"]["pruning_events"]
    assert not (store.path(cfg) / "checkpoint.pt").exists()


def test_truncated_checkpoint_is_discarded_and_run_restarts(reference, tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    real = _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _train(CE, store)
    monkeypatch.setattr(RunStore, "save_checkpoint", real)
    p = store.path(CE) / "checkpoint.pt"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    calls = _record_fit(monkeypatch)
    with pytest.warns(UserWarning, match="checkpoint"):
        r = _train(CE, store)
    assert calls == [("train", 0)]  # restarted from scratch
    assert _states_equal(r["state"], reference[1][CE]["state"])
    assert [row["epoch"] for row in r["history"]["epochs"]] == [1, 2]


def test_same_config_twice_is_repeatable(done_store, reference):
    assert _states_equal(done_store.load_state(CE), reference[0].load_state(CE))
    assert torch.equal(done_store.load_features(CE), reference[0].load_features(CE))


# --- pruning in runs ----------------------------------------------------------------------------
def test_oneshot_without_parent_names_it(tmp_path):
    one = SMOKE.run("ce", 1, "oneshot", 0.9)
    parent = SMOKE.run("ce", 1)
    with pytest.raises(FileNotFoundError) as ei:
        _train(one, RunStore(tmp_path))
    assert parent.run_hash() in str(ei.value)


def test_oneshot_holds_global_sparsity_after_finetuning(done_store):
    s = 0.9
    one = SMOKE.run("ce", 0, "oneshot", s)
    assert one.parent() == CE
    parent = TR.load_model(CE, done_store)
    r = _train(one, done_store)
    net = TR.load_model(one, done_store)
    # brute force: the global magnitude threshold over all conv + linear weights of the parent
    pw = {n: p.detach() for n, p in prunable(parent).items()}
    entries = sorted((abs(v), n, i) for n, w in pw.items() for i, v in enumerate(w.flatten().tolist()))
    k = round(s * len(entries))
    expected = {(n, i) for _, n, i in entries[:k]}
    got = {(n, int(i)) for n, w in prunable(net).items() for i in torch.nonzero(w.flatten() == 0).flatten()}
    assert got == expected
    assert r["sparsity"] == pytest.approx(k / len(entries))
    # the kept weights were fine-tuned (not a frozen copy), biases and BN not pruned
    kept_changed = sum(int((w.flatten() != pw[n].flatten()).sum()) for n, w in prunable(net).items())
    assert kept_changed > 0.5 * (len(entries) - k)
    assert (net.fc.bias != 0).all() and (net.bn.weight != 0).all()
    assert [row["phase"] for row in r["history"]["epochs"]] == ["finetune"]


def test_supcon_gmp_run_prunes_encoder_and_linear_head(tmp_path):
    store = RunStore(tmp_path)
    r = _train(SC_GMP, store)
    net = TR.load_model(SC_GMP, store)
    numel = {n: p.numel() for n, p in prunable(net).items()}
    ls = layer_sparsity(net)
    assert set(ls) == set(numel) and "fc.weight" in ls
    for n, frac in ls.items():  # layer-wise GMP: every tensor, the head included
        assert abs(frac * numel[n] - 0.9 * numel[n]) <= 1, (n, frac)
    assert [row["phase"] for row in r["history"]["epochs"]] == ["train", "train", "head"]
    ev = r["history"]["pruning_events"]
    assert set(ev) == {"train", "head"} and ev["train"] and ev["head"]
    assert ev["train"][-1][1] == pytest.approx(0.9) and ev["head"][-1][1] == pytest.approx(0.9)
    # the non-zero weights of the linear head were trained (bias is never pruned)
    assert (net.fc.bias != 0).any()


# --- learning -----------------------------------------------------------------------------------
def test_ce_learns_synthetic_classes(tmp_path):
    cfg = SMOKE.run("ce", 0, epochs=8, batch_size=20)  # 80 steps
    r = _train(cfg, RunStore(tmp_path))
    logits = RunStore(tmp_path).load_logits(cfg)
    test = synthetic_cifar(200).test
    acc = float((logits.argmax(1) == test.labels).float().mean())
    assert acc == pytest.approx(r["test_acc"])
    # chance is 0.1; at n=200 its standard deviation is 0.021, so 0.2 is ~5 sd above chance
    assert acc > 0.2, acc


# --- atomic writes ------------------------------------------------------------------------------
def test_atomic_save_leaves_no_temp_files(tmp_path, monkeypatch):
    p = tmp_path / "sub" / "x.pt"
    digest = atomic_save({"a": torch.arange(5)}, p)
    assert sorted(os.listdir(p.parent)) == ["x.pt"]
    assert digest == _sha(p)
    assert torch.equal(torch.load(p)["a"], torch.arange(5))
    j = tmp_path / "sub" / "y.json"
    assert atomic_write_json({"b": 1}, j) == _sha(j)
    assert json.loads(j.read_text()) == {"b": 1}
    # a failure at the rename keeps the old file and removes the temporary
    import pcl.store as S

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(S.os, "replace", fail)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(3)}, p)
    assert sorted(os.listdir(p.parent)) == ["x.pt", "y.json"]
    assert torch.equal(torch.load(p)["a"], torch.arange(5))


def test_artifact_is_computed_once_and_verified(done_store, tmp_path):
    store = RunStore(tmp_path)
    n = {"calls": 0}

    def compute():
        n["calls"] += 1
        return torch.tensor([1.0, 2.0])

    assert torch.equal(store.artifact(CE, "q", compute), torch.tensor([1.0, 2.0]))
    assert torch.equal(store.artifact(CE, "q", compute), torch.tensor([1.0, 2.0]))
    assert n["calls"] == 1
    p = store.path(CE) / "eval" / "q.pt"
    p.write_bytes(p.read_bytes()[:-3] + b"xyz")
    with pytest.raises(CorruptRunError, match="q.pt"):
        store.artifact(CE, "q", compute)


def test_lr_schedule_hand_values():
    assert TR.lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert TR.lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert TR.lr_at(100, 100, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert TR.lr_at(37, 100, 0.05, "constant") == 0.05
    assert TR.lr_at(49, 100, 1.0, "step", (0.5, 0.75)) == pytest.approx(1.0)
    assert TR.lr_at(50, 100, 1.0, "step", (0.5, 0.75)) == pytest.approx(0.1)
    assert TR.lr_at(80, 100, 1.0, "step", (0.5, 0.75)) == pytest.approx(0.01)
    assert TR.steps_per_epoch(200, 64) == 3 and TR.steps_per_epoch(10, 64) == 1


# --- store: first writer wins, damaged DONE, orphans, extra files ------------------------------
def _fake_outputs(writer: int):
    """A finish() payload that names its writer in every file (to detect mixed files)."""
    state = {"w": torch.full((4,), float(writer))}
    history = {"writer": writer, "test_acc": 0.5, "sparsity": 0.0, "epochs": []}
    return state, history, torch.full((3, 2), float(writer)), torch.full((3, 5), float(writer))


def _writers_of(store, cfg) -> set[int]:
    d = store.path(cfg)
    return {int(torch.load(d / "model.pt")["w"][0]), json.loads((d / "history.json").read_text())["writer"],
            int(torch.load(d / "logits.pt")[0, 0]), int(torch.load(d / "features.pt")[0, 0])}


def test_finish_never_overwrites_a_finished_run(tmp_path):
    store = RunStore(tmp_path)
    store.finish(CE, *_fake_outputs(1), env={"host": "a"})
    done_before = (store.path(CE) / "DONE").read_bytes()
    store.save_checkpoint(CE, {"x": 1})  # a late writer's checkpoint is not kept in a done run
    assert not (store.path(CE) / "checkpoint.pt").exists()
    store.finish(CE, *_fake_outputs(2), env={"host": "b"})
    assert (store.path(CE) / "DONE").read_bytes() == done_before
    assert _writers_of(store, CE) == {1}
    assert store.load_env(CE) == {"host": "a"}
    store.verify(CE)
    assert not [p for p in store.path(CE).iterdir() if p.name.endswith(".tmp")]


def _race(store: RunStore) -> list[BaseException]:
    """Eight writers finish CE in ``store`` at once while a reader verifies it; their errors."""
    import threading

    errors: list[BaseException] = []
    go = threading.Barrier(9)

    def write(i):
        go.wait()
        try:
            store.finish(CE, *_fake_outputs(i), env={"writer": i})
        except BaseException as e:
            errors.append(e)

    def read():
        go.wait()
        t_end = time.time() + 3
        while time.time() < t_end:
            if store.is_done(CE):
                try:
                    store.verify(CE)
                except BaseException as e:  # a false CorruptRunError would land here
                    errors.append(e)
                return

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_finishes_never_mix_files_nor_fail_readers(tmp_path):
    """Eight writers finish the same run at once while a reader verifies it: one writer's files."""
    for rnd in range(4):
        store = RunStore(tmp_path / str(rnd))
        store.begin(CE)
        errors = _race(store)
        assert not errors, errors
        store.verify(CE)
        writers = _writers_of(store, CE)
        assert len(writers) == 1 and store.load_env(CE) == {"writer": writers.pop()}
        assert sorted(p.name for p in store.path(CE).iterdir()) == sorted(
            RUN_FILES + ("DONE", "env.json"))


@pytest.mark.parametrize("content", [b"[]", b"null", b"42", b"\x00garbage{", b'{"model.pt": 5}',
                                     b'{"../x": "' + b"0" * 64 + b'"}', b"{}"],
                         ids=["list", "null", "number", "garbage", "not-hash", "path", "empty"])
def test_damaged_done_is_a_clear_corrupt_run_error(done_store, tmp_path, content):
    store = RunStore(tmp_path)
    src, dst = done_store.path(CE), store.path(CE)
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    (dst / "DONE").write_bytes(content)
    for load in (store.load_state, store.load_history, store.verify):
        with pytest.raises(CorruptRunError, match="DONE") as ei:
            load(CE)
        assert str(dst) in str(ei.value)


def test_verify_checks_every_file_done_lists(tmp_path):
    store = RunStore(tmp_path)
    store.finish(CE, *_fake_outputs(1), extra_files={"notes.txt": b"raw bytes", "meta.json": [1, 2]})
    rec = json.loads((store.path(CE) / "DONE").read_text())
    assert set(rec) == set(RUN_FILES) | {"notes.txt", "meta.json"}
    assert (store.path(CE) / "notes.txt").read_bytes() == b"raw bytes"
    assert store.load_json(CE, "meta.json") == [1, 2]
    assert store.load_env(CE) is None
    store.verify(CE)
    (store.path(CE) / "notes.txt").write_bytes(b"raw bytez")
    with pytest.raises(CorruptRunError, match="notes.txt"):
        store.verify(CE)
    for bad in ("DONE", "model.pt", "../x", ".hidden", "checkpoint.pt"):
        with pytest.raises(ValueError, match="not allowed"):
            RunStore(tmp_path / "b").finish(CE, *_fake_outputs(1), extra_files={bad: b""})


def test_orphan_temporaries_are_ignored_and_cleaned(tmp_path):
    store = RunStore(tmp_path)
    d = store.begin(CE)
    old = time.time() - 3600
    orphans = [d / ".model.pt.x1.tmp", d / ".finish.x2.tmp", d / "eval" / ".q.pt.x3.tmp"]
    orphans[1].mkdir()
    (orphans[1] / "model.pt").write_bytes(b"half")
    orphans[2].parent.mkdir()
    for p in (orphans[0], orphans[2]):
        p.write_bytes(b"half a file")
    for p in orphans:
        os.utime(p, (old, old))
    young = d / ".history.json.x4.tmp"
    young.write_bytes(b"a writer at work")
    store.finish(CE, *_fake_outputs(1))
    store.verify(CE)  # orphans never read
    assert sorted(store.clean_orphans(CE)) == sorted(orphans)
    assert young.exists() and not any(p.exists() for p in orphans)
    assert store.clean_orphans(CE, min_age=0) == [young]


def test_files_are_shared_as_the_umask_allows(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    store = RunStore(tmp_path)
    store.finish(CE, *_fake_outputs(1))
    for p in store.path(CE).iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p.name


def test_a_stalled_publisher_never_overwrites_the_writer_that_took_over(tmp_path, monkeypatch):
    """Writer 1 stalls after moving its first file, past PUBLISH_STALE_AFTER; writer 2 takes the
    publish lock over and publishes. Before: writer 1 then moved its other files over writer 2's
    (verify() failed); now it stops (LeaseLostError) and writer 2's run stays intact."""
    import pcl.store as S
    from pcl.lease import LeaseLostError

    store = RunStore(tmp_path)
    store.begin(CE)
    real = os.replace
    calls = {"n": 0}

    def stall_then_lose(src, dst):
        real(src, dst)
        calls["n"] += 1
        if calls["n"] == 1:  # writer 1's first file is in place; it stalls here for "an hour"
            lock = store.path(CE) / "PUBLISH"
            info = json.loads(lock.read_text())
            lock.write_text(json.dumps(info | {"time": info["time"] - 3600, "host": "stalled"}))
            monkeypatch.setattr(S.os, "replace", real)
            store.finish(CE, *_fake_outputs(2))  # writer 2, meanwhile

    monkeypatch.setattr(S.os, "replace", stall_then_lose)
    with pytest.raises(LeaseLostError, match="PUBLISH"):
        store.finish(CE, *_fake_outputs(1))
    store.verify(CE)
    assert _writers_of(store, CE) == {2}


def test_disk_full_names_the_file_and_keeps_the_cause(tmp_path, monkeypatch):
    import errno

    import pcl.store as S

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    store = RunStore(tmp_path)
    store.begin(CE)
    monkeypatch.setattr(S.os, "fsync", full)
    with pytest.raises(OSError, match=rf"writing {store.path(CE)}/\S+ \(run {store.path(CE)}\) "
                                      rf"failed: No space left") as ei:
        store.finish(CE, *_fake_outputs(1))
    assert ei.value.__cause__.errno == errno.ENOSPC and not store.is_done(CE)


def test_store_marker_recognises_a_store_and_not_a_folder_of_empty_folders(tmp_path):
    """Before: a folder holding only empty subfolders passed as a run store (make clean-runs)."""
    from pcl.clean_runs import not_a_store_reason

    fake = tmp_path / "fake"
    (fake / "photos" / "0123456789ab").mkdir(parents=True)
    assert ".pcl-store marker" in not_a_store_reason(fake)
    store = RunStore(tmp_path / "runs")
    store.begin(CE)
    assert (store.root / ".pcl-store").is_file() and not_a_store_reason(store.root) is None
