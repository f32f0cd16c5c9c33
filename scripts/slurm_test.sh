#!/usr/bin/env bash
# A real SLURM on localhost: the participant level as an array job, the group level as a
# job that depends on it, outputs compared byte for byte with a serial run.
#
#   bash scripts/slurm_test.sh            (as root; .ci/run calls it)
#
# Steps (each prints its wall time):
#  1. installs Debian's slurm-wlm and munge when missing (apt-get update first);
#  2. writes a demo dataset (3 participants x 2 runs, 8 mm) and runs both levels serially;
#  3. starts munged (private key and socket), slurmctld and slurmd as background
#     processes of this script: a one-node cluster on 127.0.0.1 with free ports, no
#     cgroups (proctrack/linuxproc, task/none), configuration in SLURM_CONF;
#  4. prints the batch script with `bids_parcellate ... --bids-database-dir DB
#     --print-slurm` (which builds the pybids database once), submits it as
#     `sbatch --array=0-2` and again, without --array, as the group level with
#     `--dependency=afterok:<array job>`; waits for both;
#  5. checks that every task and the group job COMPLETED with exit code 0, and that the
#     sha256 of every NIfTI and TSV output in logs/manifest.tsv equals the serial run's
#     (after checking the manifest against the files on disk);
#  6. removes one participant's completion marker, finds the task to rerun as
#     docs/hpc.md says, resubmits only that task and the group job, checks again;
#  7. stops the daemons by the process ids it started (also on failure).
# Exit 0 only when all of this held; any failure (including a daemon that cannot start
# in this environment) exits non-zero with the reason and the daemon logs.
#
# Environment: PYTHON (default: the repository's .venv when present, else python3) must
# import this checkout of bids_parcellate; SLURM_TEST_DIR (default: a new folder under
# /var/tmp) holds everything; KEEP=1 keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
PYTHON=$(command -v "$PYTHON")
W=${SLURM_TEST_DIR:-$(mktemp -d /var/tmp/bids_parcellate-slurm.XXXXXX)}
mkdir -p "$W"
chmod 755 "$W"
PIDS=()
START=$SECONDS

say() { echo "[slurm_test $((SECONDS - START)) s] $*"; }
fail() {
    echo "[slurm_test] FAILED: $*" >&2
    for log in "$W"/log/*; do
        [ -f "$log" ] || continue
        echo "----- $log (last 30 lines)" >&2
        tail -n 30 "$log" >&2
    done
    exit 1
}
cleanup() {
    local rc=$?
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    if [ "${#PIDS[@]}" -gt 0 ]; then say "daemons stopped (pids ${PIDS[*]})"; fi
    if [ "${KEEP:-0}" != 1 ] && [ "$rc" -eq 0 ]; then rm -rf "$W"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || fail "must run as root (installs packages, runs slurmd)"

# ----------------------------------------------------------------------- 1. install
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || fail "apt-get update"
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null \
        || fail "apt-get install slurm-wlm munge"
fi
say "$(slurmctld -V), $(munged -V 2>&1 | awk '{print $1}')"

# ----------------------------------------------------------------------- 2. data + serial
BIDS=$W/bids
OPTIONS=(--n-parcels 10 30 --random-seed 3)
"$PYTHON" -m bids_parcellate.demo "$BIDS" --participants 01 02 03 --runs 1 2 \
    --resolution 8 --n-volumes 60 --n-true-parcels 10 --seed 0 2>/dev/null \
    || fail "demo dataset"
say "demo dataset in $BIDS; serial run (participant, then group)"
"$PYTHON" -m bids_parcellate "$BIDS" "$W/serial" participant "${OPTIONS[@]}" 2>"$W/serial-participant.err" \
    || { tail -n 5 "$W/serial-participant.err"; fail "serial participant level"; }
"$PYTHON" -m bids_parcellate "$BIDS" "$W/serial" group "${OPTIONS[@]}" 2>"$W/serial-group.err" \
    || { tail -n 5 "$W/serial-group.err"; fail "serial group level"; }

# ----------------------------------------------------------------------- 3. cluster
mkdir -p "$W/munge" "$W/log" "$W/state" "$W/spool"
chown munge:munge "$W/munge"
chmod 700 "$W/munge"
touch "$W/log/munged.log"
chown munge:munge "$W/log/munged.log"
AS_MUNGE=(setpriv --reuid=munge --regid=munge --init-groups)  # exec: $! is the daemon
"${AS_MUNGE[@]}" mungekey --create --keyfile="$W/munge/munge.key" || fail "mungekey --create"
"${AS_MUNGE[@]}" munged --foreground --force --socket="$W/munge/munge.socket" \
    --key-file="$W/munge/munge.key" --pid-file="$W/munge/munged.pid" \
    --seed-file="$W/munge/munged.seed" --log-file="$W/log/munged.log" \
    >"$W/log/munged.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$W/munge/munge.socket" ] && break; sleep 0.2; done
munge --socket="$W/munge/munge.socket" -n | unmunge --socket="$W/munge/munge.socket" >/dev/null \
    || fail "munged does not answer on $W/munge/munge.socket"

read -r CTLD_PORT SLURMD_PORT < <("$PYTHON" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
export SLURM_CONF=$W/slurm.conf
cat > "$SLURM_CONF" <<EOF
ClusterName=bidsparcellate
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$W/munge/munge.socket
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i -f "$SLURM_CONF" >"$W/log/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" -N "$NODE" >"$W/log/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
    case "$state" in idle|mixed|allocated) break ;; esac
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || fail "a daemon exited during start-up (pid $pid)"
    done
    sleep 1
done
[[ "$state" =~ ^(idle|mixed|allocated)$ ]] || fail "node $NODE not ready (state '${state:-none}')"
say "cluster up: slurmctld port $CTLD_PORT, slurmd port $SLURMD_PORT, node $NODE ($CPUS CPUs, $MEM_MB MB), pids ${PIDS[*]}"

# ----------------------------------------------------------------------- 4. submit
"$PYTHON" -m bids_parcellate "$BIDS" "$W/slurm" participant "${OPTIONS[@]}" \
    --bids-database-dir "$W/pybids_db" --mem-gb 1 --print-slurm > "$W/job.sbatch" \
    2>"$W/print-slurm.err" || { cat "$W/print-slurm.err"; fail "--print-slurm"; }
N=$(awk -F'[()]' '/^LABELS=/ {print split($2, a, " ")}' "$W/job.sbatch")
[ "$N" = 3 ] || fail "--print-slurm listed $N participants, expected 3"
wait_jobs() {  # job ids...: wait until none is queued or running (15 min at most)
    local ids
    ids=$(IFS=,; echo "$*")
    for _ in $(seq 900); do
        [ -z "$(squeue -h -j "$ids" 2>/dev/null)" ] && return 0
        sleep 1
    done
    fail "jobs still queued after 900 s: $(squeue -j "$ids")"
}
completed_ok() {  # job id: how many of its (array) tasks COMPLETED with exit code 0
    scontrol -o show job "$1" | grep -c 'JobState=COMPLETED .*ExitCode=0:0' || true
}
job_states() {
    scontrol -o show job "$1" | grep -o 'JobId=[0-9]* \|ArrayTaskId=[0-9]* \|JobState=[A-Z_]* \|ExitCode=[0-9:]*' \
        | paste -sd' ' -
}
cd "$W"
ARRAY=$(sbatch --parsable --array=0-$((N - 1)) job.sbatch) || fail "sbatch --array"
GROUP=$(sbatch --parsable --dependency=afterok:"$ARRAY" job.sbatch) || fail "sbatch group"
cd "$REPO"
say "submitted array job $ARRAY (tasks 0-$((N - 1))) and group job $GROUP (afterok:$ARRAY)"
wait_jobs "$ARRAY" "$GROUP"
say "jobs done"

# ----------------------------------------------------------------------- 5. check
for out in "$W"/bids_parcellate-*.out; do echo "----- $out"; tail -n 2 "$out"; done
[ "$(completed_ok "$ARRAY")" = "$N" ] \
    || fail "array job: $(completed_ok "$ARRAY") of $N tasks COMPLETED with exit code 0: $(job_states "$ARRAY")"
[ "$(completed_ok "$GROUP")" = 1 ] || fail "group job: $(job_states "$GROUP")"
# one participant per task, task i = LABELS[i] (from the task's own log)
for task in $(seq 0 $((N - 1))); do
    grep -q "in 1 unit (sub-0$((task + 1)))" "$W/bids_parcellate-${ARRAY}_$task.out" \
        || fail "array task $task did not process exactly sub-0$((task + 1))"
done
# (a job without --array writes bids_parcellate-<job>_4294967294.out: %a is unset)
grep -qs "group level done" "$W"/bids_parcellate-"${GROUP}"_*.out \
    || fail "the group job's log does not show the group level"
# logs/manifest.tsv (path, sha256, size of every output, written by the last process
# of each run) must list the same NIfTI and TSV files with the same hashes
manifest() {
    [ -f "$1/logs/manifest.tsv" ] || fail "$1/logs/manifest.tsv is missing"
    awk -F'\t' 'NR > 1 && $1 ~ /\.(nii\.gz|tsv)$/ {print $2 "  " $1}' "$1/logs/manifest.tsv"
}
manifest "$W/serial" > "$W/serial.sha256"
n_files=$(wc -l < "$W/serial.sha256")
[ "$n_files" -gt 0 ] || fail "the serial run wrote no NIfTI/TSV"
grep -q "_atlas-" "$W/serial.sha256" || fail "no group-level atlas in the serial outputs"
compare_with_serial() {
    manifest "$W/slurm" > "$W/slurm.sha256"
    # the manifest is complete and true: every NIfTI/TSV on disk, hashes recomputed
    local on_disk
    on_disk=$(cd "$W/slurm" && find . -path ./logs -prune -o -type f \
        \( -name '*.nii.gz' -o -name '*.tsv' \) -print | wc -l)
    [ "$on_disk" = "$(wc -l < "$W/slurm.sha256")" ] \
        || fail "the SLURM manifest lists $(wc -l < "$W/slurm.sha256") of $on_disk files"
    (cd "$W/slurm" && sha256sum --quiet -c "$W/slurm.sha256") \
        || fail "the SLURM manifest does not match the files"
    diff "$W/serial.sha256" "$W/slurm.sha256" >&2 \
        || fail "SLURM outputs differ from the serial run (see the diff above)"
}
compare_with_serial
say "OK: $N array tasks and the dependent group job COMPLETED; $n_files NIfTI/TSV files byte-identical to the serial run"

# ----------------------------------------------------------------------- 6. rerun failed
# docs/hpc.md, "Rerun failed tasks only" without accounting: a participant whose
# completion marker is missing (as after a failed or killed task) is found and only its
# task is resubmitted, then the group level again
rm "$W/slurm/sub-02/sub-02_completed.json"
# shellcheck disable=SC1090
source <(grep '^LABELS=' "$W/job.sbatch")
ids=$(for i in "${!LABELS[@]}"; do
          [ -e "$W/slurm/sub-${LABELS[i]}/sub-${LABELS[i]}_completed.json" ] || echo "$i"
      done | paste -sd, -)
[ "$ids" = 1 ] || fail "rerun: expected task 1 (sub-02) to be found, got '$ids'"
cd "$W"
RERUN=$(sbatch --parsable --array="$ids" job.sbatch) || fail "sbatch --array=$ids"
REGROUP=$(sbatch --parsable --dependency=afterok:"$RERUN" job.sbatch) || fail "sbatch group"
cd "$REPO"
wait_jobs "$RERUN" "$REGROUP"
[ "$(completed_ok "$RERUN")" = 1 ] || fail "rerun: $(job_states "$RERUN")"
[ "$(completed_ok "$REGROUP")" = 1 ] || fail "group after the rerun: $(job_states "$REGROUP")"
grep -q "in 1 unit (sub-02)" "$W/bids_parcellate-${RERUN}_1.out" \
    || fail "the rerun task did not process sub-02"
[ -e "$W/slurm/sub-02/sub-02_completed.json" ] || fail "the rerun did not complete sub-02"
compare_with_serial
say "OK: rerun of the failed task only (array task 1 = sub-02) and the group job; outputs still byte-identical"
