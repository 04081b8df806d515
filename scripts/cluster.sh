#!/usr/bin/env bash
# A three-node NATS JetStream cluster on loopback, for trying Courier's
# scale-out on one machine (no Docker needed; docker/compose.cluster.yml is
# the same with containers).
#
#   scripts/cluster.sh start     # nodes on 14222, 14223, 14224 (routes 16222-16224)
#   export COURIER_NATS__URL=nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224
#   export COURIER_NATS__STREAM_REPLICAS=3
#   cargo run --bin worker       # as many as you like, each given all three URLs
#   scripts/cluster.sh status    # which node leads the task stream
#   scripts/cluster.sh kill 2    # SIGKILL node 2 (the stream stays available on the other two)
#   scripts/cluster.sh restart 2
#   scripts/cluster.sh stop      # every node, and their storage
#
# CLUSTER_DIR (default /tmp/courier-cluster) holds each node's storage,
# pid and log; CLUSTER_PORT (default 14222) is the first client port.
set -euo pipefail

dir=${CLUSTER_DIR:-/tmp/courier-cluster}
base=${CLUSTER_PORT:-14222}
route_base=$((base + 2000))
monitor_base=$((base + 4000))

port() { echo $((base + $1 - 1)); }
route() { echo $((route_base + $1 - 1)); }

start_node() {
  local n=$1 routes=() other
  for other in 1 2 3; do
    [ "$other" = "$n" ] || routes+=("nats://127.0.0.1:$(route "$other")")
  done
  mkdir -p "$dir/n$n"
  if [ -f "$dir/n$n.pid" ] && kill -0 "$(cat "$dir/n$n.pid")" 2>/dev/null; then
    echo "node $n already runs (pid $(cat "$dir/n$n.pid"))"
    return
  fi
  nats-server -a 127.0.0.1 -p "$(port "$n")" -m $((monitor_base + n - 1)) -js -sd "$dir/n$n" \
    -n "courier-$n" --cluster_name courier --cluster "nats://127.0.0.1:$(route "$n")" \
    --routes "$(IFS=,; echo "${routes[*]}")" -l "$dir/n$n.log" </dev/null >/dev/null 2>&1 &
  echo $! > "$dir/n$n.pid"
  echo "node $n: nats://127.0.0.1:$(port "$n") (pid $!)"
}

wait_ready() {
  local n deadline=$((SECONDS + 30))
  for n in 1 2 3; do
    until curl -fs "http://127.0.0.1:$((monitor_base + n - 1))/healthz" >/dev/null 2>&1; do
      if [ $SECONDS -ge $deadline ]; then
        echo "cluster.sh: node $n is not ready after 30 s; see $dir/n$n.log" >&2
        exit 1
      fi
      sleep 0.2
    done
  done
}

stop_node() {
  local n=$1 signal=${2:-TERM}
  if [ -f "$dir/n$n.pid" ]; then
    kill "-$signal" "$(cat "$dir/n$n.pid")" 2>/dev/null || true
    rm -f "$dir/n$n.pid"
  fi
}

urls() { echo "nats://127.0.0.1:$(port 1),nats://127.0.0.1:$(port 2),nats://127.0.0.1:$(port 3)"; }

case "${1:-}" in
  start)
    command -v nats-server >/dev/null || { echo "cluster.sh: nats-server is not installed" >&2; exit 1; }
    for n in 1 2 3; do start_node "$n"; done
    wait_ready
    echo "ready: COURIER_NATS__URL=$(urls) COURIER_NATS__STREAM_REPLICAS=3"
    ;;
  kill)
    stop_node "${2:?which node: 1, 2 or 3}" KILL
    echo "node $2 killed"
    ;;
  restart)
    start_node "${2:?which node: 1, 2 or 3}"
    wait_ready
    ;;
  status)
    for n in 1 2 3; do
      if curl -fs "http://127.0.0.1:$((monitor_base + n - 1))/healthz" >/dev/null 2>&1; then
        leads=$(curl -fs "http://127.0.0.1:$((monitor_base + n - 1))/jsz?accounts=true&streams=true" \
          | python3 -c 'import json,sys; d=json.load(sys.stdin); me="courier-"+sys.argv[1]; print(",".join(s["name"] for a in d.get("account_details",[]) for s in a.get("stream_detail",[]) if s.get("cluster",{}).get("leader")==me) or "-")' "$n" 2>/dev/null || echo "?")
        echo "node $n: up on $(port "$n"), leads streams: $leads"
      else
        echo "node $n: down"
      fi
    done
    ;;
  stop)
    for n in 1 2 3; do stop_node "$n"; done
    sleep 0.5
    rm -rf "$dir"
    echo "stopped; $dir removed"
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
