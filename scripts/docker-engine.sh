#!/usr/bin/env bash
# Throwaway Docker engines for tests: each NAME is one dockerd on DIR/NAME.sock with its own
# data and exec roots, no bridge and no iptables (containers use host networking), so it
# neither needs nor touches the machine's own Docker.
#
#   scripts/docker-engine.sh install            # apt-get install docker.io busybox-static if missing
#   scripts/docker-engine.sh start DIR NAME...  # start and wait until each answers
#   scripts/docker-engine.sh stop DIR NAME...   # stop (SIGTERM, then SIGKILL after 20 s)
set -euo pipefail

install() {
  if command -v dockerd >/dev/null && command -v docker >/dev/null && [ -x /bin/busybox ]; then
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # busybox-static: a shell for the test worker image's build steps (RUN), no pull needed.
  apt-get install -y -qq docker.io busybox-static >/dev/null
}

start_one() {
  local dir=$1 name=$2
  local sock="$dir/$name.sock" pidfile="$dir/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    return
  fi
  setsid dockerd --iptables=false --ip-masq=false --bridge=none \
    --host "unix://$sock" --data-root "$dir/$name-data" --exec-root "$dir/$name-exec" \
    --pidfile "$pidfile" --shutdown-timeout 2 \
    >"$dir/$name.log" 2>&1 </dev/null &
}

wait_one() {
  local dir=$1 name=$2
  for _ in $(seq 1 300); do
    if docker -H "unix://$dir/$name.sock" version >/dev/null 2>&1; then
      return
    fi
    sleep 0.1
  done
  echo "dockerd $name did not answer on $dir/$name.sock; its log:" >&2
  tail -20 "$dir/$name.log" >&2 || true
  exit 1
}

stop_all() {
  local dir=$1 name pid pids=() alive
  shift
  for name in "$@"; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  done
  # Signal all first, then wait: the daemons shut down in parallel.
  for _ in $(seq 1 200); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  # dockerd leaves its default network namespace mounted under the exec root.
  for name in "$@"; do
    awk -v prefix="$dir/$name-" 'index($2, prefix) == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r mountpoint; do umount -l "$mountpoint" 2>/dev/null || true; done
  done
}

command=${1:-}
case "$command" in
  install) install ;;
  start)
    dir=$2; shift 2
    mkdir -p "$dir"
    # Start all first, then wait: the daemons come up in parallel.
    for name in "$@"; do start_one "$dir" "$name"; done
    for name in "$@"; do wait_one "$dir" "$name"; done
    ;;
  stop)
    dir=$2; shift 2
    stop_all "$dir" "$@"
    ;;
  *) echo "usage: $0 install | start DIR NAME... | stop DIR NAME..." >&2; exit 2 ;;
esac
