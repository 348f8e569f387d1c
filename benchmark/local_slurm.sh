#!/usr/bin/env bash
# A single-node Slurm on this machine, for trying the --slurm launchers and for the tests (tests/test_slurm.py).
# Needs root and Debian's slurm-wlm and munge:  apt-get install -y slurm-wlm munge
#   sudo bash benchmark/local_slurm.sh start [DIR]   config in DIR (default /tmp/local-slurm), daemons in background
#   export SLURM_CONF=DIR/slurm.conf                 then sbatch, squeue, scontrol use it
#   sudo bash benchmark/local_slurm.sh stop [DIR]
# One partition, "debug", with this host's cores and memory; no accounting database (sacct is not available).
set -euo pipefail

die() {
    echo "local_slurm.sh: error: $1" >&2
    exit 2
}

action="${1:-}"
DIR="$(realpath -m "${2:-/tmp/local-slurm}")"
[[ $action == start || $action == stop ]] || die "usage: local_slurm.sh start|stop [DIR]"

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        [[ -f $DIR/$name.pid ]] || continue
        pid="$(cat "$DIR/$name.pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$DIR/$name.pid"
    done
}

if [[ $action == stop ]]; then
    stop
    exit 0
fi

((EUID == 0)) || die "the daemons need root (run it with sudo)"
for program in munged mungekey slurmctld slurmd sbatch; do
    command -v "$program" >/dev/null || die "$program not found: apt-get install -y slurm-wlm munge"
done
stop # a previous instance in DIR
host="$(hostname -s)"
cpus="$(nproc)"
memory_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
mkdir -p "$DIR"/{munge,ctld,slurmd,log}
chmod 700 "$DIR/munge"
[[ -f $DIR/munge/munge.key ]] || mungekey --create --keyfile "$DIR/munge/munge.key" >/dev/null
munged --socket "$DIR/munge/munge.socket" --key-file "$DIR/munge/munge.key" --pid-file "$DIR/munged.pid" \
    --log-file "$DIR/log/munged.log" --seed-file "$DIR/munge/munge.seed" --force
cat >"$DIR/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=30
MinJobAge=300
DefMemPerCPU=$((memory_mb / cpus))
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$DIR/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do # until the node takes jobs
    if sinfo -h -N -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "Slurm is up: $cpus CPUs, $memory_mb MB on $host; export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
die "slurmd did not come up; see $DIR/log/"
