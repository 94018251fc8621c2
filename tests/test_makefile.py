"""The Makefile: `make help` lists every target, `make lab` adds --allow-root only for root."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = (ROOT / "Makefile").read_text()

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def _make(*args: str) -> str:
    r = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _phony() -> list[str]:
    names = []
    for line in re.findall(r"^\.PHONY:(.*)$", MAKEFILE, flags=re.M):
        names += line.split()
    return names


def _targets() -> list[str]:
    """Every rule target named by a plain word (not file targets such as $(VENV)/.installed)."""
    return re.findall(r"^([a-zA-Z][a-zA-Z0-9_-]*):(?!=)", MAKEFILE, flags=re.M)


def test_phony_and_targets_agree():
    assert set(_phony()) == set(_targets())
    assert "test-fast" in _phony()


def test_help_lists_every_target():
    out = _make("help")
    listed = re.findall(r"^make (\S+)\s+\S", out, flags=re.M)
    assert sorted(listed) == sorted(set(_phony()) | set(_targets()))


@pytest.mark.parametrize("uid, root", [("0", True), ("1000", False)])
def test_lab_allow_root_only_for_root(uid, root):
    out = _make("-n", "lab", f"LAB_UID={uid}")
    cmd = [line for line in out.splitlines() if "jupyter lab" in line]
    assert len(cmd) == 1 and cmd[0].rstrip().endswith("notebooks/")
    assert ("--allow-root" in cmd[0]) is root


# --- make reproduce: an unknown PROFILE is refused before anything is installed -------------------
def _run_make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_presets_variable_is_the_config_presets():
    from pcl.presets import PRESETS

    listed = re.findall(r"^PRESETS := (.*)$", MAKEFILE, flags=re.M)
    assert len(listed) == 1 and listed[0].split() == list(PRESETS)


def test_reproduce_unknown_profile_refused_before_setup(tmp_path):
    # a venv path and interpreter that would fail loudly if setup were reached
    r = _run_make("reproduce", "PROFILE=bogus", f"VENV={tmp_path / 'venv'}", "PYTHON=false",
                  f"RUNS={tmp_path / 'runs'}")
    assert r.returncode != 0
    assert "unknown profile 'bogus'" in r.stderr
    from pcl.presets import PRESETS

    allowed = r.stderr.split("allowed:")[1].splitlines()[0].split()
    assert allowed == ["auto", *PRESETS]
    assert not (tmp_path / "venv").exists() and "venv" not in r.stdout + r.stderr.split("allowed")[0]
    assert "[reproduce] profile" not in r.stdout  # stopped at the first line


@pytest.mark.parametrize("profile", ["smoke", "auto", "smoke-extended"])
def test_reproduce_known_profile_passes_the_check(profile):
    out = _make("-n", "reproduce", f"PROFILE={profile}")
    assert "unknown profile" not in out
    assert re.search(r"pcl\.reproduce --profile (paper|cpu|smoke|smoke-extended) ", out)


def test_reproduce_two_word_profile_refused():
    r = _run_make("-n", "reproduce", "PROFILE=smoke cpu")
    assert "unknown profile 'smoke cpu'" in r.stdout  # -n prints the refusal it would run


# --- make clean-runs: only a run store is deleted ---------------------------------------------------
def _store(root: Path) -> Path:
    for method, hashes in {"ce": ["0123456789ab", "ba9876543210"], "supcon": []}.items():
        (root / method).mkdir(parents=True)
        for h in hashes:
            (root / method / h).mkdir()
            (root / method / h / "config.json").write_text("{}")
    (root / ".submitit" / "123").mkdir(parents=True)
    (root / ".pcl-store").write_text("")  # what RunStore.begin writes
    return root


def test_not_a_store_reason_constructed_cases(tmp_path):
    from pcl.clean_runs import not_a_store_reason

    def is_run_store(d):
        return not_a_store_reason(d) is None

    store = _store(tmp_path / "store")
    assert not_a_store_reason(store) is None and is_run_store(store)
    assert is_run_store(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    assert is_run_store(tmp_path / "empty")
    (tmp_path / "link").symlink_to(store)
    assert is_run_store(tmp_path / "link")
    assert "no folder" in not_a_store_reason("")
    # each way a folder differs from a store, one at a time, names the offending entry
    cases = {
        "a file at the top": lambda d: (d / "README.md").write_text("x"),
        "a hidden folder": lambda d: (d / ".git").mkdir(),
        "a file in a method folder": lambda d: (d / "ce" / "notes.txt").write_text("x"),
        "a non-hash run folder": lambda d: (d / "ce" / "0123456789aZ").mkdir(),
        "a short hash": lambda d: (d / "ce" / "0123456789a").mkdir(),
        "a linked run folder": lambda d: (d / "ce" / "aaaaaaaaaaaa").symlink_to(d / "ce" / "0123456789ab"),
    }
    for i, (what, spoil) in enumerate(cases.items()):
        d = _store(tmp_path / f"case{i}")
        spoil(d)
        reason = not_a_store_reason(d)
        assert reason is not None and str(d) in reason, what
        assert not is_run_store(d)
    (tmp_path / "file").write_text("x")
    assert "not a folder" in not_a_store_reason(tmp_path / "file")


def test_clean_runs_refuses_the_repository_layout(tmp_path):
    """`make clean-runs RUNS=.` run from a repository-like folder: refused, nothing deleted."""
    repo = tmp_path / "repo"
    (repo / "pcl").mkdir(parents=True)
    (repo / "pcl" / "__init__.py").write_text("")
    (repo / "README.md").write_text("x")
    _store(repo / "runs")
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    r = _run_make("clean-runs", "RUNS=.", f"PY={sys.executable}", cwd=repo)
    assert r.returncode != 0 and "refusing to delete RUNS='.'" in r.stderr
    assert "is not a run store" in r.stderr
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before


def test_clean_runs_deletes_a_run_store(tmp_path):
    store = _store(tmp_path / "runs")
    keep = tmp_path / "keep.txt"
    keep.write_text("x")
    link = tmp_path / "runs-link"
    link.symlink_to(store)
    r = _run_make("clean-runs", f"RUNS={link}", f"PY={sys.executable}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "link" in r.stdout and not link.exists() and (store / "ce" / "0123456789ab").is_dir()
    r = _run_make("clean-runs", f"RUNS={store}", f"PY={sys.executable}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not store.exists() and keep.exists()
