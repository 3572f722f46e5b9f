#!/usr/bin/env bash
# A single-node Slurm cluster on localhost, for trying and testing `isda compare --executor
# slurm` (tests/slurm). Needs Debian's packages: apt-get install slurm-wlm munge; run as root.
#
#   tools/slurm_local.sh start [DIR]   # config and state under DIR (default: a new temp dir);
#                                      # prints the line to eval: export SLURM_CONF=DIR/slurm.conf
#   tools/slurm_local.sh env DIR       # print that line again
#   tools/slurm_local.sh stop DIR      # cancel this cluster's jobs, stop the daemons it started
#
# Everything lives in DIR: munge key and socket, slurm.conf, state, spool, logs and the PIDs
# of the three daemons (munged, slurmctld, slurmd) it started. `stop` signals only those
# PIDs. Ports are picked free on 127.0.0.1; the node is `localhost` with the machine's CPUs,
# one partition `debug`. No accounting daemon: sacct says accounting is disabled, and
# torch-isda's Slurm executor asks squeue instead.
set -euo pipefail

usage() { echo "usage: $0 start [DIR] | env DIR | stop DIR" >&2; exit 2; }

need() {
    local prog
    for prog in "$@"; do
        command -v "$prog" >/dev/null 2>&1 || [[ -x "/usr/sbin/$prog" ]] || {
            echo "$0: $prog not found; install Slurm and munge: apt-get install slurm-wlm munge" >&2
            exit 1
        }
    done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

write_config() {
    local dir=$1 cpus
    cpus=$(nproc)
    cat >"$dir/slurm.conf" <<EOF
ClusterName=isdalocal
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pidfile
SlurmdPidFile=$dir/slurmd.pidfile
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemon() {  # NAME COMMAND...: start in the background, record its PID in DIR/pids
    local name=$1
    shift
    setsid "$@" >>"$DIR/$name.out" 2>&1 </dev/null &
    echo "$name $!" >>"$DIR/pids"
}

wait_for() {  # SECONDS COMMAND...: retry until it succeeds
    local seconds=$1 i
    shift
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

start() {
    need munged slurmctld slurmd sbatch squeue
    [[ $(id -u) == 0 ]] || { echo "$0: start needs root (the daemons run as root)" >&2; exit 1; }
    DIR=${1:-$(mktemp -d /tmp/isda-slurm.XXXXXX)}
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    [[ -e $DIR/pids ]] && { echo "$0: $DIR already holds a cluster (stop it first)" >&2; exit 1; }
    mkdir -p "$DIR/munge" "$DIR/state" "$DIR/spool"
    chmod 700 "$DIR/munge"
    head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
    write_config "$DIR"
    export SLURM_CONF=$DIR/slurm.conf
    start_daemon munged /usr/sbin/munged --foreground --force --key-file="$DIR/munge/munge.key" \
        --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for 10 test -S "$DIR/munge/munge.socket" || { echo "$0: munged did not start ($DIR/munged.out)" >&2; stop "$DIR"; exit 1; }
    start_daemon slurmctld /usr/sbin/slurmctld -D -i -f "$SLURM_CONF"
    start_daemon slurmd /usr/sbin/slurmd -D -N localhost -f "$SLURM_CONF"
    if ! wait_for 30 bash -c 'sinfo -h -o %T | grep -Eq "^(idle|mixed|allocated)"'; then
        echo "$0: the node did not come up; logs in $DIR (slurmctld.log, slurmd.log)" >&2
        stop "$DIR"
        exit 1
    fi
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
    DIR=$1
    [[ -f $DIR/pids ]] || { echo "$0: no cluster started in $DIR" >&2; exit 1; }
    if [[ -f $DIR/slurm.conf ]]; then
        SLURM_CONF=$DIR/slurm.conf scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
        sleep 1
    fi
    local name pid i
    # slurmd first, then slurmctld, then munged: the reverse of the start order
    tac "$DIR/pids" | while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    mv "$DIR/pids" "$DIR/pids.stopped"
    echo "stopped the local Slurm in $DIR"
}

case "${1:-}" in
    start) start "${2:-}" ;;
    env) [[ -n ${2:-} ]] || usage; echo "export SLURM_CONF=$(cd "$2" && pwd)/slurm.conf" ;;
    stop) [[ -n ${2:-} ]] || usage; stop "$2" ;;
    *) usage ;;
esac
