#!/usr/bin/env bash
# The adaptive-sampling measurement with real processes: two workers that know each other
# (membership, static list) behind a router, a fleet goal of GOAL kept spans per second
# keyed by the root's (service, route), and the load generator's skewed workload whose rate
# steps up 3x and back down (RATES); the load generator verifies what comes back and prints
# the kept volume per 10 s, the busy keys without a kept trace and the per-service estimates.
#
#   cargo build --release && crates/tools/scripts/adaptive-fleet.sh
#
# Environment: GOAL (1000), RATES (3000:60s,9000:60s,3000:60s), SEED (41), SKEW (1.0),
# INTERVAL (5s), BIN (target/release), DIR (target/adaptive-fleet).
set -euo pipefail

GOAL=${GOAL:-1000}
RATES=${RATES:-3000:60s,9000:60s,3000:60s}
SEED=${SEED:-41}
SKEW=${SKEW:-1.0}
INTERVAL=${INTERVAL:-5s}
BIN=${BIN:-target/release}
DIR=${DIR:-target/adaptive-fleet}
mkdir -p "$DIR"

# Ports: router 24317, workers 24411 and 24412 (admin 28011, 28012), sink 24499.
WORKERS=(127.0.0.1:24411 127.0.0.1:24412)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

for i in 0 1; do
  me=${WORKERS[$i]}
  cat >"$DIR/worker$i.yaml" <<EOF
receivers: {otlp: {protocols: {grpc: {endpoint: "$me"}}}}
tail_sampling:
  decision_wait: 5s
  policies:
    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
    - name: adaptive
      type: ema_throughput
      ema_throughput:
        goal_throughput_per_sec: $GOAL
        field_list: [root.service.name, root.http.route]
        adjustment_interval: $INTERVAL
membership:
  advertise: "$me"
  resolver: {static: {hostnames: ["${WORKERS[0]}", "${WORKERS[1]}"]}}
  protocol: {otlp: {tls: {insecure: true}}}
exporters:
  otlp:
    endpoint: "127.0.0.1:24499"
    tls: {insecure: true}
    headers: {x-tailgate-worker: w$i}
admin: {endpoint: "127.0.0.1:2801$((i + 1))"}
EOF
  "$BIN/tailgate" worker --config "$DIR/worker$i.yaml" >"$DIR/worker$i.log" 2>&1 &
  pids+=($!)
done
cat >"$DIR/router.yaml" <<EOF
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:24317"}}}}
exporters:
  loadbalancing:
    protocol: {otlp: {tls: {insecure: true}}}
    resolver: {static: {hostnames: ["${WORKERS[0]}", "${WORKERS[1]}"]}}
admin: {endpoint: "127.0.0.1:28010"}
EOF
"$BIN/tailgate" router --config "$DIR/router.yaml" >"$DIR/router.log" 2>&1 &
pids+=($!)
sleep 2

# The steps' total span count, so that the last step runs its whole duration.
spans=$(python3 -c "
import sys
total = 0
for step in '$RATES'.split(','):
    rate, secs = step.split(':')
    total += float(rate) * float(secs.rstrip('s'))
print(int(total))")
"$BIN/tailgate-tools" loadgen --endpoint 127.0.0.1:24317 --sink 127.0.0.1:24499 \
  --rate "$RATES" --spans "$spans" --seed "$SEED" --skew "$SKEW" --late-rate 0 \
  --verify --policies "$DIR/worker0.yaml"
