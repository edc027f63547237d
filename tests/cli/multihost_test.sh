#!/usr/bin/env bash
# Two "hosts" as two Linux network namespaces joined by a veth pair: PP 2 x DP 2 with torchrun's
# variables set by hand, ranks 0 and 3 on host A, ranks 1 and 2 on host B (rank r holds stage
# r / 2 and DP index r % 2), Gloo bound to each host's veth. Every group crosses the link: the
# store (on A), both pipelines (rank 0 -> 2 and rank 1 -> 3) and both stages' DP groups
# (ranks 0, 1 and ranks 2, 3), so each host's ranks take part in a DP and a PP group across it.
# The final checkpoint must equal PP 1 x DP 1's (pmamba-ckpt diff exits 0).
# Needs root and iproute2; skips (77) where network namespaces cannot be created.
#   Usage: multihost_test.sh BIN_DIR
set -euo pipefail
BIN=$1
source "$(dirname "$0")/lib.sh"

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "network namespaces need root (uid $(id -u))"
command -v ip >/dev/null || skip "ip not found (Debian: apt-get install iproute2)"

NS_A=pmamba-mh-a-$$
NS_B=pmamba-mh-b-$$
IF_A=pma$$  # interface names: at most 15 characters
IF_B=pmb$$
X=$(($$ % 200 + 20))
ADDR_A=10.213.$X.1
ADDR_B=10.213.$X.2
PORT=29611  # fixed: the namespaces are fresh, nothing else listens there
made=()
pids=()

cleanup() {
  local p ns
  # A rank's pid is its `timeout`, whose child is pmamba-train (ip netns exec and env exec):
  # kill the child and let `timeout` reap it and exit; kill `timeout` itself only if it has none.
  for p in "${pids[@]}"; do pkill -9 -P "$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # Deleting a namespace deletes the veth end inside it, and with it its peer.
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Namespaces left by an earlier run of this test that was killed outright (SIGKILL skips traps).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^pmamba-mh-[ab]-[0-9]*$' || true); do
  kill -0 "${ns##*-}" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
done

if ! err=$(ip netns add "$NS_A" 2>&1); then skip "cannot create a network namespace: $err"; fi
made+=("$NS_A")
if ! err=$(ip netns add "$NS_B" 2>&1); then skip "cannot create a network namespace: $err"; fi
made+=("$NS_B")
# Both ends are created inside the namespaces: nothing is ever left in the host's namespace.
if ! err=$(ip -n "$NS_A" link add "$IF_A" type veth peer name "$IF_B" netns "$NS_B" 2>&1); then
  skip "cannot create a veth pair between network namespaces: $err"
fi
ip -n "$NS_A" addr add "$ADDR_A/24" dev "$IF_A"
ip -n "$NS_B" addr add "$ADDR_B/24" dev "$IF_B"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "$IF_A" up
ip -n "$NS_B" link set "$IF_B" up

# The link carries TCP from B to A before anything depends on it (python3 is needed by other
# tests too). The listener gives up after 20 s, so nothing waits on it.
ip netns exec "$NS_A" python3 - "$ADDR_A" "$T/probe.port" <<'PY' &
import os, socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1); s.settimeout(20)
open(sys.argv[2] + ".tmp", "w").write(str(s.getsockname()[1])); os.rename(sys.argv[2] + ".tmp", sys.argv[2])
c, _ = s.accept(); c.sendall(b"ok"); c.close()
PY
probe=$!
pids+=("$probe")
for _ in $(seq 1 100); do [ -s "$T/probe.port" ] && break; sleep 0.1; done
[ -s "$T/probe.port" ] || { echo "FAIL: the probe listener in $NS_A did not start"; exit 1; }
if ! reply=$(ip netns exec "$NS_B" python3 -c '
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); print(s.recv(2).decode())' \
    "$ADDR_A" "$(cat "$T/probe.port")" 2>&1) || [ "$reply" != ok ]; then
  echo "FAIL: no TCP connection from $NS_B ($ADDR_B) to $NS_A ($ADDR_A): $reply"; exit 1
fi
wait "$probe" || { echo "FAIL: the probe listener in $NS_A failed"; exit 1; }

common=(--preset tiny --data selective-copy --microbatches 8 --microbatch-size 2 --steps 4 --seed 3
        --threads 1 --timeout 60 --quiet)

# rank 0, 3: host A; rank 1, 2: host B. LOCAL_RANK counts within a host.
pids=()
for r in 0 1 2 3; do
  if [ "$r" -eq 0 ] || [ "$r" -eq 3 ]; then ns=$NS_A; ifname=$IF_A; else ns=$NS_B; ifname=$IF_B; fi
  timeout 300 ip netns exec "$ns" env RANK=$r WORLD_SIZE=4 LOCAL_RANK=$((r == 0 || r == 1 ? 0 : 1)) MASTER_ADDR="$ADDR_A" \
      MASTER_PORT=$PORT GLOO_SOCKET_IFNAME="$ifname" \
      "$BIN/pmamba-train" "${common[@]}" --pp 2 --dp 2 --ckpt-dir "$T/multi" >"$T/rank$r.out" 2>"$T/rank$r.err" &
  pids+=($!)
done
failed=0
codes=()
for r in 0 1 2 3; do
  if wait "${pids[$r]}"; then c=0; else c=$?; fi
  codes+=("$c")
  [ "$c" -eq 0 ] || failed=1
done
pids=()
if [ "$failed" -ne 0 ]; then
  echo "FAIL: PP 2 x DP 2 across namespaces $NS_A ($ADDR_A) and $NS_B ($ADDR_B): exit codes ${codes[*]} (124 = hung)"
  for r in 0 1 2 3; do
    if [ "$r" -lt 2 ]; then ns=$NS_A; else ns=$NS_B; fi
    echo "--- rank $r (stage $((r / 2)), dp $((r % 2))) exited ${codes[$r]}; stderr:"
    head -c 4000 "$T/rank$r.err"
    if [ -s "$T/rank$r.out" ]; then echo "--- rank $r stdout:"; head -c 2000 "$T/rank$r.out"; fi
  done
  exit 1
fi

if ! "$BIN/pmamba-train" "${common[@]}" --pp 1 --dp 1 --ckpt-dir "$T/single" >"$T/single.out" 2>"$T/single.err"; then
  echo "FAIL: the PP 1 x DP 1 reference run failed; stderr:"; head -c 4000 "$T/single.err"; exit 1
fi
if ! "$BIN/pmamba-ckpt" diff "$T/multi" "$T/single" >"$T/diff.out" 2>&1; then
  echo "FAIL: PP 2 x DP 2 across two hosts differs from PP 1 x DP 1:"; head -c 4000 "$T/diff.out"; exit 1
fi
echo "PASS: PP 2 x DP 2 across two network namespaces equals PP 1 x DP 1"
