#!/usr/bin/env bash
# Prints the ratios of docs/benchmarks.md from the medians criterion saved in
# $CARGO_TARGET_DIR/criterion (or target/criterion) by the last `cargo bench --bench map_unmap`
# run (`scripts/bench-ratios.sh` or `scripts/bench-ratios.sh map_unmap`), or by the last
# `cargo bench --bench features` run (`scripts/bench-ratios.sh features`: section 7).
# Rows whose benchmarks have not been run are skipped.
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
WHAT=${1:-map_unmap}
case $WHAT in map_unmap | features) ;; *) echo "usage: $0 [map_unmap|features]" >&2; exit 2 ;; esac

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

# Every benchmark directory named, with its median and minimum (ns).
table() {
    printf '%-46s %10s %10s\n' "benchmark" "median ns" "min ns"
    local b m
    for b in "$@"; do
        m=$(med "$b")
        [ -n "$m" ] && printf '%-46s %10.1f %10.1f\n' "$b" "$m" "$(fastest "$b")"
    done
    return 0
}

echo "criterion results in $DIR; ratios use the $ESTIMATE"
echo

if [ "$WHAT" = features ]; then
    # Section 7 of docs/benchmarks.md: cargo bench --bench features [-- 'iommu/' | 'copy/' | 'limit/']
    IOMMU_DESIGNS="fast xen xen+permapbfn"
    list=()
    for k in pair batch32; do
        for c in cost0 cost800; do
            for d in $IOMMU_DESIGNS; do
                for t in 1 2; do list+=("iommu_${k}_$c/$d/$t"); done
            done
        done
    done
    for dir in tx rx; do
        for d in fast xen; do
            for v in same diff; do list+=("copy_$dir/$d/$v"); done
        done
    done
    for k in hot mt; do
        for d in fast xen xen+fastslots; do
            for v in off default limit1024; do list+=("limit_$k/$d/$v"); done
        done
    done
    table "${list[@]}"
    echo "(iommu_batch32_*: ns per batch of 32 ops, aggregate over threads; iommu_pair_*: ns per"
    echo " pair, aggregate; copy_*: ns per element; limit_*: ns per pair, aggregate for mt)"

    echo
    printf '%-58s %10s   %s\n' "ratio" "value" "target"
    for k in pair batch32; do
        for c in cost0 cost800; do
            for t in 1 2; do
                # Aggregate throughput ratio = time ratio inverted.
                show "$(median "iommu_${k}_$c/xen/$t")" "$(median "iommu_${k}_$c/fast/$t")" \
                    "IOMMU $k $c: Fast/Xen throughput, $t thread(s)" "$([ $t = 2 ] && echo '>= 4' || true)"
                show "$(median "iommu_${k}_$c/xen/$t")" "$(median "iommu_${k}_$c/xen+permapbfn/$t")" \
                    "IOMMU $k $c: XenPerMapBfn/Xen throughput, $t thread(s)" ""
                show "$(median "iommu_${k}_$c/xen+permapbfn/$t")" "$(median "iommu_${k}_$c/fast/$t")" \
                    "IOMMU $k $c: Fast/XenPerMapBfn throughput, $t thread(s)" ""
            done
            for d in $IOMMU_DESIGNS; do
                show "$(median "iommu_${k}_$c/$d/1")" "$(median "iommu_${k}_$c/$d/2")" \
                    "IOMMU $k $c: $d scaling, 2 threads / 1" ""
            done
        done
    done
    for dir in tx rx; do
        for v in same diff; do
            show "$(median "copy_$dir/fast/$v")" "$(median "copy_$dir/xen/$v")" \
                "copy $dir $v grant: Fast/Xen time per element" ""
        done
        for d in fast xen; do
            show "$(median "copy_$dir/$d/diff")" "$(median "copy_$dir/$d/same")" \
                "copy $dir: $d, all different / same grant (caching)" ""
        done
    done
    for k in hot mt; do
        for d in fast xen xen+fastslots; do
            for v in default limit1024; do
                show "$(median "limit_$k/$d/$v")" "$(median "limit_$k/$d/off")" \
                    "limit $k: $d, $v / off (time per pair)" "<= 1.05"
            done
        done
    done
    exit 0
fi

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
