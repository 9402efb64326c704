#!/usr/bin/env bash
# Start (installing it first if needed) a real SLURM cluster on this machine
# for development and tests: munged, MariaDB + slurmdbd (accounting, so that
# `sacct` works), slurmctld and slurmd, with a default `debug` partition and a
# preempting `urgent` partition. A second node -- a second slurmd in its own
# network namespace, joined to this one by a veth pair -- lets jobs span two
# nodes that reach each other only over that pair, as real nodes would.
#
# Made for a root shell on Debian 12 without systemd and without cgroups (CI
# runners, containers, small VMs). Everything lives under one directory:
#
#   CINESCENE_SLURM_DIR        state, config, logs, pid files
#                              (default /tmp/cinescene-slurm)
#   CINESCENE_SLURM_CPUS       CPUs the node advertises (default max(nproc, 8):
#                              more than the real count so that several small
#                              test jobs run at once)
#   CINESCENE_SLURM_MEM_MB     RealMemory of the node (default 90% of RAM)
#   CINESCENE_SLURM_CTLD_PORT  6817   CINESCENE_SLURM_SLURMD_PORT 6818
#   CINESCENE_SLURM_DBD_PORT   6819   CINESCENE_SLURM_DB_PORT     13306
#   CINESCENE_SLURM_NO_INSTALL 1: never run apt-get
#   CINESCENE_SLURM_SECOND_NODE  1 (default): start the second node when this
#                              machine can make network namespaces; 0: one node
#   CINESCENE_SLURM_NETNS      cinescene-node2  the second node's namespace
#   CINESCENE_SLURM_NET        10.233.17   the veth pair's /30: <net>.1 here,
#                              <net>.2 in the namespace; nothing else is routed
#
# Afterwards:  source "$CINESCENE_SLURM_DIR/env.sh"   (exports SLURM_CONF)
# The last line on stdout is that same `export SLURM_CONF=...` line; all
# progress messages go to stderr.
#
# Idempotent: when everything is up and the generated config is unchanged it
# returns at once; daemons that died are restarted; a changed slurm.conf
# restarts slurmctld and slurmd. Stop with stop.sh (same directory).
#
# Exit codes: 0 up, 1 failed, 3 not root, 4 SLURM packages missing and could
# not be installed (the test fixture skips on 3 and 4, fails on anything else),
# 5 an unsafe state directory (see "state dir safety" below: nothing is written).
set -euo pipefail
umask 022   # munged refuses group/world-writable key, socket and log paths

DIR=${CINESCENE_SLURM_DIR:-/tmp/cinescene-slurm}
CTLD_PORT=${CINESCENE_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${CINESCENE_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${CINESCENE_SLURM_DBD_PORT:-6819}
DB_PORT=${CINESCENE_SLURM_DB_PORT:-13306}
# Short host name straight from the kernel: no DNS lookups anywhere.
NODE=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname); NODE=${NODE%%.*}
NODE2=$NODE-2
SECOND_NODE=${CINESCENE_SLURM_SECOND_NODE:-1}
NETNS=${CINESCENE_SLURM_NETNS:-cinescene-node2}
NET=${CINESCENE_SLURM_NET:-10.233.17}
VETH_HOST=csn2-host VETH_NS=csn2-node   # interface names: at most 15 characters
CONF=$DIR/etc/slurm.conf
DBD_CONF=$DIR/etc/slurmdbd.conf
MUNGE_SOCK=$DIR/munge/munge.socket
MUNGED_PID=$DIR/munge/munged.pid
MARIADB_PID=$DIR/db/mariadbd.pid
DB_PASS=cinescene   # throwaway database that listens on 127.0.0.1 only
T0=$(date +%s.%N)
export PATH=$PATH:/usr/sbin:/sbin

log() { echo "[devcluster $(date +%T)] $*" >&2; }
die() { local rc=${2:-1}; log "ERROR: $1"; exit "$rc"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1fs", b-a}'; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {  # tries sleep_s description command...
  local n=$1 s=$2 what=$3; shift 3
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep "$s"; done
  die "timed out waiting for $what"
}
# shellcheck source=slurm/devcluster/pidfile.sh
. "$(dirname "${BASH_SOURCE[0]}")/pidfile.sh"
# Daemons get their log as stdio and no other inherited descriptor: a caller
# that reads our output through a pipe (CI, subprocess.run) must see EOF when
# this script ends, and the start lock (fd 9) must not outlive it.
spawn() {  # logfile command...
  local out=$1; shift
  (
    for fd in "/proc/$BASHPID/fd"/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec "$@"
  ) </dev/null >>"$out" 2>&1 || { tail -n 20 "$out" >&2; die "$1 failed (log: $out)"; }
}

[ "$(id -u)" = 0 ] || die "must run as root: the daemons run as SlurmUser=root" 3

# ------------------------------------------------------ state dir safety ---
# Everything below runs as root in a directory whose name anyone can know in
# advance (/tmp/cinescene-slurm). Another user must not be able to prepare it:
# a symlink there would make root write (truncate) any file, a planted munge
# key would let them forge credentials. So, before anything is written or
# started: the directory and every directory above it belong to root and no
# other user can change them (or carry the sticky bit, like /tmp), the
# directory is no symlink, and nothing inside it is a symlink, belongs to
# another user or is writable by one (sockets aside, which munged and MariaDB
# make world-writable on purpose). Exit 5, naming the offending path.
unsafe() { die "unsafe state directory $DIR: $1" 5; }
case "$DIR" in /*) ;; *) DIR=$PWD/$DIR ;; esac
# Writable by someone other than root: by others, or by a group other than root's.
foreign_writable() {  # path -> succeeds when a non-root user could change it
  local mode gid
  read -r mode gid < <(stat -c '%a %g' -- "$1")
  (( 8#$mode & 8#002 )) || { (( 8#$mode & 8#020 )) && [ "$gid" != 0 ]; }
}
ancestor=$(dirname -- "$DIR")
while [ ! -e "$ancestor" ]; do ancestor=$(dirname -- "$ancestor"); done
ancestor=$(realpath -e -- "$ancestor")
while :; do
  [ "$(stat -c %u -- "$ancestor")" = 0 ] || unsafe "$ancestor, above it, belongs to $(stat -c %U -- "$ancestor")"
  if foreign_writable "$ancestor" && [ ! -k "$ancestor" ]; then
    unsafe "$ancestor, above it, is writable by other users (and not sticky like /tmp)"
  fi
  [ "$ancestor" = / ] && break
  ancestor=$(dirname -- "$ancestor")
done
# Made here when absent (root's, 0755); judged after that, so a directory or symlink someone else put
# there in the meantime is refused like one that was there before.
if [ ! -e "$DIR" ] && [ ! -L "$DIR" ]; then
  mkdir -p -- "$(dirname -- "$DIR")" && mkdir -m 0755 -- "$DIR" 2>/dev/null || true
fi
[ -L "$DIR" ] && unsafe "it is a symlink (-> $(readlink -- "$DIR"))"
[ -d "$DIR" ] || unsafe "it is not a directory"
[ "$(stat -c %u -- "$DIR")" = 0 ] || unsafe "it belongs to $(stat -c %U -- "$DIR"), not root"
foreign_writable "$DIR" && unsafe "it is writable by other users (mode $(stat -c %a -- "$DIR"))"
bad=$(find "$DIR" -xdev \( -type l -o ! -user root -o \( ! -type s -perm -o+w \) \
        -o \( ! -type s -perm -g+w ! -group root \) \) -print -quit 2>/dev/null)
if [ -n "$bad" ]; then
  [ -L "$bad" ] && unsafe "$bad is a symlink (never followed)"
  unsafe "$bad belongs to $(stat -c %U -- "$bad") or is writable by other users"
fi

# ----------------------------------------------------------------- layout ---
mkdir -p "$DIR"/{etc,state,spool,log,munge,db}
chmod 0755 "$DIR" "$DIR/munge"   # munged: the socket dir must be world-searchable
# stop.sh --purge deletes $DIR only when it carries this marker.
[ -e "$DIR/.cinescene-devcluster" ] || echo "created by slurm/devcluster/start.sh" > "$DIR/.cinescene-devcluster"

# Two callers (CI and a test session, two test sessions) may start the
# cluster at once: serialise them, the package install included. fd 9 is
# closed for every daemon (spawn).
exec 9>"$DIR/.start.lock"
flock -w 600 9 || die "another start.sh holds $DIR/.start.lock"

# ---------------------------------------------------------------- install ---
pkgs=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server-core mariadb-client-core)
bins=(munged mungekey munge unmunge slurmctld slurmd slurmdbd sbatch squeue scontrol
      sinfo scancel sacct mariadbd mariadb-install-db mariadb)
missing=()
for b in "${bins[@]}"; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "${CINESCENE_SLURM_NO_INSTALL:-0}" = 1 ] &&
    die "missing ${missing[*]} and CINESCENE_SLURM_NO_INSTALL=1" 4
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them" 4
  log "installing ${pkgs[*]} (missing: ${missing[*]})"
  # Package scripts must not try to start services: there is no init system.
  # Docker-style Debian images ship this policy already; add it only for the
  # duration of the install otherwise.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt_ok=1
  # -core MariaDB packages: the server without perl tooling or init scripts.
  { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
      --no-install-recommends "${pkgs[@]}"; } </dev/null >"$DIR/log/apt.log" 2>&1 || apt_ok=0
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ "$apt_ok" = 0 ]; then
    tail -15 "$DIR/log/apt.log" >&2
    die "apt-get could not install the SLURM packages (log: $DIR/log/apt.log)" 4
  fi
  log "packages installed ($(elapsed))"
fi

# ------------------------------------------------------------ second node ---
# The namespace and the veth pair are made once and recorded in $DIR/netns, so
# stop.sh deletes only what this script made. Setting them up again is a no-op.
setup_second_node_network() {
  command -v ip >/dev/null 2>&1 || { log "no second node: the \`ip\` tool (iproute2) is missing"; return 1; }
  if [ ! -e "/run/netns/$NETNS" ]; then
    ip netns add "$NETNS" 2>"$DIR/log/netns.err" ||
      { log "no second node: ip netns add failed: $(head -1 "$DIR/log/netns.err")"; return 1; }
  fi
  echo "$NETNS" > "$DIR/netns"
  if ! ip link show "$VETH_HOST" >/dev/null 2>&1; then
    ip link add "$VETH_HOST" type veth peer name "$VETH_NS" netns "$NETNS" 2>"$DIR/log/netns.err" ||
      { log "no second node: cannot make a veth pair: $(head -1 "$DIR/log/netns.err")"; return 1; }
  fi
  ip addr replace "$NET.1/30" dev "$VETH_HOST" && ip link set "$VETH_HOST" up &&
    ip -n "$NETNS" addr replace "$NET.2/30" dev "$VETH_NS" && ip -n "$NETNS" link set "$VETH_NS" up &&
    ip -n "$NETNS" link set lo up ||
    { log "no second node: cannot configure $VETH_HOST/$VETH_NS"; return 1; }
}
if [ "$SECOND_NODE" = 1 ] && ! setup_second_node_network; then SECOND_NODE=0; fi

# ------------------------------------------------------------- slurm.conf ---
nproc_=$(nproc)
CPUS=${CINESCENE_SLURM_CPUS:-$(( nproc_ > 8 ? nproc_ : 8 ))}
MEM_MB=${CINESCENE_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {printf "%d", $2/1024*0.9}' /proc/meminfo)}
# When the host name resolves to loopback, slurmd/srun must not bind INADDR_ANY
# or the controller cannot reach them on the address it has for the node.
COMM=""
if [ "$SECOND_NODE" = 0 ] && getent ahostsv4 "$NODE" 2>/dev/null | awk '{print $1}' | grep -q '^127\.'; then
  COMM="CommunicationParameters=NoInAddrAny"
fi
# With two nodes everything talks over the veth pair: the second node's
# 127.0.0.1 is its own. slurmd and srun then listen on all of this machine's
# addresses (like slurmctld and slurmdbd always do).
ADDR=127.0.0.1 NODES=$NODE NODE_LINES=""
if [ "$SECOND_NODE" = 1 ]; then
  ADDR=$NET.1 NODES=$NODE,$NODE2
  # Weight: single-node jobs fill this node first.
  NODE_LINES="NodeName=$NODE2 NodeHostname=$NODE2 NodeAddr=$NET.2 CPUs=$CPUS RealMemory=$MEM_MB Weight=2 State=UNKNOWN"
fi

cat > "$CONF.new" <<EOF
# Generated by slurm/devcluster/start.sh; edits are overwritten on next start.
# One node, no cgroups, no systemd, everything on 127.0.0.1.
ClusterName=cinescene
SlurmctldHost=$NODE($ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job cannot start again before its launch credential expires
# (default 120 s); 5 s is the smallest value SLURM accepts. Raise it if a
# loaded machine logs "credential expired" at job launch.
AuthInfo=socket=$MUNGE_SOCK,cred_expire=5
$COMM
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# Without cgroups: track job processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
PropagateResourceLimits=NONE
JobCompType=jobcomp/none
# Accounting through slurmdbd: sacct (and submitit, which polls sacct).
# For slurmdbd, AccountingStoragePass names the munge socket to use.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
# Scheduling tuned for turnaround in seconds on one small node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2,sched_min_interval=0
# The node may advertise more CPUs/memory than it has (see CINESCENE_SLURM_CPUS).
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Seconds between SIGTERM and SIGKILL on cancel, preemption and time limit:
# the room a preempted trainer has to save. Jobs that exit on SIGTERM free
# their CPUs at once; 30 s is also SLURM's default.
KillWait=30
# Finished jobs stay visible to scontrol for an hour (sacct keeps them for good).
MinJobAge=3600
MaxJobCount=50000
InactiveLimit=0
Waittime=0
# This node is a small machine that tests load well past its cores: a slurmd slow to
# answer must not make slurmctld give up on a message and send it again a minute
# later, when a requeued job may have restarted and reused the step id it names.
MessageTimeout=60
SlurmctldTimeout=30
SlurmdTimeout=60
# Preemption: a job in 'urgent' requeues (REQUEUE) the 'debug' jobs in its way,
# like a higher-priority partition does on a production cluster.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$NODE NodeHostname=$NODE NodeAddr=$ADDR CPUs=$CPUS RealMemory=$MEM_MB Weight=1 State=UNKNOWN
$NODE_LINES
PartitionName=debug  Nodes=$NODES Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$NODES Default=NO  MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF

cat > "$DBD_CONF.new" <<EOF
# Generated by slurm/devcluster/start.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

write_env() { echo "export SLURM_CONF=$CONF" > "$DIR/env.sh"; }
# SLURM clients without SLURM_CONF read /etc/slurm/slurm.conf or look the
# controller up in DNS; every client call below goes to our config.
export SLURM_CONF=$CONF   # slurmdbd also finds slurmdbd.conf next to it

NODE_NAMES=${NODES//,/ }
slurmd_pid() { echo "$DIR/slurmd-$1.pid"; }   # SlurmdPidFile with %n
node_state() { timeout 10 sinfo -h -n "$1" -o '%t' 2>/dev/null | head -1; }
node_usable() { case "$(node_state "$1")" in idle|mix|alloc|comp) return 0 ;; *) return 1 ;; esac; }
all_up() {
  local n
  running munged "$MUNGED_PID" && running mariadbd "$MARIADB_PID" &&
    running slurmdbd "$DIR/slurmdbd.pid" && running slurmctld "$DIR/slurmctld.pid" || return 1
  for n in $NODE_NAMES; do running slurmd "$(slurmd_pid "$n")" || return 1; done
  timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
  for n in $NODE_NAMES; do node_usable "$n" || return 1; done
}

# ------------------------------------------------------------- fast path ---
if cmp -s "$CONF" "$CONF.new" && cmp -s "$DBD_CONF" "$DBD_CONF.new" && all_up; then
  rm -f "$CONF.new" "$DBD_CONF.new"
  write_env
  log "cluster already up (nodes $NODES, $(elapsed))"
  echo "export SLURM_CONF=$CONF"
  exit 0
fi

# ------------------------------------------------------------------ munge ---
if ! running munged "$MUNGED_PID"; then
  [ -s "$DIR/munge/munge.key" ] || mungekey -c -k "$DIR/munge/munge.key"
  chmod 0600 "$DIR/munge/munge.key"
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
  spawn "$DIR/log/munged.out" munged --socket="$MUNGE_SOCK" \
    --key-file="$DIR/munge/munge.key" --pid-file="$MUNGED_PID" \
    --seed-file="$DIR/munge/munged.seed" --log-file="$DIR/log/munged.log"
fi
wait_for 50 0.1 "munged (see $DIR/log/munged.log)" \
  sh -c "munge -S '$MUNGE_SOCK' -n | unmunge -S '$MUNGE_SOCK'"

# A changed config needs the daemons that read it restarted.
restart_if_changed() {  # conf daemon:pidfile...
  local conf=$1 d pf pid; shift
  cmp -s "$conf" "$conf.new" && { rm -f "$conf.new"; return 0; }
  for d in "$@"; do
    pf=${d#*:} d=${d%%:*}
    if pid=$(pid_of "$d" "$pf"); then
      log "$(basename "$conf") changed: restarting $d ($pf)"
      kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  mv -f "$conf.new" "$conf"
}
restart_if_changed "$DBD_CONF" "slurmdbd:$DIR/slurmdbd.pid"
chmod 0600 "$DBD_CONF"   # holds the DB password
# Every slurmd this directory may have (also one a one-node config no longer lists).
restart_if_changed "$CONF" "slurmd:$(slurmd_pid "$NODE")" "slurmd:$(slurmd_pid "$NODE2")" \
  "slurmctld:$DIR/slurmctld.pid"
write_env

# ------------------------------------------------------ MariaDB + slurmdbd ---
if ! running mariadbd "$MARIADB_PID"; then
  port_busy "$DB_PORT" && die "port $DB_PORT busy (set CINESCENE_SLURM_DB_PORT)"
  if [ ! -d "$DIR/db/data/mysql" ]; then
    rm -rf "$DIR/db/data"
    spawn "$DIR/log/mariadb-install-db.log" mariadb-install-db --no-defaults --user=root \
      --datadir="$DIR/db/data" --auth-root-authentication-method=socket --skip-test-db
  fi
  cat > "$DIR/db/init.sql" <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
  # mariadbd stays in the foreground: setsid -f detaches it in a new session.
  spawn "$DIR/log/mariadbd.out" setsid -f mariadbd --no-defaults --user=root \
    --datadir="$DIR/db/data" --socket="$DIR/db/mariadbd.sock" --pid-file="$MARIADB_PID" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --log-error="$DIR/log/mariadbd.log" --init-file="$DIR/db/init.sql" \
    --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
    --innodb-lock-wait-timeout=900
  wait_for 300 0.1 "mariadbd (see $DIR/log/mariadbd.log)" \
    mariadb --no-defaults -h 127.0.0.1 -P "$DB_PORT" -u slurm "-p$DB_PASS" -e 'select 1'
  wait_for 50 0.1 "mariadbd pid file" running mariadbd "$MARIADB_PID"
fi

if ! running slurmdbd "$DIR/slurmdbd.pid"; then
  port_busy "$DBD_PORT" && die "port $DBD_PORT busy (set CINESCENE_SLURM_DBD_PORT)"
  rm -f "$DIR/slurmdbd.pid"
  spawn "$DIR/log/slurmdbd.out" slurmdbd   # forks into the background
  wait_for 300 0.1 "slurmdbd (see $DIR/log/slurmdbd.log)" port_busy "$DBD_PORT"
fi

# -------------------------------------------------------------- slurmctld ---
if ! running slurmctld "$DIR/slurmctld.pid"; then
  port_busy "$CTLD_PORT" && die "port $CTLD_PORT busy (another slurmctld? set CINESCENE_SLURM_CTLD_PORT)"
  rm -f "$DIR/slurmctld.pid"
  # -i: start even if saved state from an older config cannot be read
  spawn "$DIR/log/slurmctld.out" slurmctld -f "$CONF" -i
fi
wait_for 150 0.2 "slurmctld (see $DIR/log/slurmctld.log)" \
  sh -c 'scontrol ping | grep -q "is UP"'

# ----------------------------------------------------------------- slurmd ---
if ! running slurmd "$(slurmd_pid "$NODE")"; then
  port_busy "$SLURMD_PORT" && die "port $SLURMD_PORT busy (another slurmd? set CINESCENE_SLURM_SLURMD_PORT)"
  rm -f "$(slurmd_pid "$NODE")"
  spawn "$DIR/log/slurmd-$NODE.out" slurmd -f "$CONF" -N "$NODE"
fi
# The second node's slurmd lives in its namespace: its ranks reach the first
# node only over the veth pair, and its port space is its own.
if [ "$SECOND_NODE" = 1 ] && ! running slurmd "$(slurmd_pid "$NODE2")"; then
  rm -f "$(slurmd_pid "$NODE2")"
  # nsenter enters the network namespace only (`ip netns exec` would also remount
  # /sys, where slurmd looks for its cgroup mount).
  spawn "$DIR/log/slurmd-$NODE2.out" nsenter --net="/run/netns/$NETNS" slurmd -f "$CONF" -N "$NODE2"
fi
for n in $NODE_NAMES; do
  st=""
  for i in $(seq 1 150); do
    st=$(node_state "$n" || true)
    case "$st" in
      idle|mix|alloc|comp) break ;;
      # e.g. "unexpectedly rebooted" after a machine restart: the node is fine.
      drain*|down*|inval*|fail*) scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if [ "$i" = 150 ]; then
      sinfo -R >&2 || true; tail -20 "$DIR/log/slurmd-$n.log" >&2
      die "node $n not usable (state: ${st:-none})"
    fi
    sleep 0.2
  done
done

log "cluster up: nodes $NODES ($CPUS cpus, $MEM_MB MB each), partitions debug (default) + urgent, in $(elapsed)"
echo "export SLURM_CONF=$CONF"
