#!/usr/bin/env bash
# start-slurm.sh: a throw-away one-node Slurm cluster on this host, for testing
# the batch scripts in jobs/ (tests/e2e_slurm.sh) without a real cluster.
#
#   tests/slurm/start-slurm.sh start     munge + slurmctld + slurmd, wait until the node is idle
#   tests/slurm/start-slurm.sh stop      cancel jobs, stop what start started
#   tests/slurm/start-slurm.sh status    sinfo/squeue of the test cluster
#   tests/slurm/start-slurm.sh env       print the `export SLURM_CONF=...` line for a shell
#
# Needs root and Debian's munge, slurmctld, slurmd and slurm-client packages
# (.ci/deps.sh installs them). No systemd: the daemons are started directly.
#
# Everything Slurm writes lives under SLUICE_SLURM_DIR (default /tmp/sluice-slurm):
# the configuration (clients find it through SLURM_CONF, so /etc/slurm is left
# alone), state, spool, logs and pid files. The daemons listen on their own ports
# (SLUICE_SLURM_PORT, default 6917, and the next one) so a real Slurm on the same
# host is not disturbed. munged is shared with the host: an already working munge
# is used as it is and left running; one this script starts, it also stops.
#
# `start` is idempotent: daemons still running from an earlier start are kept.
# Set-up takes about a second; SLUICE_SLURM_TIMEOUT (default 90 s) bounds each wait.
set -euo pipefail

DIR=${SLUICE_SLURM_DIR:-/tmp/sluice-slurm}
PORT=${SLUICE_SLURM_PORT:-6917}
TIMEOUT=${SLUICE_SLURM_TIMEOUT:-90}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
export SLURM_CONF=$CONF

say() { echo "start-slurm: $*"; }
die() { echo "start-slurm: error: $*" >&2; exit 1; }

# Daemon logs, shown when something does not come up.
show_logs() {
    local f
    for f in "$DIR"/log/*.log; do
        [ -s "$f" ] || continue
        echo "---- last lines of $f" >&2
        tail -n 20 "$f" >&2
    done
}

# waitfor CMD WHAT: polls CMD (a shell string) every 0.25 s until it succeeds or
# TIMEOUT seconds pass; then names WHAT, shows the daemon logs and fails.
waitfor() {
    local deadline=$((SECONDS + TIMEOUT))
    until eval "$1" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "start-slurm: error: timed out after ${TIMEOUT}s waiting for $2 ($1)" >&2
            show_logs
            return 1
        fi
        sleep 0.25
    done
}

# pid_alive PIDFILE NAME: the pid in PIDFILE belongs to a live process called NAME.
pid_alive() {
    local p
    [ -s "$1" ] || return 1
    p=$(cat "$1")
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]
}

check_prereqs() {
    [ "$(id -u)" = 0 ] || die "needs root (the daemons run as root and munged as user munge)"
    local c missing=()
    for c in munged munge unmunge slurmctld slurmd sinfo scontrol sbatch srun; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    [ ${#missing[@]} = 0 ] ||
        die "missing ${missing[*]}: apt-get install munge slurmctld slurmd slurm-client"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munge already running; using it"
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then  # Debian's postinst normally made it
        runuser -u munge -- mungekey -c -f -k /etc/munge/munge.key
    fi
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    touch "$DIR/munged.ours"  # so `stop` knows it may stop this munged
    waitfor 'munge -n | unmunge' "munged to answer" || die "munged did not start"
}

write_conf() {
    # CPUs: what this host has. select/cons_tres with CR_CPU and task/none plus
    # proctrack/linuxproc need no cgroups. MpiDefault=none so the scripts under
    # test have to ask for --mpi=pmix themselves, as they must on any cluster.
    cat >"$CONF" <<EOF
# Written by tests/slurm/start-slurm.sh; rewritten on every fresh start.
ClusterName=sluice-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
MailProg=/bin/true
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmdSpoolDir=$DIR/spool
StateSaveLocation=$DIR/state
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null; }

start() {
    check_prereqs
    local t0=$SECONDS
    mkdir -p "$DIR"
    start_munge
    if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
        say "slurmctld already running (pid $(cat "$DIR/run/slurmctld.pid"))"
    else
        # A fresh cluster: no state, jobs or logs from an earlier one.
        rm -rf "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
        mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
        write_conf  # before any client command: without it they fail on DNS SRV look-ups
        slurmctld -f "$CONF" || { show_logs; die "slurmctld did not start"; }
    fi
    waitfor 'scontrol ping | grep -q UP' "slurmctld to answer" || die "slurmctld is not up"
    if pid_alive "$DIR/run/slurmd.pid" slurmd; then
        say "slurmd already running (pid $(cat "$DIR/run/slurmd.pid"))"
    else
        slurmd -f "$CONF" || { show_logs; die "slurmd did not start"; }
    fi
    # shellcheck disable=SC2016  # expanded by waitfor's eval
    if ! waitfor '[ "$(node_state)" = idle ]' "node $HOST to be idle"; then
        scontrol show node "$HOST" >&2 || true
        die "node $HOST did not become idle (state: $(node_state || echo unknown))"
    fi
    say "cluster up in $((SECONDS - t0))s: node $HOST, $(nproc) CPUs, partition debug; export SLURM_CONF=$CONF"
}

stop() {
    local p pids="" n f
    if [ -s "$CONF" ] && pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
        # Jobs first: killing slurmd would leave their slurmstepd and tasks behind.
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            local deadline=$((SECONDS + 20))
            while [ -n "$(squeue -h -t PD,CF,R,CG,S -o %A 2>/dev/null)" ] &&
                  [ $SECONDS -lt $deadline ]; do
                sleep 0.5
            done
        fi
    fi
    for n in slurmd slurmctld; do
        f=$DIR/run/$n.pid
        pid_alive "$f" "$n" && pids="$pids $(cat "$f")"
    done
    if [ -f "$DIR/munged.ours" ] && pid_alive /run/munge/munged.pid munged; then
        pids="$pids $(cat /run/munge/munged.pid)"
    fi
    rm -f "$DIR/munged.ours"
    [ -n "$pids" ] || { say "nothing to stop"; return 0; }
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    for p in $pids; do
        local deadline=$((SECONDS + 10))
        while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        kill -9 "$p" 2>/dev/null || true
    done
    say "stopped:$pids"
}

status() {
    [ -s "$CONF" ] || die "no cluster configured under $DIR (run start first)"
    sinfo
    squeue
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
