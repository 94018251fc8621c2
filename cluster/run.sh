#!/usr/bin/env bash
# `make test-cluster`: bring up a one-node SLURM cluster on this machine, run the tests marked
# `cluster` against the real sbatch/squeue/scontrol/scancel, and stop the daemons again (also when
# a test or the start fails). Needs root (to install slurm-wlm and munge with apt when missing and
# to start the daemons); anywhere else it says why and exits non-zero: it never passes silently.
#   cluster/run.sh PYTHON [pytest arguments...]
set -euo pipefail
PY=${1:?usage: cluster/run.sh PYTHON [pytest args]}; shift
HERE=$(cd "$(dirname "$0")" && pwd)
say() { echo "[test-cluster] $*"; }
die() { echo "[test-cluster] FAILED: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (to install slurm-wlm/munge and start munged, slurmctld, slurmd); run it as root in a scratch machine or container"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get to install them"
  say "installing slurm-wlm and munge with apt"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; } \
    || die "apt-get could not install slurm-wlm and munge"
fi

STATE=$(mktemp -d "${TMPDIR:-/tmp}/pcl-slurm.XXXXXX")
mkdir -p "$STATE/ctld" "$STATE/d"
export SLURM_CONF=$STATE/slurm.conf
HOST=$(hostname -s)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 2048 ))   # half the memory, in MiB
sed -e "s/@HOST@/$HOST/g" -e "s/@CPUS@/$(nproc)/g" -e "s/@MEM@/$MEM/g" -e "s#@STATE@#$STATE#g" \
    -e "s/@CTLD_PORT@/${PCL_SLURMCTLD_PORT:-6917}/g" -e "s/@SLURMD_PORT@/${PCL_SLURMD_PORT:-6918}/g" \
    "$HERE/slurm.conf.in" > "$SLURM_CONF"

MUNGE_PID=""
stop() {
  local rc=$?
  scancel --me 2>/dev/null || true   # this private cluster's jobs only (SLURM_CONF is ours)
  sleep 1
  for f in slurmd slurmctld; do
    [ -s "$STATE/$f.pid" ] && kill "$(cat "$STATE/$f.pid")" 2>/dev/null || true
  done
  [ -n "$MUNGE_PID" ] && kill "$MUNGE_PID" 2>/dev/null || true
  sleep 1
  if [ $rc != 0 ]; then say "daemon logs kept in $STATE"; else rm -rf "$STATE"; fi
  exit $rc
}
trap stop EXIT INT TERM

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then   # no munged answering yet: start ours
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
                                   chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged
  MUNGE_PID=$(cat /run/munge/munged.pid 2>/dev/null || true)
fi
slurmctld -f "$SLURM_CONF"
nice -n 5 slurmd -f "$SLURM_CONF"      # jobs inherit the niceness: the machine's own work comes first
for _ in $(seq 60); do
  state=$(sinfo -h -N -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || die "the node did not become idle within 60 s (sinfo: '${state:-no answer}'); logs in $STATE"
say "$(sinfo --version) up: node $HOST idle ($(nproc) CPUs)"
PCL_TEST_CLUSTER=1 PCL_SLURM_VERSION=$(sinfo --version) "$PY" -m pytest -m cluster -p no:cacheprovider "$@" "$HERE/../tests/test_cluster.py"
