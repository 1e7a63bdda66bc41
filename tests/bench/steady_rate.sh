#!/usr/bin/env bash
# Benchmark: the highest steady rate of short HTTP requests (new connection each, plus 10 long
# echo sessions/s, keep-alive sessions and slow downloads) the lab sustains on this machine with
# zero failed flows. Each rate runs the `steady` scenario in a fresh lab for 8 s; the script
# stops at the first rate with a failure and prints every rate's result.
# Run as root after `make build`:  bash tests/bench/steady_rate.sh [rate ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release/drain-lab
[[ -x $bin ]] || { echo "build first: make build" >&2; exit 2; }
rates=("$@")
((${#rates[@]})) || rates=(500 1000 2000 3000 4000 5000 6000 8000 10000)
best=0
printf '%-8s %-8s %-8s %-14s %-12s\n' rate flows broken worst-setup-ms p99-short-ms
for r in "${rates[@]}"; do
  line=$("$bin" scenario steady --short-rate "$r" 2>/dev/null | grep '^{' | head -1)
  read -r flows broken worst p99 < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["flows"], d["broken"], round(d["worst_setup_ms"],1), round(d["p99_short_ms"],1))' "$line")
  printf '%-8s %-8s %-8s %-14s %-12s\n' "$r" "$flows" "$broken" "$worst" "$p99"
  if [[ $broken != 0 ]]; then break; fi
  best=$r
done
echo "highest steady short-request rate with zero failures: $best/s"
