#!/usr/bin/env bash
# Stop the dev cluster that start.sh started in $CINESCENE_SLURM_DIR
# (default /tmp/cinescene-slurm).
#
#   stop.sh           cancel all jobs, stop the daemons, delete the second
#                     node's network namespace; keep config, job history
#                     (MariaDB) and logs for the next start
#   stop.sh --purge   the same, then delete the whole directory
#
# Daemons are found only through the pid files start.sh's daemons wrote, and
# a pid is signalled only if it still runs the expected program: a SLURM or
# MariaDB that something else started on this machine is never touched.
set -uo pipefail

DIR=${CINESCENE_SLURM_DIR:-/tmp/cinescene-slurm}
PURGE=0
case "${1:-}" in
  "") ;;
  --purge) PURGE=1 ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
export PATH=$PATH:/usr/sbin:/sbin

# shellcheck source=slurm/devcluster/pidfile.sh
. "$(dirname "${BASH_SOURCE[0]}")/pidfile.sh"

stop_daemon() {  # name pidfile
  local name=$1 pf=$2 pid t0
  if ! pid=$(pid_of "$name" "$pf"); then
    echo "$name: not running"; rm -f "$pf"; return 0
  fi
  t0=$(date +%s.%N)
  kill -TERM "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name: pid $pid still alive after 15 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pf"
  echo "$name: stopped (pid $pid, $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s)"
}

# Cancel jobs first so that their processes and slurmstepd exit cleanly
# rather than being orphaned when slurmd goes away.
if [ -f "$DIR/etc/slurm.conf" ] && pid_of slurmctld "$DIR/slurmctld.pid" >/dev/null; then
  export SLURM_CONF=$DIR/etc/slurm.conf
  jobs_left=$(timeout 10 squeue -h -o %i 2>/dev/null | wc -l)
  if [ "$jobs_left" -gt 0 ]; then
    echo "cancelling $jobs_left job(s)"
    timeout 10 scancel --quiet --state=PENDING   >/dev/null 2>&1
    timeout 10 scancel --quiet --state=RUNNING   >/dev/null 2>&1
    timeout 10 scancel --quiet --state=SUSPENDED >/dev/null 2>&1
    for _ in $(seq 1 100); do   # up to 20 s for them to finish
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2
    done
  fi
fi

# Reverse start order: clients of a daemon stop before the daemon.
for pf in "$DIR"/slurmd-*.pid "$DIR"/slurmd.pid; do   # one per node (slurmd-%n.pid), and an older layout's
  [ -e "$pf" ] && stop_daemon slurmd "$pf"
done
stop_daemon slurmctld "$DIR/slurmctld.pid"
stop_daemon slurmdbd  "$DIR/slurmdbd.pid"
stop_daemon mariadbd  "$DIR/db/mariadbd.pid"
stop_daemon munged    "$DIR/munge/munged.pid"

# The second node's namespace (its veth pair goes with it), only if start.sh
# recorded making it and nothing runs in it any more.
if [ -s "$DIR/netns" ]; then
  ns=$(cat "$DIR/netns")
  if [ -e "/run/netns/$ns" ]; then
    if [ -z "$(ip netns pids "$ns" 2>/dev/null)" ]; then
      ip netns del "$ns" && echo "network namespace $ns: deleted"
    else
      echo "network namespace $ns: processes still run in it, not deleting" >&2
    fi
  fi
  rm -f "$DIR/netns"
fi

if [ "$PURGE" = 1 ] && [ -d "$DIR" ]; then
  # Refuse to delete a directory start.sh did not create (a mistyped
  # CINESCENE_SLURM_DIR must not cost anyone their files).
  if [ -e "$DIR/.cinescene-devcluster" ]; then
    rm -rf "$DIR"; echo "removed $DIR"
  else
    echo "not removing $DIR: it has no .cinescene-devcluster marker" >&2; exit 1
  fi
fi
