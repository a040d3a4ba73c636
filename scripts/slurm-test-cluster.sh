#!/usr/bin/env bash
# A real single-node Slurm test cluster on localhost, for nfslurm's
# integration tests and CI. See docs/slurm-test-cluster.md.
#
#   scripts/slurm-test-cluster.sh start [--clusters 2]|stop|status|restart
#   scripts/slurm-test-cluster.sh start-ctld|stop-ctld|start-dbd|stop-dbd
#
# `start --clusters 2` also starts a second cluster, `nfslurm-test2`, with its
# own slurmctld (:6827) and slurmd (:6828, node `<hostname>-2`), state and
# spool dirs and config (/etc/slurm/nfslurm-test2/), job IDs from 1000000,
# registered in the same slurmdbd: `sinfo -M all` lists both. Plain `start`
# leaves it as it is (running or not); `stop` stops it too.
#
# Runs as root on Debian 12 without systemd: every daemon is started directly
# and tracked by a pid file under $RUN_DIR; `stop` ends only those pids.
set -euo pipefail

CLUSTER_NAME="${NFSLURM_TEST_CLUSTER:-nfslurm-test}"
ACCOUNT="${NFSLURM_TEST_ACCOUNT:-nfslurm}"
CONF_DIR=/etc/slurm
RUN_DIR=/run/nfslurm-test
LOG_DIR=/var/log/nfslurm-test
STATE_DIR=/var/lib/nfslurm-test
DB_DIR=/var/lib/nfslurm-test-mysql
DB_PORT=3307
DB_SOCKET="$RUN_DIR/mysql/mysqld.sock"
DB_PASS=nfslurm-test-only
WAIT_SECS="${NFSLURM_TEST_WAIT_SECS:-90}"
# auto (default): cgroup v1 when mounted and writable; none: force the fallback
# (proctrack/linuxproc, task/none); v1: force cgroups
CGROUP_MODE="${NFSLURM_TEST_CGROUPS:-auto}"
NODE="$(hostname -s)"
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server mariadb-client cron)

# name -> pid file; the comm name a live daemon must have
declare -A PIDFILE=(
  [munged]="$RUN_DIR/munge/munged.pid"
  [mariadbd]="$RUN_DIR/mysql/mysqld.pid"
  [slurmdbd]="$RUN_DIR/slurm/slurmdbd.pid"
  [slurmctld]="$RUN_DIR/slurm/slurmctld.pid"
  [slurmd]="$RUN_DIR/slurmd.pid"
)
declare -A LOGFILE=(
  [munged]="$LOG_DIR/munge/munged.log"
  [mariadbd]="$LOG_DIR/mysqld.log"
  [slurmdbd]="$LOG_DIR/slurmdbd.log"
  [slurmctld]="$LOG_DIR/slurmctld.log"
  [slurmd]="$LOG_DIR/slurmd.log"
)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

# The second cluster (`start --clusters 2`).
CLUSTER2_NAME="${CLUSTER_NAME}2"
CONF2_DIR="$CONF_DIR/$CLUSTER2_NAME"
STATE2_DIR="$STATE_DIR/$CLUSTER2_NAME"
NODE2="$NODE-2"
PIDFILE2_CTLD="$RUN_DIR/slurm/slurmctld-2.pid"
PIDFILE2_D="$RUN_DIR/slurmd-2.pid"
LOG2_CTLD="$LOG_DIR/slurmctld-2.log"
LOG2_D="$LOG_DIR/slurmd-2.log"

say() { printf 'slurm-test-cluster: %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

die() {
  say "error: $*"
  local d
  for d in "${DAEMONS[@]}"; do log_tail "$d"; done
  exit 1
}

log_tail() {
  local f="${LOGFILE[$1]}"
  if [[ -s "$f" ]]; then
    printf -- '--- last lines of %s ---\n' "$f" >&2
    tail -n 15 "$f" >&2
  fi
}

# ---------------------------------------------------------------- processes

# pid_alive PID COMM: the process exists, is not a zombie, and is named COMM.
# Stopped daemons linger as zombies here (PID 1 does not reap), so `kill -0`
# alone would call them alive.
pid_alive() {
  local pid="$1" comm="$2" stat
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  # stat is "PID (COMM) STATE ...": COMM may hold spaces, so cut at the last ')'
  local state="${stat##*) }"
  state="${state%% *}"
  [[ "$state" != Z && "$state" != X ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]]
}

daemon_pid() {
  local f="${PIDFILE[$1]}" pid
  [[ -r "$f" ]] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  pid_alive "$pid" "$1" || return 1
  printf '%s\n' "$pid"
}

is_up() { daemon_pid "$1" >/dev/null; }

stop_daemon() {
  local name="$1" pid i
  if ! pid="$(daemon_pid "$name")"; then
    rm -f "${PIDFILE[$name]}"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do # 15 s
    pid_alive "$pid" "$name" || break
    sleep 0.1
  done
  if pid_alive "$pid" "$name"; then
    say "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "${PIDFILE[$name]}"
  say "stopped $name (pid $pid)"
}

# wait_for SECONDS WHAT CMD...: poll CMD every 0.1 s
wait_for() {
  local secs="$1" what="$2" deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then
      die "timed out after ${secs} s waiting for $what"
    fi
    sleep 0.1
  done
}

# ---------------------------------------------------------------- packages

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
      missing+=("$p")
    fi
  done
  ((${#missing[@]} == 0)) && return 0
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep maintainer scripts from starting the distribution's own services
  # (a system MariaDB on :3306, munged, slurm daemons): we start our own.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local candidate rc=0
  candidate="$(apt-cache policy slurm-wlm 2>/dev/null | awk '/Candidate:/ { print $2 }')"
  if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$LOG_DIR/apt.log" 2>&1 || rc=$?
  if ((rc != 0)); then
    # stale package lists (404 on a superseded version): refresh once
    say "apt-get install failed (exit $rc); running apt-get update and retrying"
    apt-get update -qq
    rc=0
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$LOG_DIR/apt.log" 2>&1 || rc=$?
  fi
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
  if ((rc != 0)); then
    tail -n 30 "$LOG_DIR/apt.log" >&2
    die "apt-get install failed (exit $rc); full log in $LOG_DIR/apt.log"
  fi
}

# ---------------------------------------------------------------- configs

# cgroup v1 with the memory and freezer controllers mounted and writable:
# then Slurm confines jobs and reports OUT_OF_MEMORY. Otherwise fall back.
cgroup_v1_usable() {
  local c
  for c in memory freezer cpuset devices; do
    awk -v c="$c" '$3 == "cgroup" && ("," $4 ",") ~ ("," c ",") { f = 1 } END { exit !f }' /proc/mounts || return 1
  done
  local probe=/sys/fs/cgroup/memory/nfslurm-probe-$$
  mkdir "$probe" 2>/dev/null || return 1
  rmdir "$probe"
}

# write_if_changed FILE MODE OWNER CONTENT: prints "changed" when it wrote
write_if_changed() {
  local file="$1" mode="$2" owner="$3" content="$4"
  if [[ -f "$file" ]] && [[ "$(cat "$file")" == "$content" ]]; then
    chmod "$mode" "$file"
    chown "$owner" "$file"
    return 0
  fi
  local tmp
  tmp="$(mktemp "$file.XXXXXX")"
  printf '%s\n' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$file"
  echo changed
}

CGROUPS=0
CONFIG_CHANGED=0
# Sets CGROUPS and CONFIG_CHANGED (so do not call it in a subshell).
write_configs() {
  local cpus mem_kb real_mem changed=""
  cpus="$(nproc)"
  mem_kb="$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
  real_mem=$((mem_kb * 95 / 100 / 1024))
  case "$CGROUP_MODE" in
    none) CGROUPS=0 ;;
    v1) CGROUPS=1 ;;
    *) if cgroup_v1_usable; then CGROUPS=1; else CGROUPS=0; fi ;;
  esac

  local track
  if ((CGROUPS)); then
    track="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
PrologFlags=Contain"
  else
    track="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherParams=OverMemoryKill"
  fi

  mkdir -p "$CONF_DIR"
  changed+="$(write_if_changed "$CONF_DIR/slurm.conf" 644 root:root "# Written by nfslurm scripts/slurm-test-cluster.sh; rewritten on every start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=${LOGFILE[slurmctld]}
SlurmdLogFile=${LOGFILE[slurmd]}
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
ReturnToService=2
MailProg=/bin/true
MinJobAge=30
MaxArraySize=10001
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
EnforcePartLimits=ALL
$track
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStoreFlags=job_comment,job_script
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$real_mem Feature=nfslurmtest State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP")"

  local cg="CgroupPlugin=cgroup/v1"
  ((CGROUPS)) && cg+="
ConstrainRAMSpace=yes
ConstrainCores=yes"
  changed+="$(write_if_changed "$CONF_DIR/cgroup.conf" 644 root:root "# Written by nfslurm scripts/slurm-test-cluster.sh
$cg")"

  changed+="$(write_if_changed "$CONF_DIR/slurmdbd.conf" 600 slurm:slurm "# Written by nfslurm scripts/slurm-test-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=${LOGFILE[slurmdbd]}
PidFile=${PIDFILE[slurmdbd]}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db")"
  if [[ -n "$changed" ]]; then CONFIG_CHANGED=1; else CONFIG_CHANGED=0; fi
}

prepare_dirs() {
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$STATE_DIR"
  chmod 755 "$RUN_DIR" "$STATE_DIR"
  # slurmctld and slurmdbd (as SlurmUser) want to chdir into a writable log
  # dir; the sticky bit keeps munged from calling the dir insecure
  chown root:slurm "$LOG_DIR"
  chmod 1775 "$LOG_DIR"
  # munged insists on owning its log and run directories
  install -d -o munge -g munge -m 700 "$LOG_DIR/munge"
  install -d -o munge -g munge -m 755 "$RUN_DIR/munge" /run/munge
  install -d -o slurm -g slurm -m 755 "$STATE_DIR/slurmctld"
  install -d -o root -g root -m 755 "$STATE_DIR/slurmd"
  local f
  for f in slurmctld slurmdbd; do
    touch "${LOGFILE[$f]}"
    chown slurm:slurm "${LOGFILE[$f]}"
  done
  # the daemons may write their pid files after dropping privileges
  install -d -o slurm -g slurm -m 755 "$RUN_DIR/slurm"
  install -d -o mysql -g mysql -m 755 "$RUN_DIR/mysql"
}

# ---------------------------------------------------------------- daemons

start_munged() {
  is_up munged && return 0
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  # --force: a previous session's socket lock may be left behind
  runuser -u munge -- /usr/sbin/munged --force \
    --log-file="${LOGFILE[munged]}" --pid-file="${PIDFILE[munged]}" ||
    die "munged failed to start"
  wait_for 10 "munged" munge -n
}

start_mariadb() {
  is_up mariadbd && return 0
  if [[ ! -d "$DB_DIR/mysql" ]]; then
    say "initialising MariaDB data directory $DB_DIR"
    rm -rf "$DB_DIR"
    install -d -o mysql -g mysql -m 750 "$DB_DIR"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
      --auth-root-authentication-method=socket --skip-test-db \
      >"$LOG_DIR/mysql-install.log" 2>&1 ||
      { tail -n 20 "$LOG_DIR/mysql-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  chown -R mysql:mysql "$DB_DIR"
  touch "${LOGFILE[mariadbd]}"
  chown mysql:mysql "${LOGFILE[mariadbd]}"
  local pool
  for pool in 1G 256M; do
    rm -f "${PIDFILE[mariadbd]}"
    setsid -f /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" \
      --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$DB_SOCKET" \
      --pid-file="${PIDFILE[mariadbd]}" --log-error="${LOGFILE[mariadbd]}" \
      --skip-name-resolve --innodb-buffer-pool-size="$pool" \
      --innodb-lock-wait-timeout=900 --innodb-log-file-size=64M \
      </dev/null >>"${LOGFILE[mariadbd]}" 2>&1
    local i
    for ((i = 0; i < 300; i++)); do # 30 s
      if mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping >/dev/null 2>&1 &&
        is_up mariadbd; then
        break
      fi
      # gave up already (e.g. cannot allocate the buffer pool)?
      if ((i > 10)) && ! pgrep -f -- "--datadir=$DB_DIR" >/dev/null; then break; fi
      sleep 0.1
    done
    is_up mariadbd && break
    say "MariaDB did not start with innodb_buffer_pool_size=$pool"
    log_tail mariadbd
  done
  is_up mariadbd || die "MariaDB failed to start"
  mariadb --no-defaults --socket="$DB_SOCKET" -uroot -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" ||
    die "could not create the slurm_acct_db database and user"
}

start_slurmdbd() {
  is_up slurmdbd && return 0
  rm -f "${PIDFILE[slurmdbd]}"
  /usr/sbin/slurmdbd || die "slurmdbd failed to start"
  wait_for 30 "slurmdbd to answer" sacctmgr -n list cluster
}

ensure_accounting() {
  if [[ -z "$(sacctmgr -n -P list cluster "$CLUSTER_NAME" format=cluster 2>/dev/null)" ]]; then
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || die "sacctmgr add cluster failed"
  fi
  if [[ -z "$(sacctmgr -n -P list account "$ACCOUNT" format=account 2>/dev/null)" ]]; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER_NAME" \
      Description="nfslurm tests" Organization=nfslurm >/dev/null ||
      die "sacctmgr add account failed"
  fi
  if [[ -z "$(sacctmgr -n -P list association cluster="$CLUSTER_NAME" account="$ACCOUNT" user=root format=user 2>/dev/null)" ]]; then
    sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" \
      Cluster="$CLUSTER_NAME" >/dev/null || die "sacctmgr add user root failed"
  fi
}

start_slurmctld() {
  is_up slurmctld && return 0
  rm -f "${PIDFILE[slurmctld]}"
  /usr/sbin/slurmctld || die "slurmctld failed to start"
  wait_for 30 "slurmctld to answer" scontrol ping
}

start_slurmd() {
  is_up slurmd && return 0
  rm -f "${PIDFILE[slurmd]}"
  /usr/sbin/slurmd -N "$NODE" || die "slurmd failed to start"
}

node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

node_idle() {
  local s
  s="$(node_state)"
  [[ "$s" == idle || "$s" == mixed || "$s" == allocated || "$s" == completing ]]
}

wait_until_ready() {
  local deadline resumed=0 s start_wait
  start_wait=$(date +%s)
  deadline=$((start_wait + WAIT_SECS))
  until node_idle; do
    s="$(node_state)"
    # a drain left by a previous session (e.g. "Kill task failed") is not
    # cleared by ReturnToService: resume the node once
    if ((!resumed)) && (($(date +%s) - start_wait >= 3)) &&
      [[ "$s" == *drain* || "$s" == down* ]]; then
      say "node $NODE is '$s'; resuming it"
      scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
      resumed=1
    fi
    if (($(date +%s) >= deadline)); then
      sinfo -N -l >&2 || true
      die "node $NODE not idle after ${WAIT_SECS} s (state '${s:-unknown}')"
    fi
    sleep 0.2
  done
  # start-ctld may run while slurmdbd is stopped on purpose
  is_up slurmdbd || return 0
  until sacct -n -X -j 1 >/dev/null 2>&1; do
    (($(date +%s) >= deadline)) && die "sacct not answering after ${WAIT_SECS} s"
    sleep 0.2
  done
}

require_root() {
  ((EUID == 0)) || { say "error: must run as root"; exit 1; }
}

require_installed() {
  command -v slurmctld >/dev/null || die "Slurm is not installed; run '$0 start' first"
}

# ---------------------------------------------------------------- cluster 2

# The second cluster's configs: its own ports, dirs and job IDs; no cgroups
# (one cgroup hierarchy per host is the first slurmd's), the same slurmdbd.
write_configs2() {
  local cpus mem_kb real_mem changed=""
  cpus="$(nproc)"
  mem_kb="$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
  real_mem=$((mem_kb * 45 / 100 / 1024))
  install -d -m 755 "$CONF2_DIR"
  changed+="$(write_if_changed "$CONF2_DIR/slurm.conf" 644 root:root "# Written by nfslurm scripts/slurm-test-cluster.sh (start --clusters 2).
ClusterName=$CLUSTER2_NAME
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6827
SlurmdPort=6828
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE2_DIR/slurmctld
SlurmdSpoolDir=$STATE2_DIR/slurmd
SlurmctldPidFile=$PIDFILE2_CTLD
SlurmdPidFile=$PIDFILE2_D
SlurmctldLogFile=$LOG2_CTLD
SlurmdLogFile=$LOG2_D
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
ReturnToService=2
MailProg=/bin/true
MinJobAge=30
MaxArraySize=10001
FirstJobId=1000000
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
EnforcePartLimits=ALL
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherParams=OverMemoryKill
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStoreFlags=job_comment,job_script
JobCompType=jobcomp/none
NodeName=$NODE2 NodeHostname=$NODE NodeAddr=127.0.0.1 Port=6828 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$real_mem Feature=nfslurmtest State=UNKNOWN
PartitionName=debug Nodes=$NODE2 Default=YES MaxTime=INFINITE State=UP")"
  changed+="$(write_if_changed "$CONF2_DIR/cgroup.conf" 644 root:root "# Written by nfslurm scripts/slurm-test-cluster.sh
CgroupPlugin=cgroup/v1")"
  if [[ -n "$changed" ]]; then CONFIG_CHANGED=1; else CONFIG_CHANGED=0; fi
}

pid2_up() {
  local pid
  [[ -r "$1" ]] || return 1
  pid="$(tr -dc '0-9' <"$1")"
  pid_alive "$pid" "$2"
}

stop_pidfile() {
  local file="$1" comm="$2" pid i
  if ! pid2_up "$file" "$comm"; then rm -f "$file"; return 0; fi
  pid="$(tr -dc '0-9' <"$file")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    pid_alive "$pid" "$comm" || break
    sleep 0.1
  done
  pid_alive "$pid" "$comm" && kill -KILL "$pid" 2>/dev/null
  rm -f "$file"
  say "stopped $comm of $CLUSTER2_NAME (pid $pid)"
}

stop_cluster2() {
  stop_pidfile "$PIDFILE2_D" slurmd
  stop_pidfile "$PIDFILE2_CTLD" slurmctld
}

node2_idle() {
  local s
  s="$(sinfo -M "$CLUSTER2_NAME" -h -n "$NODE2" -o '%T' 2>/dev/null | grep -v '^CLUSTER' | head -n1)"
  [[ "$s" == idle || "$s" == mixed || "$s" == allocated || "$s" == completing ]]
}

start_cluster2() {
  local t0
  t0="$(now)"
  write_configs2
  if ((CONFIG_CHANGED)); then stop_cluster2; fi
  install -d -o slurm -g slurm -m 755 "$STATE2_DIR" "$STATE2_DIR/slurmctld"
  install -d -o root -g root -m 755 "$STATE2_DIR/slurmd"
  touch "$LOG2_CTLD" "$LOG2_D"
  chown slurm:slurm "$LOG2_CTLD"
  if [[ -z "$(sacctmgr -n -P list cluster "$CLUSTER2_NAME" format=cluster 2>/dev/null)" ]]; then
    sacctmgr -i add cluster "$CLUSTER2_NAME" >/dev/null || die "sacctmgr add cluster $CLUSTER2_NAME failed"
  fi
  if [[ -z "$(sacctmgr -n -P list association cluster="$CLUSTER2_NAME" account="$ACCOUNT" user=root format=user 2>/dev/null)" ]]; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER2_NAME" >/dev/null 2>&1 || true
    sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" \
      Cluster="$CLUSTER2_NAME" >/dev/null || die "sacctmgr add user root on $CLUSTER2_NAME failed"
  fi
  if ! pid2_up "$PIDFILE2_CTLD" slurmctld; then
    rm -f "$PIDFILE2_CTLD"
    SLURM_CONF="$CONF2_DIR/slurm.conf" /usr/sbin/slurmctld -f "$CONF2_DIR/slurm.conf" ||
      die "slurmctld of $CLUSTER2_NAME failed to start"
  fi
  wait_for 30 "slurmctld of $CLUSTER2_NAME to answer" env SLURM_CONF="$CONF2_DIR/slurm.conf" scontrol ping
  if ! pid2_up "$PIDFILE2_D" slurmd; then
    rm -f "$PIDFILE2_D"
    SLURM_CONF="$CONF2_DIR/slurm.conf" /usr/sbin/slurmd -f "$CONF2_DIR/slurm.conf" -N "$NODE2" ||
      die "slurmd of $CLUSTER2_NAME failed to start"
  fi
  # The controller registers its address in slurmdbd: then `-M` finds it.
  wait_for "$WAIT_SECS" "$CLUSTER2_NAME in \`sinfo -M\`" node2_idle
  say "cluster $CLUSTER2_NAME up in $(elapsed "$t0") s (node $NODE2; logs $LOG2_CTLD, $LOG2_D)"
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local t0 d
  t0="$(now)"
  mkdir -p "$LOG_DIR"
  install_packages
  prepare_dirs
  write_configs
  if ((CONFIG_CHANGED)); then
    say "configuration in $CONF_DIR changed; (re)starting the Slurm daemons"
    for d in slurmd slurmctld slurmdbd; do stop_daemon "$d"; done
  fi
  local all_up=1
  for d in "${DAEMONS[@]}"; do is_up "$d" || all_up=0; done
  if ((all_up)); then
    wait_until_ready
    say "cluster already up ($(elapsed "$t0") s to check)"
    return 0
  fi
  start_munged
  start_mariadb
  start_slurmdbd
  ensure_accounting
  start_slurmctld
  start_slurmd
  wait_until_ready
  say "cluster up in $(elapsed "$t0") s (cgroups: $( ((CGROUPS)) && echo v1 || echo none); node $NODE; logs in $LOG_DIR)"
}

cmd_stop() {
  local d
  stop_cluster2
  for d in slurmd slurmctld slurmdbd mariadbd munged; do stop_daemon "$d"; done
}

cmd_status() {
  local d pid down=0
  for d in "${DAEMONS[@]}"; do
    if pid="$(daemon_pid "$d")"; then
      printf '%-10s up   (pid %s)\n' "$d" "$pid"
    else
      printf '%-10s down\n' "$d"
      down=1
    fi
  done
  if is_up slurmctld; then
    printf '%-10s %s\n' node "$(node_state || true)"
  fi
  if pid2_up "$PIDFILE2_CTLD" slurmctld; then
    printf '%-10s up   (pid %s, %s)\n' slurmctld-2 "$(tr -dc '0-9' <"$PIDFILE2_CTLD")" "$CLUSTER2_NAME"
  fi
  if pid2_up "$PIDFILE2_D" slurmd; then
    printf '%-10s up   (pid %s, %s)\n' slurmd-2 "$(tr -dc '0-9' <"$PIDFILE2_D")" "$CLUSTER2_NAME"
  fi
  return "$down"
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    start)
      require_root
      case "${2:-}" in
        "") cmd_start ;;
        --clusters)
          case "${3:-}" in
            1) cmd_start ;;
            2) cmd_start; start_cluster2 ;;
            *) echo "usage: $0 start [--clusters 1|2]" >&2; exit 2 ;;
          esac ;;
        *) echo "usage: $0 start [--clusters 1|2]" >&2; exit 2 ;;
      esac ;;
    stop) require_root; cmd_stop ;;
    restart) require_root; cmd_stop; cmd_start ;;
    status) cmd_status ;;
    stop-ctld) require_root; stop_daemon slurmctld ;;
    start-ctld)
      # the node shows "unknown" until slurmd re-registers (2 to 3 s)
      require_root; require_installed; prepare_dirs
      start_munged; start_slurmctld; wait_until_ready; say "slurmctld up" ;;
    stop-dbd) require_root; stop_daemon slurmdbd ;;
    start-dbd)
      require_root; require_installed; prepare_dirs
      start_munged; start_mariadb; start_slurmdbd; say "slurmdbd up" ;;
    *)
      echo "usage: $0 start [--clusters 2]|stop|restart|status|start-ctld|stop-ctld|start-dbd|stop-dbd" >&2
      exit 2 ;;
  esac
}

main "$@"
