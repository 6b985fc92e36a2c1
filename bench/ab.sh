#!/bin/bash
# A/B of two builds of the edge on one machine, alternating, one worker each, against bench/origin:
#   bench/ab.sh OLD_CHECKOUT [NEW_CHECKOUT]
# OLD_CHECKOUT: a built checkout (git worktree add /tmp/old REV; ln -s $PWD/node_modules /tmp/old/; (cd /tmp/old && npx tsc -p .)).
# NEW_CHECKOUT: default this one. Rows: hot 1 KiB hits (wrk -t1 -c50 -d5s, the two orders), then cold
# 1 KiB fills (every request a new key, wrk -t1 -c32 -d8s) with the edge's CPU per fill from /proc;
# a pause after each fill run, so one edge's background work (GC, LevelDB compaction) does not
# land in the other's measurement.
set -e
OLD=${1:?usage: bench/ab.sh OLD_CHECKOUT [NEW_CHECKOUT]}
NEW=${2:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$NEW"
node dist/bench/origin.js > /tmp/ab-origin.out & ORIGIN=$!
trap 'kill $ORIGIN $OLD_PID $NEW_PID 2>/dev/null || true' EXIT
sleep 1
ORIGIN_PORT=$(grep -o '"port":[0-9]*' /tmp/ab-origin.out | cut -d: -f2)
start_edge() { node "$1/bin/outpost" edge --upstream "http://127.0.0.1:$ORIGIN_PORT" --listen "127.0.0.1:$2" --data-dir "$(mktemp -d)" --workers 1 --access-log false > /dev/null 2>&1 & echo $!; }
OLD_PID=$(start_edge "$OLD" 18101); NEW_PID=$(start_edge "$NEW" 18102)
sleep 3
for port in 18101 18102; do curl -s -o /dev/null "http://127.0.0.1:$port/1k"; curl -s -o /dev/null "http://127.0.0.1:$port/1k"; done
cpu() { local total=0; for p in $1 $(pgrep -P "$1"); do set -- $(cut -d' ' -f14,15 "/proc/$p/stat"); total=$((total + $1 + $2)); done; echo $total; }
for round in 1 2 3; do
  for pair in "18102 new" "18101 old" "18101 old" "18102 new"; do
    set -- $pair
    echo "hits round $round $2: $(wrk -t1 -c50 -d5s "http://127.0.0.1:$1/1k" | awk '/Requests\/sec/ {print $2}') req/s"
  done
done
for round in 1 2 3; do
  for pair in "18101 old $OLD_PID" "18102 new $NEW_PID"; do
    set -- $pair
    printf 'local n = 0\nrequest = function() n = n + 1; return wrk.format("GET", "/obj/%s-%s-" .. n) end\n' "$2" "$round" > /tmp/ab-cold.lua
    before=$(cpu "$3")
    result=$(wrk -t1 -c32 -d8s -s /tmp/ab-cold.lua "http://127.0.0.1:$1/")
    after=$(cpu "$3")
    total=$(echo "$result" | awk '/requests in/ {print $1}')
    echo "fills round $round $2: $(echo "$result" | awk '/Requests\/sec/ {print $2}') req/s, $(((after - before) * 10000 / total)) µs of edge CPU per fill"
    sleep 8
  done
done
