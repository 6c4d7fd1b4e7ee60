#!/usr/bin/env bash
# Deterministic instructions per map+unmap pair, per design, under callgrind.
#
# For each design the driver (benches/icount.rs) runs the same setup and warm-up followed by
# N pairs, then 2N pairs; setup and warm-up cancel in the difference:
#
#     instructions per pair = (I(2N) - I(N)) / N
#
# Instruction counts do not depend on machine load, so these numbers are trustworthy on a
# busy shared machine (wall-clock numbers are not).
#
# Usage: scripts/icount.sh [workload...]          workloads: hot (default) warm cold batch32,
#                                                 and (docs/benchmarks.md section 7) iommu
#                                                 iommu32 hot-limit-off hot-limit1024
#                                                 copy-tx-same copy-tx-diff copy-rx-same
#                                                 copy-rx-diff (see benches/icount.rs)
#   N=20000                  pairs in the short run (the long run does 2N); for copy-*
#                            workloads (unit: one element of a 64-element batch) rounded up
#                            to a multiple of 64
#   DESIGNS="fast xen ..."   designs to count (default: all, see gnttab::design::DESIGN_NAMES)
#   ANNOTATE=1               also profile the counted pairs of each design: inclusive costs in
#                            $OUT/annotate-<workload>-<design>.txt, self cost per pair by
#                            source file in $OUT/by-file-<workload>-<design>.txt, and the locked
#                            instructions executed per pair (atomic RMWs, lock acquire/release,
#                            SeqCst fences) with their source locations in
#                            $OUT/locks-<workload>-<design>.txt (needs objdump and addr2line)
#   OUT=dir                  where callgrind files go (default $CARGO_TARGET_DIR/icount)
#   FLOORS=0                 skip the floors (counted again for every workload otherwise)
#
# Needs valgrind (callgrind, callgrind_annotate). Builds the driver with the bench profile
# (LTO, debug line info) so the code counted is the code `cargo bench` times.
set -euo pipefail

cd "$(dirname "$0")/.."
N=${N:-20000}
DESIGNS=${DESIGNS:-"fast xen xen-plainrw xen+fastslots fast-noslots xen+permapbfn"}
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(hot)
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/icount}
mkdir -p "$OUT"

command -v valgrind >/dev/null || { echo "valgrind not found" >&2; exit 1; }

bin=$(cargo bench --bench icount --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*icount[^"]*"' | tail -1 | sed 's/"executable":"\(.*\)"/\1/')
[ -x "$bin" ] || { echo "could not build benches/icount.rs" >&2; exit 1; }

# Total instructions ("Ir") of one run of the driver.
count() { # design workload pairs
    local f="$OUT/cg.$2.$1.$3.out"
    valgrind --tool=callgrind --callgrind-out-file="$f" "$bin" "$1" "$2" "$3" >/dev/null 2>"$f.log" \
        || { cat "$f.log" >&2; exit 1; }
    sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$f" | head -1
}

# Profile of the N counted pairs only (icount::counted): inclusive costs, self cost per pair by
# source file, and the locked instructions executed per pair with their source locations.
# callgrind_annotate is a perl script, so perl is there wherever this runs.
profile() { # design workload
    local f="$OUT/cg.$2.$1.profile.out"
    valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$f" \
        --toggle-collect='*icount::counted*' "$bin" "$1" "$2" "$NW" >/dev/null 2>"$f.log"
    callgrind_annotate --inclusive=yes "$f" >"$OUT/annotate-$2-$1.txt" 2>/dev/null || true
    callgrind_annotate --auto=no --threshold=100 "$f" 2>/dev/null | ROOT="$PWD/" PAIRS="$NW" perl -ne '
        next unless /^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S[^:]*):(.*?)(?: \[.*\])?$/;
        my ($ir, $file, $fn) = ($1, $2, $3);
        $ir =~ tr/,//d;
        $file =~ s/^\Q$ENV{ROOT}\E//;
        my $key;
        if ($file =~ m{^/rustc/[^/]+/library/(.*)}) {
            my $lib = $1;
            (my $f = $fn) =~ s/^(?:.*::)?([^:]+::[^:]+)$/$1/;
            $key = "std $lib (in $f)";
        } elsif ($file =~ m{/registry/src/[^/]+/([^/]+)/(.*)}) {
            $key = "$1 $2";
        } else {
            $key = $file;
        }
        $t{$key} += $ir; $all += $ir;
        END {
            printf "%9.1f  %s\n", $t{$_} / $ENV{PAIRS}, $_
                for sort { $t{$b} <=> $t{$a} } keys %t;
            printf "%9.1f  TOTAL (instructions per pair, self cost by source file)\n", $all / $ENV{PAIRS};
        }' >"$OUT/by-file-$2-$1.txt"
    perl -e "$LOCKS_PL" "$f" "$NW" 1 >"$OUT/locks-$2-$1.txt"
}

# Locked instructions (lock-prefixed, xchg with memory) and mfences executed per pair, from a
# profile made with --dump-instr=yes: addresses are matched against objdump's disassembly of
# each object; with a third argument, lists each one with its addr2line inline chain.
LOCKS_PL=$(cat <<'PERL'
use strict; use warnings;
my ($file, $pairs, $detail) = @ARGV;
my (%obname, $ob, %kind, %cache, %hits);
sub scan {
    my $o = shift;
    return if $cache{$o}++;
    open(my $d, '-|', 'objdump', '-d', '--no-show-raw-insn', $o) or return;
    while (<$d>) {
        next unless /^\s*([0-9a-f]+):\s+(\S.*?)\s*$/;
        my ($a, $ins) = (hex($1), $2);
        if ($ins =~ /^lock\b/ || ($ins =~ /^xchg/ && $ins =~ /\(/)) { $kind{$o}{$a} = ['locked', $ins] }
        elsif ($ins =~ /^mfence\b/) { $kind{$o}{$a} = ['fence', $ins] }
    }
}
open(my $fh, '<', $file) or die "$file: $!";
my ($pos, $skip) = (0, 0);
my %n = (locked => 0, fence => 0);
while (<$fh>) {
    if (/^(c?)ob=\((\d+)\)(?: (.*))?$/) { $obname{$2} = $3 if defined $3; next if $1; $ob = $obname{$2}; scan($ob) if $ob; next }
    if (/^calls=/) { $skip = 1; next }
    next unless /^(0x[0-9a-f]+|[+-]\d+|\*)\s+\S+\s+(\d+)/;
    my ($p, $c) = ($1, $2);
    if ($p =~ /^0x/) { $pos = hex($p) } elsif ($p ne '*') { $pos += $p }
    if ($skip) { $skip = 0; next }
    next unless $ob && $kind{$ob}{$pos};
    $n{$kind{$ob}{$pos}[0]} += $c;
    $hits{$ob}{$pos} += $c;
}
printf "%.2f %.2f\n", $n{locked} / $pairs, $n{fence} / $pairs;
if ($detail) {
    for my $o (sort keys %hits) {
        for my $a (sort { $a <=> $b } keys %{$hits{$o}}) {
            my $where = `addr2line -f -i -C -e '$o' 0x@{[sprintf '%x', $a]} 2>/dev/null`;
            my @l = split /\n/, $where;
            my @chain;
            for (my $i = 0; $i + 1 < @l; $i += 2) {
                (my $f = $l[$i]) =~ s/<[^<>]*(?:<[^<>]*>[^<>]*)*>//g;
                next if $l[$i + 1] =~ m{/library/core/src/sync/atomic.rs};
                (my $s = $l[$i + 1]) =~ s{^.*?/(library/|registry/src/[^/]+/|src/)}{$1 eq "src/" ? "src/" : ""}e;
                push @chain, "$f ($s)";
            }
            printf "%6.2f  %-8s %-40s %s\n", $hits{$o}{$a} / $pairs, $kind{$o}{$a}[0], $kind{$o}{$a}[1],
                join(' <- ', @chain[0 .. ($#chain < 5 ? $#chain : 5)]);
        }
    }
}
PERL
)

printf '%s\n' "rustc: $(rustc --version)"
printf '%s\n' "N = $N (short run), 2N = $((2 * N)) (long run)"
for w in "${WORKLOADS[@]}"; do
    NW=$N
    case $w in copy-*) NW=$(((N + 63) / 64 * 64)) ;; esac
    echo
    printf '%-16s %-13s %14s %14s %12s   (N = %d)\n' design workload "I(N)" "I(2N)" "instr/pair" "$NW"
    declare -A per=()
    for d in $DESIGNS; do
        a=$(count "$d" "$w" "$NW")
        b=$(count "$d" "$w" "$((2 * NW))")
        per[$d]=$(awk -v a="$a" -v b="$b" -v n="$NW" 'BEGIN { printf "%.1f", (b - a) / n }')
        printf '%-16s %-13s %14d %14d %12s\n' "$d" "$w" "$a" "$b" "${per[$d]}"
        if [ "${ANNOTATE:-0}" = 1 ]; then
            profile "$d" "$w"
        fi
    done
    # The floors: the atomic sequences alone (benches/common/floor.rs).
    FL="floor floor-xen"
    [ "${FLOORS:-1}" = 0 ] && FL=""
    for fl in $FL; do
        a=$(count fast "$fl" "$N")
        b=$(count fast "$fl" "$((2 * N))")
        per[$fl]=$(awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')
        printf '%-16s %-10s %14d %14d %12s\n' "$fl" "-" "$a" "$b" "${per[$fl]}"
        if [ "${ANNOTATE:-0}" = 1 ]; then
            profile fast "$fl"
            mv "$OUT/locks-$fl-fast.txt" "$OUT/locks-$fl.txt"
        fi
    done
    if [ "${ANNOTATE:-0}" = 1 ]; then
        echo
        printf '%-16s %-10s %22s %10s\n' design workload "locked instr/pair" "mfence"
        for d in $DESIGNS $FL; do
            lf="$OUT/locks-$w-$d.txt"
            case $d in floor*) lf="$OUT/locks-$d.txt" ;; esac
            read -r nl nf <"$lf"
            printf '%-16s %-10s %22s %10s\n' "$d" "$w" "$nl" "$nf"
        done
        echo "(SeqCst fences compile to 'lock or' on x86-64 and count as locked; each locked"
        echo " instruction with its source location: $OUT/locks-$w-<design>.txt)"
    fi
    floor=${per[floor]:-}
    if [ -n "${per[fast]:-}" ] && [ -n "${per[xen]:-}" ]; then
        awk -v f="${per[fast]}" -v x="${per[xen]}" -v fl="$floor" -v w="$w" 'BEGIN {
            printf "\n%s: Fast/Xen instructions per pair = %.3f   (Fast %.1f, Xen %.1f, floor %.1f)\n",
                w, f / x, f, x, fl }'
    fi
    unset per
done
if [ "${ANNOTATE:-0}" = 1 ]; then
    echo
    echo "profiles: $OUT/annotate-*.txt, per source file: $OUT/by-file-*.txt"
fi
