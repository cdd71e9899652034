#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying profiles/slurm for real (the tests in
# tests/test_slurm_cluster.py use it). Run as root; systemd is not needed.
#
#   bash scripts/slurm-cluster.sh install   # the Debian packages (apt-get), once
#   bash scripts/slurm-cluster.sh up        # munged, slurmctld, slurmd; waits for an idle node
#   bash scripts/slurm-cluster.sh status    # sinfo, or why there is no cluster
#   bash scripts/slurm-cluster.sh down      # stops the three daemons by their pid files
#
# `up` is idempotent: daemons already running are left alone. The node declares more CPUs,
# memory and a GPU than the machine has (SlurmdParameters=config_overrides), so that the
# profile's real requests (--gpus=1, --mem 32000-192000, --cpus-per-task=4) are accepted;
# nothing is enforced (no cgroups) and the "GPU" is /dev/null. There is no accounting
# database (AccountingStorageType=accounting_storage/none), as on many small clusters: this
# is the case profiles/slurm must handle without sacct. Partitions: cpu (default) and gpu,
# the placeholders profiles/slurm ships with.
set -euo pipefail

STATE=${RLNLU_SLURM_STATE:-/var/tmp/rlnlu-slurm}   # spool, state, daemon logs, pid files
CONF_DIR=/etc/slurm                                 # where sbatch, sinfo, ... look
MARK="# written by rlnlu scripts/slurm-cluster.sh"  # only such a slurm.conf is replaced
NODE=$(hostname -s)
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm-cluster: $*" >&2; exit 1; }

alive() {  # alive PIDFILE: the process of a pid file is running
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    [[ $(id -u) == 0 ]] || die "install needs root (apt-get)"
    if command -v slurmctld slurmd sbatch munged >/dev/null 2>&1 \
        && [[ $(command -v slurmctld slurmd sbatch munged | wc -l) == 4 ]]; then
        return 0
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
}

write_config() {
    if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
        die "$CONF_DIR/slurm.conf exists and was not written by this script; not replacing it"
    fi
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/spool"
    cat > "$CONF_DIR/slurm.conf" <<EOF
$MARK
ClusterName=rlnlu
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=300
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=16 RealMemory=262144 Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    printf '%s\nNodeName=%s Name=gpu File=/dev/null\n' "$MARK" "$NODE" > "$CONF_DIR/gres.conf"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (reinstall munge)"
    mkdir -p /run/munge && chown munge: /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged
}

node_state() {
    sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1
}

up() {
    [[ $(id -u) == 0 ]] || die "up needs root (the daemons run as root here)"
    command -v slurmctld >/dev/null || die "SLURM is not installed: bash $0 install"
    write_config
    start_munge
    if ! alive "$STATE/slurmctld.pid"; then
        rm -f "$STATE/slurmctld.pid"   # slurmctld leaves it behind on SIGTERM
        slurmctld -c
    fi
    if ! alive "$STATE/slurmd.pid"; then
        rm -f "$STATE/slurmd.pid"
        slurmd -c
    fi
    local state=""
    for _ in $(seq 120); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated) echo "slurm-cluster: node $NODE is $state"; return 0 ;;
            down* | drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    die "node $NODE did not become idle (state: '${state:-none}'); see $STATE/slurmctld.log and $STATE/slurmd.log"
}

down() {
    local name pidfile
    for name in slurmd slurmctld munged; do
        pidfile=$STATE/$name.pid
        [[ $name == munged ]] && pidfile=/run/munge/munged.pid
        if alive "$pidfile"; then
            local pid
            pid=$(cat "$pidfile")
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
        rm -f "$pidfile"
    done
    echo "slurm-cluster: stopped"
}

status() {
    command -v sinfo >/dev/null || die "SLURM is not installed"
    alive "$STATE/slurmctld.pid" || die "slurmctld is not running"
    sinfo
}

case ${1:-} in
    install) install_packages ;;
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: bash $0 install|up|status|down" >&2; exit 2 ;;
esac
