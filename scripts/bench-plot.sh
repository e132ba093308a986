#!/bin/sh
# Turns the CSVs that kvtier-bench writes (bench/out/NAME.csv, long format: bench,label,field,value)
# into PNG bar charts with gnuplot: one chart per benchmark and unit (_gbps, _us, _ms, _ops_per_s),
# one group of bars per row label, one bar per field, and capacity's time series and latency CDF
# (scripts/capacity-plot.sh). Installs gnuplot-nox when it is missing.
# Usage: scripts/bench-plot.sh [DIR]   (default bench/out)
set -eu

dir=${1:-bench/out}
if ! ls "$dir"/*.csv >/dev/null 2>&1; then
    echo "bench-plot: no CSV in $dir: run 'make bench' (or build/kvtier-bench NAME) first" >&2
    exit 1
fi
if ! command -v gnuplot >/dev/null 2>&1; then
    echo "bench-plot: installing gnuplot-nox" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -q gnuplot-nox >/dev/null ||
        { echo "bench-plot: cannot install gnuplot-nox" >&2; exit 1; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
made=0
for csv in "$dir"/*.csv; do
    # Only the reports' long format; other CSVs (capacity's time series) have their own plots.
    [ "$(head -1 "$csv")" = "bench,label,field,value" ] || continue
    name=$(basename "$csv" .csv)
    for unit in gbps us ms ops_per_s; do
        # Wide table: one line per label, one column per field with this unit ("-" = missing).
        awk -F, -v unit="$unit" '
            NR == 1 { next }
            {
                suffix = "_" unit
                if (substr($3, length($3) - length(suffix) + 1) != suffix) next
                if (unit == "us" && $3 ~ /_ops_per_s$/) next
                if ($4 == "") next
                if (!($2 in seen_l)) { seen_l[$2] = 1; labels[nl++] = $2 }
                if (!($3 in seen_f)) { seen_f[$3] = 1; fields[nf++] = $3 }
                v[$2 SUBSEP $3] = $4
            }
            END {
                if (nl == 0) exit
                printf "label"
                for (j = 0; j < nf; j++) printf "\t%s", fields[j]
                printf "\n"
                for (i = 0; i < nl; i++) {
                    printf "\"%s\"", labels[i]
                    for (j = 0; j < nf; j++) {
                        k = labels[i] SUBSEP fields[j]
                        printf "\t%s", (k in v) ? v[k] : "-"
                    }
                    printf "\n"
                }
            }' "$csv" >"$tmp/$name-$unit.tsv"
        [ -s "$tmp/$name-$unit.tsv" ] || continue
        cols=$(head -1 "$tmp/$name-$unit.tsv" | awk -F'\t' '{ print NF }')
        png="$dir/${name}_$unit.png"
        gnuplot <<EOF
set terminal pngcairo size 1400,700 noenhanced
set output "$png"
set title "kvtier-bench $name ($unit)"
set datafile separator "\t"
set datafile missing "-"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key outside right top
set xtics rotate by -30 left
set yrange [0:*]
set ylabel "$unit"
plot for [c=2:$cols] "$tmp/$name-$unit.tsv" using c:xtic(1) title columnheader(c)
EOF
        echo "wrote $png"
        made=$((made + 1))
    done
done
# lossy's trade-off: mean KL against full attention over the share of KV bytes kept, one point per
# setting of the decode part (rows with both fields).
for csv in "$dir"/lossy*.csv; do
    [ -s "$csv" ] || continue
    name=$(basename "$csv" .csv)
    awk -F, '
        NR == 1 { next }
        $3 == "kv_bytes_kept_ratio" && $4 != "" {
            x[$2] = $4
            if (!($2 in seen)) { seen[$2] = 1; l[n++] = $2 }
        }
        $3 == "kl_mean" && $4 != "" { y[$2] = $4 }
        END {
            for (i = 0; i < n; i++)
                if ((l[i] in x) && (l[i] in y) && y[l[i]] > 0)
                    printf "%s\t%s\t%s\n", l[i], x[l[i]], y[l[i]]
        }' "$csv" >"$tmp/$name-kl.tsv"
    [ -s "$tmp/$name-kl.tsv" ] || continue
    png="$dir/${name}_kl_vs_bytes_kept.png"
    gnuplot <<EOF
set terminal pngcairo size 1000,700 noenhanced
set output "$png"
set title "kvtier-bench $name: mean KL against full attention vs KV bytes kept"
set datafile separator "\t"
set logscale y
set xrange [0:1.05]
set xlabel "kv_bytes_kept_ratio (of fp16)"
set ylabel "kl_mean (nats, log scale)"
set grid
plot "$tmp/$name-kl.tsv" using 2:3 with points pt 7 ps 1.5 notitle, \
     "" using 2:3:1 with labels offset 1,0.8 left notitle
EOF
    echo "wrote $png"
    made=$((made + 1))
done
# capacity's hit ratio and RSS over time and its latency CDF (scripts/capacity-plot.sh).
if [ -s "$dir/capacity_timeseries.csv" ]; then
    "$(dirname "$0")/capacity-plot.sh" "$dir"
    made=$((made + 1))
fi
[ "$made" -gt 0 ] || { echo "bench-plot: nothing to plot" >&2; exit 1; }
