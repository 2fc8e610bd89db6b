#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for testing profiles/slurm end to end.
#
#   scripts/slurm-local.sh start    install slurm-wlm + munge if missing, write the config, start
#                                   munged, slurmctld and slurmd; a no-op when already running
#   scripts/slurm-local.sh stop     stop the daemons by the pids they wrote (never by name)
#   scripts/slurm-local.sh status   show the daemons and the node; exit 1 when not running
#
# Runs as root (CI does). The node is this machine (`hostname -s`) with its own CPUs and memory
# (from `slurmd -C`) and one fake GPU: gres on /dev/null, so a job that asks for a GPU gets
# CUDA_VISIBLE_DEVICES=0 but torch finds no device and d3mflow falls back to the CPU (and logs it).
# Partitions: cpu (default) and gpu, both on this node. No slurmdbd: there is no accounting, so
# `sacct` does not work and the profile queries job states with squeue; MinJobAge keeps finished
# jobs visible to squeue/`scontrol show job` for an hour so tests can read what Slurm recorded.
# The config goes to /etc/slurm (the jobstep plugin's inner srun clears SLURM_CONF, so Slurm
# must find it at the default path).
set -euo pipefail

CONF_DIR=/etc/slurm
RUN_DIR=/run/slurm-local
LOG_DIR=/var/log/slurm-local
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
# The largest mem_mb profiles/slurm asks for (a GPU rule on its last retry: 6000 * 3 attempts);
# the node must offer at least this much or sbatch rejects that job. tests/test_slurm.py checks
# that this stays true when the profile changes.
MIN_MEM_MB=${MIN_MEM_MB:-18000}
START_TIMEOUT_S=60

die() {
    echo "slurm-local: ERROR: $*" >&2
    exit 1
}

alive() { # alive PIDFILE: the pid in PIDFILE is a running process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_ready() { # the node answers and is idle, mixed or allocated (not down/drained/invalid)
    sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)$'
}

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    [[ $EUID -eq 0 ]] || die "slurm-wlm/munge are not installed and installing them needs root"
    echo "slurm-local: installing slurm-wlm and munge (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

start_munge() {
    alive "$MUNGE_PID" && return
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    chmod 755 /run/munge
    su -s /bin/sh munge -c /usr/sbin/munged # daemonises and writes $MUNGE_PID
}

write_config() {
    local host node_hw mem
    host=$(hostname -s)
    # slurmd -C: this machine's CPUs, sockets/cores/threads and RealMemory as slurmd will see them.
    node_hw=$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //')
    mem=$(sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' <<<"$node_hw")
    ((mem >= MIN_MEM_MB)) || die "this machine has RealMemory=${mem} MB, less than the ${MIN_MEM_MB} MB profiles/slurm may ask for"
    mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by scripts/slurm-local.sh: a single-node test cluster with a fake GPU.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
NodeName=$host $node_hw Gres=gpu:fake:1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/gres.conf" <<EOF
# Written by scripts/slurm-local.sh: one fake GPU (a device-like file, no real device).
NodeName=$host Name=gpu Type=fake File=/dev/null
EOF
}

start() {
    if alive "$MUNGE_PID" && alive "$CTLD_PID" && alive "$SLURMD_PID" && node_ready; then
        echo "slurm-local: already running"
        status
        return
    fi
    [[ $EUID -eq 0 ]] || die "starting the local cluster needs root"
    install
    # Half-started leftovers (e.g. slurmctld alive, slurmd dead) are stopped and started afresh.
    stop_slurm
    start_munge
    write_config
    slurmctld -c # cold start: no jobs carried over from an earlier cluster
    slurmd
    local waited=0
    until node_ready; do
        if ((waited >= START_TIMEOUT_S)); then
            sinfo -N -l >&2 || true
            tail -n 30 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
            die "the node did not become ready within ${START_TIMEOUT_S} s (logs above)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "slurm-local: started"
    status
}

stop_pidfile() { # stop_pidfile NAME PIDFILE: TERM the pid, wait up to 10 s for it to exit
    local pid
    alive "$2" || return 0
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    die "$1 (pid $pid) did not exit after SIGTERM"
}

stop_slurm() {
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$CTLD_PID"
}

stop() {
    stop_slurm
    stop_pidfile munged "$MUNGE_PID"
    echo "slurm-local: stopped"
}

status() {
    local ok=0 name pidfile
    for name in munged slurmctld slurmd; do
        case $name in
            munged) pidfile=$MUNGE_PID ;;
            slurmctld) pidfile=$CTLD_PID ;;
            slurmd) pidfile=$SLURMD_PID ;;
        esac
        if alive "$pidfile"; then
            echo "$name: running (pid $(cat "$pidfile"))"
        else
            echo "$name: not running"
            ok=1
        fi
    done
    if ((ok == 0)); then
        sinfo -N -o '%N %P %T %c %m %G'
        node_ready || ok=1
    fi
    return $ok
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
