#!/usr/bin/env bash
# Prints the ratios of docs/benchmarks.md from the medians criterion saved in
# $CARGO_TARGET_DIR/criterion (or target/criterion) by the last `cargo bench --bench map_unmap`
# run. Rows whose benchmarks have not been run are skipped.
#
# Every ratio compares benchmarks of one group, which one command runs together:
#   cargo bench --bench map_unmap -- 'pair/hot'       Fast/Xen hot, Fast/floor
#   cargo bench --bench map_unmap -- 'pair/warm'      Fast/Xen warm
#   cargo bench --bench map_unmap -- 'pair/cold'      Fast/Xen cold
#   cargo bench --bench map_unmap -- 'batch'          Fast/Xen per op in batches
#   cargo bench --bench map_unmap -- 'mt/disjoint'    2-thread scaling vs the floor's; plain rw
#   cargo bench --bench map_unmap -- 'mt/same'        2 threads on one ref
#
# Times are ns per pair (per op for `batch`; aggregate ns per pair for `mt/*`, so scaling =
# t(1 thread) / t(2 threads)), estimated two ways from criterion's samples:
#   median  criterion's median of the per-iteration sample times (new/estimates.json);
#   min     the fastest sample's time per iteration (new/sample.json). Interference from other
#           processes only ever adds time, so on a busy machine the minimum is the steadier
#           estimate; on a quiet machine the two agree.
# ESTIMATE=min uses the minimum for the ratios (default: median).
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=${CARGO_TARGET_DIR:-target}/criterion
[ -d "$DIR" ] || { echo "no criterion results in $DIR: run cargo bench --bench map_unmap first" >&2; exit 1; }

ESTIMATE=${ESTIMATE:-median}

# criterion's median point estimate (ns) of benchmark directory $1 (relative to $DIR)
med() {
    local f="$DIR/$1/new/estimates.json"
    [ -f "$f" ] || return 0
    sed -E 's/.*"median":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/' "$f"
}

# the fastest sample's time per iteration (ns) of benchmark directory $1
fastest() {
    local f="$DIR/$1/new/sample.json"
    [ -f "$f" ] || return 0
    sed -E 's/.*"iters":\[([^]]*)\],"times":\[([^]]*)\].*/\1;\2/' "$f" | awk -F';' '{
        n = split($1, it, ","); split($2, t, ",");
        for (i = 1; i <= n; i++) { v = t[i] / it[i]; if (i == 1 || v < m) m = v }
        printf "%.3f", m }'
}

# the estimate the ratios use
median() {
    if [ "$ESTIMATE" = min ]; then fastest "$1"; else med "$1"; fi
}

row() { # label value target
    printf '%-58s %10s   %s\n' "$1" "$2" "$3"
}

div() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print ""; else printf "%.3f", a / b }'; }

show() { # label numerator denominator target
    local r
    r=$(div "$1" "$2")
    [ -n "$r" ] && row "$3" "$r" "$4"
    return 0
}

echo "criterion results in $DIR; ratios use the $ESTIMATE"
echo
printf '%-46s %10s %10s\n' "benchmark" "median ns" "min ns"
for b in pair_hot/fast pair_hot/xen pair_hot/floor pair_hot/floor-xen \
    pair_warm/fast pair_warm/xen pair_cold/fast pair_cold/xen \
    batch/fast/1 batch/xen/1 batch/fast/32 batch/xen/32 batch/fast/64 batch/xen/64 \
    mt_disjoint/fast/1 mt_disjoint/fast/2 mt_disjoint/xen/1 mt_disjoint/xen/2 \
    mt_disjoint/xen-plainrw/1 mt_disjoint/xen-plainrw/2 mt_disjoint/floor/1 mt_disjoint/floor/2 \
    mt_same/fast/2 mt_same/xen/2; do
    m=$(med "$b")
    [ -n "$m" ] && printf '%-46s %10.1f %10.1f\n' "$b" "$m" "$(fastest "$b")"
done

echo
printf '%-58s %10s   %s\n' "ratio" "value" "target"
show "$(median pair_hot/fast)" "$(median pair_hot/xen)" "Fast/Xen time per pair, hot, 1 thread" "<= 0.4"
show "$(median pair_hot/fast)" "$(median pair_hot/floor)" "Fast/floor, hot, 1 thread" "<= 2.0"
show "$(median pair_hot/floor)" "$(median pair_hot/floor-xen)" "floor/floor-xen (Fast/Xen if only atomics cost)" ""
show "$(median pair_warm/fast)" "$(median pair_warm/xen)" "Fast/Xen time per pair, warm (4096 refs)" ""
show "$(median pair_cold/fast)" "$(median pair_cold/xen)" "Fast/Xen time per pair, cold (random of 32768)" ""
for n in 1 32 64; do
    show "$(median batch/fast/$n)" "$(median batch/xen/$n)" "Fast/Xen time per op, batches of $n" ""
done

f1=$(median mt_disjoint/fast/1); f2=$(median mt_disjoint/fast/2)
x1=$(median mt_disjoint/xen/1); x2=$(median mt_disjoint/xen/2)
p1=$(median mt_disjoint/xen-plainrw/1); p2=$(median mt_disjoint/xen-plainrw/2)
l1=$(median mt_disjoint/floor/1); l2=$(median mt_disjoint/floor/2)
sf=$(div "$f1" "$f2"); sx=$(div "$x1" "$x2"); sp=$(div "$p1" "$p2"); sl=$(div "$l1" "$l2")
[ -n "$sl" ] && row "floor scaling, 2 threads / 1 (private lines)" "$sl" "(machine's best)"
[ -n "$sf" ] && row "Fast scaling, 2 threads / 1, disjoint refs" "$sf" ""
[ -n "$sx" ] && row "Xen scaling, 2 threads / 1, disjoint refs" "$sx" ""
[ -n "$sp" ] && row "XenPlainRw scaling, 2 threads / 1, disjoint refs" "$sp" "< 1 = collapse"
show "$sf" "$sl" "Fast scaling / floor scaling" ">= 0.9"
show "$sx" "$sl" "Xen scaling / floor scaling" ""
show "$sp" "$sx" "XenPlainRw scaling / Xen scaling" ""
show "$p2" "$x2" "XenPlainRw/Xen time per pair, 2 threads" ""
show "$f2" "$x2" "Fast/Xen time per pair, 2 threads, disjoint refs" ""
show "$(median mt_same/fast/2)" "$(median mt_same/xen/2)" "Fast/Xen time per pair, 2 threads, same ref" ""
