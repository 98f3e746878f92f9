#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on this machine, for testing the
# workflow's slurm profile (tests/test_slurm.py) and for trying the profile out.
#
#   scripts/slurm_cluster.sh install      apt-get the Debian packages if absent (root; CI calls this)
#   scripts/slurm_cluster.sh start DIR    start munged (if none runs), slurmctld and slurmd; state in DIR
#   scripts/slurm_cluster.sh stop DIR     kill exactly the processes `start DIR` started
#   scripts/slurm_cluster.sh status DIR   sinfo of the cluster in DIR
#
# After `start`, point SLURM's commands at the cluster with
#   source DIR/env.sh        (sets SLURM_CONF=DIR/slurm.conf)
#
# Everything SLURM writes lives in DIR (config, state, spool, logs, pid list).
# The one thing outside it: /etc/slurm/slurm.conf becomes a link to
# DIR/slurm.conf while the cluster runs, because srun inside a job (which
# Snakemake's jobstep executor uses) clears SLURM_* variables, SLURM_CONF
# included, and then reads the default path. A slurm.conf there that this
# script did not make is never touched: start refuses instead. munged uses the
# system's default key and socket, which is what SLURM's auth/munge plugin
# talks to.
#
# There is no service manager in the containers this runs in and apt must not
# start services (policy-rc.d), so the daemons are started by hand, in the
# foreground (-D / -F) and in the background of this script, and their pids go
# to DIR/pids; `stop` kills those and nothing else.
#
# Ports: slurmctld/slurmd listen on the first free pair from 6817 upwards
# (SLURM_CLUSTER_PORT overrides the start), so that whatever else listens on
# SLURM's usual ports is left alone. One test cluster at a time per machine
# (the default config path can point at only one).
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client)
SYSTEM_CONF=/etc/slurm/slurm.conf

die() { echo "slurm_cluster.sh: $*" >&2; exit 1; }
log() { echo "slurm_cluster.sh: $*" >&2; }

packages_missing() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    echo "${missing[@]:-}"
}

# Installs the packages without starting any service. Exit status 0 when they
# are (now) installed; 2 when they cannot be (no apt, not root, no network):
# the test suite turns 2 into a skip with this script's message.
install_packages() {
    local missing
    missing=$(packages_missing)
    [[ -z "$missing" ]] && return 0
    command -v apt-get >/dev/null || { log "apt-get not found: cannot install $missing"; return 2; }
    [[ $(id -u) -eq 0 ]] || { log "not root: cannot install $missing"; return 2; }
    # apt would try to start slurmctld/slurmd/munge: policy-rc.d exit 101 forbids it
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local status=0
    log "installing $missing"
    {
        export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
        # the package lists may be missing (fresh container) or stale (404s): update and retry once
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing ||
            { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; }
    } >&2 || status=2
    [[ $created_policy -eq 1 ]] && rm -f "$policy"
    [[ $status -eq 0 ]] || { log "apt-get install $missing failed"; return 2; }
    return 0
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port_pair() {
    local p=${SLURM_CLUSTER_PORT:-6817}
    while port_in_use "$p" || port_in_use $((p + 1)); do
        p=$((p + 2))
        [[ $p -lt 7017 ]] || die "no free port pair between ${SLURM_CLUSTER_PORT:-6817} and 7017"
    done
    echo "$p"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# Starts munged as the munge user unless a working one is already there (then
# it is shared, and not ours to stop).
start_munge() {
    local dir=$1
    if munge_works; then
        log "munged already running: using it"
        return 0
    fi
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        log "creating munge key $key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$key" --force
        else
            dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
        fi
    fi
    # munged refuses keys and directories that others can read or write
    chown -R munge:munge /etc/munge
    chmod 700 /etc/munge
    chmod 400 "$key"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    # setpriv execs munged in place, so $! is munged's own pid
    setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --force >"$dir/log/munged.out" 2>&1 &
    echo "munged $!" >>"$dir/pids"
    local i
    for i in $(seq 50); do
        munge_works && return 0
        sleep 0.1
    done
    die "munged did not come up; see $dir/log/munged.out"
}

write_conf() {
    local dir=$1 port=$2 host node_line
    host=$(hostname -s)
    # the node's real CPUs, sockets, cores and memory, as slurmd sees them
    node_line=$(slurmd -C | head -n 1)
    [[ $node_line == NodeName=* ]] || die "unexpected 'slurmd -C' output: $node_line"
    cat >"$dir/slurm.conf" <<EOF
# Generated by scripts/slurm_cluster.sh: a single-node test cluster.
ClusterName=peekaboo-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# no cgroups in a container: track processes through /proc, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
# accounting off: no slurmdbd, so sacct has nothing; status goes through squeue
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# keep finished jobs visible to squeue long enough for Snakemake's status checks
MinJobAge=600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    echo "export SLURM_CONF=$dir/slurm.conf" >"$dir/env.sh"
}

# Whether a daemon that `start DIR` recorded still runs.
cluster_alive() {
    local dir=$1 name pid
    [[ -f $dir/pids ]] || return 1
    while read -r name pid; do
        [[ $name == slurm* && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$name" ]] && return 0
    done <"$dir/pids"
    return 1
}

# /etc/slurm/slurm.conf -> DIR/slurm.conf, unless a real configuration is there.
link_system_conf() {
    local dir=$1 target
    if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]]; then
        target=$(readlink "$SYSTEM_CONF" || true)
        # ours: a link (possibly dangling, its folder since deleted) to a generated file
        if [[ -z $target ]] || { [[ -e $SYSTEM_CONF ]] &&
            [[ $(head -n 1 "$SYSTEM_CONF") != "# Generated by scripts/slurm_cluster.sh"* ]]; }; then
            die "$SYSTEM_CONF exists and was not made by this script: this machine has a SLURM configuration of its own; not touching it"
        fi
        if [[ $target != "$dir/slurm.conf" ]]; then
            # one cluster at a time: the default path can serve only one
            if cluster_alive "$(dirname "$target")"; then
                die "another test cluster runs in $(dirname "$target"); stop it first ($0 stop $(dirname "$target"))"
            fi
            log "replacing stale link $SYSTEM_CONF -> $target"
        fi
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$dir/slurm.conf" "$SYSTEM_CONF"
    echo "$SYSTEM_CONF" >"$dir/system_conf_link"
}

# Waits until sinfo shows every node idle.
wait_idle() {
    local dir=$1 i state=""
    for i in $(seq 150); do
        state=$(SLURM_CONF="$dir/slurm.conf" sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
        [[ $state == "idle " ]] && return 0
        sleep 0.2
    done
    die "node not idle after 30 s (sinfo says: '${state}'); see $dir/log/"
}

start() {
    local dir=${1:?usage: $0 start DIR}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ ! -s $dir/pids ]] || die "$dir/pids exists: a cluster may be running there; run '$0 stop $dir' first"
    install_packages || exit $?
    # a fresh cluster: no jobs or node state from an earlier run in the same DIR
    rm -rf "$dir/state" "$dir/spool"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    : >"$dir/pids"
    # from here on, a failure (die, or set -e) stops what was started so far
    trap 'stop "$dir" >/dev/null 2>&1 || true' EXIT
    start_munge "$dir"
    local port
    port=$(free_port_pair)
    write_conf "$dir" "$port"
    link_system_conf "$dir"
    export SLURM_CONF=$dir/slurm.conf
    # -D: stay in the foreground (of this background job), so $! is the daemon itself
    slurmctld -D -i -f "$SLURM_CONF" >"$dir/log/slurmctld.out" 2>&1 &
    echo "slurmctld $!" >>"$dir/pids"
    slurmd -D -f "$SLURM_CONF" -N "$(hostname -s)" >"$dir/log/slurmd.out" 2>&1 &
    echo "slurmd $!" >>"$dir/pids"
    wait_idle "$dir"
    trap - EXIT
    log "cluster up: source $dir/env.sh (SLURM_CONF=$SLURM_CONF), ports $port/$((port + 1))"
}

stop() {
    local dir=${1:?usage: $0 stop DIR}
    [[ -f $dir/pids ]] || { log "nothing to stop in $dir"; return 0; }
    local name pid i alive
    # jobs of this cluster (ours alone: it has its own slurm.conf) go first, so
    # that no job step outlives its slurmd
    if [[ -f $dir/slurm.conf ]] && SLURM_CONF="$dir/slurm.conf" squeue -h >/dev/null 2>&1; then
        SLURM_CONF="$dir/slurm.conf" scancel --full -u "$(id -un)" 2>/dev/null || true
        for i in $(seq 50); do
            [[ -z $(SLURM_CONF="$dir/slurm.conf" squeue -h -t running,completing -o %i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    # slurmd before slurmctld, munged last: the reverse of the start order
    while read -r name pid; do
        [[ -n $pid ]] || continue
        # only a process of that name: the pid may have been reused since
        if [[ -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$name" ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            alive=1
            for i in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || { alive=0; break; }
                sleep 0.1
            done
            [[ $alive -eq 0 ]] || kill -KILL "$pid" 2>/dev/null || true
        fi
    done < <(tac "$dir/pids")
    if [[ -f $dir/system_conf_link && $(readlink "$SYSTEM_CONF" 2>/dev/null) == "$dir/slurm.conf" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
    rm -f "$dir/pids" "$dir/system_conf_link"
    log "stopped the cluster in $dir"
}

status() {
    local dir=${1:?usage: $0 status DIR}
    SLURM_CONF="$dir/slurm.conf" sinfo
}

case "${1:-}" in
    install) install_packages ;;
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    status) status "${2:-}" ;;
    *) echo "usage: $0 install | start DIR | stop DIR | status DIR" >&2; exit 64 ;;
esac
