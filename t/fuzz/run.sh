#!/bin/sh
# Runs libFuzzer harnesses one after another, each as one process (no -jobs: the machine is shared)
# on scratch copies of their seed corpora, and prints one summary line per harness from
# libFuzzer's final statistics. Usage: run.sh SECONDS BUILD_DIR HARNESS...
# Exits 1 when any harness found a crash, a leak, a timeout or an out-of-memory.
set -u
secs=$1 dir=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
failed=0 total=0
summary=""
for bin in "$@"; do
    name=$(basename "$bin")
    short=${name#fuzz_}
    work="$dir/run/$short"
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/artifacts"
    [ -d "$here/corpus/$short" ] && cp "$here/corpus/$short/"* "$work/corpus/" 2>/dev/null
    dict=""
    [ -f "$here/$short.dict" ] && dict="-dict=$here/$short.dict"
    echo "== $name: $secs s"
    "$bin" -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$work/artifacts/" $dict "$work/corpus" \
        >"$work/log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$work/log" | tail -n 1)
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    files=$(ls "$work/corpus" | wc -l)
    if [ $rc -ne 0 ] || ls "$work/artifacts/" | grep -q .; then
        status="FAILED (exit $rc; see $work/log and $work/artifacts/)"
        failed=1
        tail -n 40 "$work/log"
    else
        status="ok"
    fi
    line=$(printf '%-20s %12s execs  cov: %-6s ft: %-6s corpus: %-5s %s' "$name" "${execs:-?}" \
        "${cov:-?}" "${ft:-?}" "$files" "$status")
    echo "$line"
    summary="$summary$line
"
    total=$((total + ${execs:-0}))
done
echo "== fuzz summary ($secs s per harness)"
printf '%s' "$summary"
echo "total: $total executions"
exit $failed
