#!/usr/bin/env bash
# A private single-node SLURM cluster on this machine, for testing `ptuning submit` against the real thing.
#
#   scripts/slurm-local.sh start        install the packages if missing, start the daemons, wait for an idle node;
#                                       prints the `export SLURM_CONF=...` line the SLURM commands need
#   scripts/slurm-local.sh stop         cancel every job of this cluster, stop every daemon `start` started
#   scripts/slurm-local.sh run CMD...   start, run CMD with SLURM_CONF set, stop (also when CMD fails or is
#                                       interrupted); exits with CMD's status
#   scripts/slurm-local.sh can-start    exit 0 if `start` can work here (root; the packages or apt-get), else say why
#
# What it runs, all state in $SLURM_LOCAL_DIR (default /tmp/ptuning-slurm): munged (reused when one already
# answers on /run/munge), MariaDB and slurmdbd (job accounting, which `sacct` and therefore submitit need to see a
# task that died), slurmctld and slurmd. One node, "localhost", with the machine's CPUs and two fake GPUs
# (gres backed by /dev/null and /dev/zero: each task asking for one gets CUDA_VISIBLE_DEVICES 0 or 1). Everything
# listens on 127.0.0.1 only, on ports that a system SLURM or MariaDB does not use: 16817-16819 and 13306.
#
# Needs root and Debian's packages (slurm-wlm slurmdbd mariadb-server munge; installed with apt-get when absent).
# Without cgroups (containers), processes are tracked by parent pid and tasks are not confined:
# proctrack/linuxproc, task/none. A requeued job may start again after `cred_expire` seconds (SLURM's default
# is 120), and pending jobs are looked at every `sched_interval` seconds (default 60): 10 and 2 here, so that
# tests of requeueing do not wait minutes.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/ptuning-slurm}
CTLD_PORT=16817 SLURMD_PORT=16818 DBD_PORT=16819 DB_PORT=13306
PACKAGES=(slurm-wlm slurmdbd mariadb-server munge)
STARTED=0  # set once `start` has begun launching daemons: `run`'s trap stops them

say() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
elapsed() { echo $(( $(date +%s) - T0 )); }

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
    local limit=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        if (( $(date +%s) >= deadline )); then
            die "$what did not come up within ${limit} s; its log is in $DIR/log"
        fi
        sleep 0.3
    done
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    command -v munged >/dev/null || missing+=(munge)
    if (( ${#missing[@]} == 0 )); then
        return
    fi
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them (Debian/Ubuntu: ${PACKAGES[*]})"
    say "installing ${PACKAGES[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    say "packages installed ($(elapsed) s)"
}

munge_answers() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_answers; then
        say "munged already running: using it"
        return
    fi
    [[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    # slurmdbd looks for munged on the default socket only: /run/munge/munge.socket.2
    install -d -o munge -g munge -m 755 /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
    wait_for 10 munged munge_answers
}

start_mariadb() {
    mariadb-install-db --user=root --datadir="$DIR/db" --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1
    mariadbd --user=root --datadir="$DIR/db" --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mariadb.pid" \
        --port=$DB_PORT --bind-address=127.0.0.1 --log-error="$DIR/log/mariadb.log" \
        --innodb-buffer-pool-size=32M >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb --socket="$DIR/run/mysqld.sock" -uroot -e 'SELECT 1'
    mariadb --socket="$DIR/run/mysqld.sock" -uroot -e \
        "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

write_configs() {
    local cpus
    cpus=$(nproc)
    # slurmdbd has no option for its configuration file: it reads slurmdbd.conf next to $SLURM_CONF (mode 600)
    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm-local
EOF
    chmod 600 "$DIR/slurmdbd.conf"
    cat >"$DIR/slurm.conf" <<EOF
ClusterName=ptuning-local
MailProg=/bin/true
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    printf '%s\n' "AutoDetect=off" "NodeName=localhost Name=gpu File=/dev/null" "NodeName=localhost Name=gpu File=/dev/zero" \
        >"$DIR/gres.conf"
}

running() { [[ -s $DIR/run/slurmctld.pid ]] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; }

can_start() {
    if [[ $(id -u) != 0 ]]; then
        say "cannot start SLURM here: needs root (it starts munged, MariaDB and the SLURM daemons)"; return 1
    fi
    if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null \
            || ! command -v munged >/dev/null; then
        if ! command -v apt-get >/dev/null; then
            say "cannot start SLURM here: ${PACKAGES[*]} are not installed and there is no apt-get"; return 1
        fi
    fi
    if running; then
        say "a SLURM started by this script is already running (state in $DIR): export SLURM_CONF=$DIR/slurm.conf to use it"
        return 1
    fi
}

node_idle() { sinfo -h -o %T | grep -qx idle; }

start() {
    T0=$(date +%s)
    [[ $(id -u) == 0 ]] || die "needs root (it starts munged, MariaDB and the SLURM daemons)"
    if running; then
        die "already running (state in $DIR); stop it first: $0 stop"
    fi
    if [[ -e $DIR && ! -e $DIR/slurm.conf && -n $(ls -A "$DIR") ]]; then
        die "$DIR is not empty and holds no slurm.conf of ours; set SLURM_LOCAL_DIR to an empty or new folder"
    fi
    install_packages
    STARTED=1
    rm -rf "$DIR"
    mkdir -p "$DIR"/{state,spool,log,run,db}
    export SLURM_CONF=$DIR/slurm.conf
    start_munge
    start_mariadb
    write_configs
    /usr/sbin/slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    /usr/sbin/slurmctld
    /usr/sbin/slurmd -N localhost
    wait_for 60 "an idle node" node_idle
    say "up in $(elapsed) s: one node, $(nproc) CPUs, 2 fake GPUs, accounting on; state in $DIR"
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # stop_pid NAME: TERM the daemon whose pid file is $DIR/run/NAME.pid, KILL it after 10 s
    local file=$DIR/run/$1.pid pid
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

stop() {
    export SLURM_CONF=$DIR/slurm.conf
    if running; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086  # one job id per word
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 100); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
        fi
    fi
    for name in slurmd slurmctld slurmdbd mariadb munged; do
        stop_pid "$name"
    done
    say "stopped"
}

stop_if_started() { if (( STARTED )); then stop; fi; }

case ${1:-} in
    start)
        trap stop_if_started EXIT  # a start that fails half-way leaves nothing running
        start
        trap - EXIT
        ;;
    stop) stop ;;
    can-start) can_start ;;
    run)
        shift
        (( $# > 0 )) || die "usage: $0 run COMMAND [ARG...]"
        trap stop_if_started EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        start >/dev/null
        status=0
        "$@" || status=$?
        exit "$status"
        ;;
    *) die "usage: $0 start | stop | can-start | run COMMAND [ARG...]" ;;
esac
