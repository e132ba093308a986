#!/bin/sh
# Draws the time series and latency distributions `kvtier-bench capacity` writes beside its JSON
# (capacity_timeseries.csv, capacity_latency_cdf.csv) as PNGs with gnuplot, one line per arm:
#   capacity_hit_ratio.png    hit ratio per second (all tiers, and from disk), over time
#   capacity_rss.png          the daemon's RSS (and its shared-memory part) against the bound
#   capacity_tier_bytes.png   bytes held by the CPU and disk tiers over time
#   capacity_latency_cdf.png  CDF of Lookup, Get and Put latency (log scale)
# Usage: scripts/capacity-plot.sh [DIR]   (default bench/out). Installs gnuplot-nox when missing.
set -eu

dir=${1:-bench/out}
ts="$dir/capacity_timeseries.csv"
cdf="$dir/capacity_latency_cdf.csv"
if [ ! -s "$ts" ] || [ ! -s "$cdf" ]; then
    echo "capacity-plot: no $ts or $cdf: run 'build/kvtier-bench capacity' first" >&2
    exit 1
fi
if ! command -v gnuplot >/dev/null 2>&1; then
    echo "capacity-plot: installing gnuplot-nox" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -q gnuplot-nox >/dev/null ||
        { echo "capacity-plot: cannot install gnuplot-nox" >&2; exit 1; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# One whitespace-separated file per arm (and per arm and op for the CDF), gnuplot's easiest input.
arms=$(awk -F, 'NR > 1 && !seen[$1]++ { print $1 }' "$ts")
for a in $arms; do
    awk -F, -v a="$a" 'NR > 1 && $1 == a { $1 = $1; print }' OFS=' ' "$ts" >"$tmp/ts_$a"
    for op in lookup get put; do
        awk -F, -v a="$a" -v op="$op" 'NR > 1 && $1 == a && $2 == op { print $3, $4 }' "$cdf" \
            >"$tmp/cdf_${a}_$op"
    done
done

plots_hit="" plots_rss="" plots_tier="" plots_cdf=""
for a in $arms; do
    f="$tmp/ts_$a"
    plots_hit="$plots_hit \"$f\" using 2:5 with lines lw 2 title \"$a hit ratio\","
    plots_hit="$plots_hit \"$f\" using 2:7 with lines dt 2 title \"$a from disk\","
    plots_rss="$plots_rss \"$f\" using 2:(\$8/1048576) with lines lw 2 title \"$a RSS\","
    plots_rss="$plots_rss \"$f\" using 2:(\$10/1048576) with lines dt 3 title \"$a RssShmem\","
    plots_rss="$plots_rss \"$f\" using 2:(\$11/1048576) with lines dt 2 title \"$a bound\","
    plots_tier="$plots_tier \"$f\" using 2:(\$12/1048576) with lines lw 2 title \"$a CPU tier\","
    plots_tier="$plots_tier \"$f\" using 2:(\$13/1048576) with lines dt 2 title \"$a disk tier\","
    for op in lookup get put; do
        [ -s "$tmp/cdf_${a}_$op" ] &&
            plots_cdf="$plots_cdf \"$tmp/cdf_${a}_$op\" using 1:2 with lines lw 2 title \"$a $op\","
    done
done

gnuplot <<EOF
set terminal pngcairo size 1200,600 noenhanced
set key outside right top
set grid
set xlabel "seconds into the arm"

set output "$dir/capacity_hit_ratio.png"
set title "kvtier-bench capacity: chunk hit ratio per second"
set ylabel "hit ratio"
set yrange [0:1]
plot ${plots_hit%,}

set output "$dir/capacity_rss.png"
set title "kvtier-bench capacity: daemon RSS and its bound"
set ylabel "MiB"
set yrange [0:*]
plot ${plots_rss%,}

set output "$dir/capacity_tier_bytes.png"
set title "kvtier-bench capacity: bytes per tier"
set ylabel "MiB"
plot ${plots_tier%,}

set output "$dir/capacity_latency_cdf.png"
set title "kvtier-bench capacity: latency CDF"
set xlabel "latency (us)"
set ylabel "fraction of requests"
set logscale x
set yrange [0:1]
plot ${plots_cdf%,}
EOF
for p in hit_ratio rss tier_bytes latency_cdf; do echo "wrote $dir/capacity_$p.png"; done
