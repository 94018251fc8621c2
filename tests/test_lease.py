"""pcl.lease: exclusive run leases without flock (taking, refreshing, stale take-over, races)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pcl.lease import LEASE_NAME, LOG_NAME, Lease, LeaseCallback, LeaseLostError, _pid_namespace, read_lease

ROOT = Path(__file__).resolve().parent.parent


def read_log(run_dir: str | Path) -> list[dict]:
    """The events of ``<run_dir>/LEASE.log`` (unparseable lines are skipped); also used by
    test_executors and test_cluster."""
    p = Path(run_dir) / LOG_NAME
    out = []
    for line in p.read_text().splitlines() if p.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _write(path: Path, **fields) -> dict:
    info = {"host": "elsewhere", "pid": 12345, "pidns": "", "token": None, "nonce": "feedbeef",
            "time": time.time(), "beat": 0, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return info


def test_one_holder_then_released(tmp_path):
    p = tmp_path / "run" / LEASE_NAME
    a = Lease(p, log=tmp_path / "run" / "LEASE.log")
    b = Lease(p)
    assert a.acquire() and a.held
    info = read_lease(p)
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["nonce"] == a.nonce
    assert not b.acquire()  # a live holder (this very process) is respected
    assert b.is_live()
    a.release()
    assert not p.exists()
    assert b.acquire()
    b.release()
    assert [e["event"] for e in read_log(tmp_path / "run")] == ["acquired", "released"]


def test_refresh_rewrites_time_and_beat(tmp_path):
    p = tmp_path / LEASE_NAME
    a = Lease(p)
    assert a.acquire()
    first = read_lease(p)
    time.sleep(0.01)
    a.refresh()
    a.refresh()
    now = read_lease(p)
    assert now["beat"] == first["beat"] + 2 and now["time"] > first["time"]
    assert now["nonce"] == first["nonce"]
    assert sorted(os.listdir(tmp_path)) == [LEASE_NAME]  # no temporary left behind
    a.release()


def test_live_lease_of_another_machine_is_respected(tmp_path):
    p = tmp_path / LEASE_NAME
    theirs = _write(p, time=time.time() - 50)
    b = Lease(p, stale_after=60)
    assert not b.acquire()
    assert read_lease(p) == theirs  # untouched


def test_stale_lease_is_taken_over_and_old_holder_stops(tmp_path):
    p = tmp_path / LEASE_NAME
    old = Lease(p, stale_after=60)
    assert old.acquire()
    # the holder stalls: its last refresh is now 61 s old
    info = read_lease(p)
    info["time"] -= 61
    p.write_text(json.dumps(info))
    new = Lease(p, stale_after=60, log=tmp_path / "LEASE.log")
    assert new.acquire()
    assert read_lease(p)["nonce"] == new.nonce
    with pytest.raises(LeaseLostError, match="taken over"):
        old.refresh()
    old.release()  # must not remove the new holder's lease
    assert read_lease(p)["nonce"] == new.nonce
    ev = read_log(tmp_path)
    assert [e["event"] for e in ev] == ["taken_over"] and ev[0]["previous"]["nonce"] == old.nonce
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".gone")]


def test_lease_of_a_dead_process_on_this_machine_is_stale_at_once(tmp_path):
    p = tmp_path / LEASE_NAME
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(proc.stdout)
    _write(p, host=socket.gethostname(), pidns=_pid_namespace(), pid=dead)
    assert Lease(p, stale_after=3600).acquire()
    # the same record with a live pid (ours) is respected
    q = tmp_path / "other" / LEASE_NAME
    _write(q, host=socket.gethostname(), pidns=_pid_namespace(), pid=os.getpid())
    assert not Lease(q, stale_after=3600).acquire()


def test_same_job_token_takes_its_lease_back(tmp_path):
    p = tmp_path / LEASE_NAME
    _write(p, token="slurm::123_4")  # recent, other machine: live for anyone else
    assert not Lease(p, token="slurm::123_5").acquire()
    assert not Lease(p).acquire()
    assert Lease(p, token="slurm::123_4").acquire()


def test_half_written_lease_uses_file_time(tmp_path):
    p = tmp_path / LEASE_NAME
    p.write_text("")  # a creator killed between create and write
    assert read_lease(p)["unreadable"]
    assert not Lease(p, stale_after=60).acquire()
    old = time.time() - 120
    os.utime(p, (old, old))
    assert Lease(p, stale_after=60).acquire()


def test_an_unreadable_lease_is_debris_after_a_minute_whatever_stale_after(tmp_path):
    """Before: a zero-byte lease counted as live for the whole stale_after (1,800 s by default)."""
    p = tmp_path / LEASE_NAME
    p.write_text("")
    old = time.time() - 120
    os.utime(p, (old, old))
    assert Lease(p).acquire() and read_lease(p)["pid"] == os.getpid()


def test_full_disk_leaves_no_lease_and_names_it(tmp_path, monkeypatch):
    """Before: the write failed after the exclusive create, leaving an empty LEASE that blocked
    every later worker; now the lease is complete or absent and the error names it."""
    import errno

    import pcl.lease as L

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    p = tmp_path / "run" / LEASE_NAME
    monkeypatch.setattr(L.json, "dump", full)
    with pytest.raises(OSError, match=rf"lease {p} failed: No space left") as ei:
        Lease(p).acquire()
    assert ei.value.__cause__.errno == errno.ENOSPC
    assert list(p.parent.iterdir()) == []
    monkeypatch.undo()
    assert Lease(p, stale_after=1800).acquire()


def test_bad_stale_after_is_refused(tmp_path):
    with pytest.raises(ValueError, match="stale_after"):
        Lease(tmp_path / LEASE_NAME, stale_after=0)


def test_callback_refreshes_every_epoch_and_stops_when_lost(tmp_path):
    p = tmp_path / LEASE_NAME
    lease = Lease(p, log=tmp_path / "LEASE.log")
    assert lease.acquire()
    cb = LeaseCallback(lease)
    cb.after_epoch("train", 1, {})
    cb.after_epoch("train", 2, {})
    assert read_lease(p)["beat"] == 2
    assert cb.first == ("train", 1) and cb.last == ("train", 2)
    _write(p)  # someone else's lease now
    with pytest.raises(LeaseLostError):
        cb.after_epoch("train", 3, {})
    assert [e["event"] for e in read_log(tmp_path)] == ["acquired", "first_epoch", "lost"]


_CONTENDER = textwrap.dedent("""
    import os, sys, time
    from pcl.lease import Lease
    path, go = sys.argv[1], sys.argv[2]
    lease = Lease(path, stale_after=30)
    print("ready", flush=True)
    while not os.path.exists(go):
        pass
    print(int(lease.acquire()), flush=True)
    sys.stdin.read()  # stay alive (a dead holder's lease may rightly be taken over) until told
""")


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_concurrent_takers_exactly_one_wins(tmp_path, stale):
    """Six live processes race for one lease (absent, or stale), several rounds: one winner each."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for rnd in range(3):
        p = tmp_path / f"r{rnd}" / LEASE_NAME
        p.parent.mkdir()
        if stale:
            _write(p, time=time.time() - 100)
        go = tmp_path / f"go{rnd}"
        procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, str(p), str(go)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(6)]
        try:
            assert all(pr.stdout.readline().strip() == "ready" for pr in procs)
            go.touch()  # all six are spinning on this file: they try at the same moment
            wins = [int(pr.stdout.readline().strip()) for pr in procs]
            assert sum(wins) == 1, wins
            assert read_lease(p)["pid"] == procs[wins.index(1)].pid
            assert not [n for n in os.listdir(p.parent) if n != LEASE_NAME]
        finally:
            for pr in procs:
                pr.communicate(timeout=60)
