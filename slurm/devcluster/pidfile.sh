# Sourced by start.sh and stop.sh: how a daemon is recognised by its pid file.
# A pid file counts only if its process is alive AND is the daemon we expect:
# after a reboot or a crash the number may belong to an unrelated process.
pid_of() {  # name pidfile -> prints pid, or fails
  local pid
  [ -s "$2" ] || return 1
  pid=$(tr -dc '0-9' < "$2")
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  echo "$pid"
}
running() { pid_of "$1" "$2" >/dev/null; }
