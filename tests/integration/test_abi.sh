#!/usr/bin/env bash
# libkvtier's ABI: the shared library exports exactly the functions the public headers mark
# KVT_API (compared both ways, and with the version script), every one under the symbol version
# KVTIER_<KVT_ABI_VERSION>, with soname libkvtier.so.<KVT_ABI_VERSION>; internals cannot be linked against. A
# program built from a copy of the public headers alone (as installed), in C and in C++, links
# with -lkvtier, loads the library from $KVT_BUILD through its rpath and calls kvt_version,
# kvt_strerror(_name), kvt_chunk_keys and kvt_key_format/parse without a daemon; it prints the
# same as the same program linked statically. kvt_version() is the release kvtierd reports.
set -u
B=${KVT_BUILD:-build}
D=$(mktemp -d /tmp/kvtier-abi-XXXXXX)
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
trap 'rm -rf "$D"' EXIT

SO=$B/libkvtier.so
HEADERS=(include/kvtier/*.h)
CC=${CC:-cc}
CXX=${CXX:-c++}
BDIR=$(cd "$B" && pwd)

# Every function the public headers declare, and which of them carry KVT_API. Comments, the
# extern "C" wrappers and preprocessor lines are removed, struct and enum bodies too, then each
# declaration (up to ';') that declares kvt_name( is one function.
perl -0777 -ne '
    s{/\*.*?\*/}{ }gs; s{//[^\n]*}{ }g;
    s{^[ \t]*#[ \t]*ifdef[ \t]+__cplusplus\b.*?^[ \t]*#[ \t]*endif}{ }gms;
    s{^[ \t]*#(?:[^\n]*\\\n)*[^\n]*}{ }gm;
    1 while s/\{[^{}]*\}/;/gs;
    for my $d (split /;/) {
        next unless $d =~ /\b(kvt_\w+)\s*\(/;
        my $name = $1;
        print(($d =~ /^\s*KVT_API\b/ ? "api " : "bare ") . "$name\n");
    }' "${HEADERS[@]}" | sort -u > "$D/decl"
awk '$1 == "api" { print $2 }' "$D/decl" | sort > "$D/api"
awk '$1 == "bare" { print $2 }' "$D/decl" | sort > "$D/bare"
check "headers declare public functions ($(wc -l < "$D/api") with KVT_API)" "[ -s '$D/api' ]"
check "every function in include/kvtier/*.h is marked KVT_API" \
    "[ ! -s '$D/bare' ] || { sed 's/^/    missing KVT_API: /' '$D/bare'; false; }"

# The version script lists exactly the KVT_API names.
sed -n '/global:/,/local:/p' client/lib/libkvtier.map | grep -o 'kvt_[a-z0-9_]*' | sort > "$D/map"
check "libkvtier.map lists exactly the KVT_API functions" \
    "diff '$D/api' '$D/map' | sed 's/^/    /'; [ \${PIPESTATUS[0]} -eq 0 ]"

# What the shared library exports: defined dynamic symbols, less the version node itself.
nm -D --defined-only "$SO" | awk '$2 != "A" { print $3 }' > "$D/nm"
sed 's/@.*//' "$D/nm" | sort > "$D/exported"
echo "     libkvtier.so exports $(wc -l < "$D/exported") symbols"
check "libkvtier.so exports exactly the KVT_API functions (both ways)" \
    "diff '$D/api' '$D/exported' | sed 's/^/    /'; [ \${PIPESTATUS[0]} -eq 0 ]"
check "every export is a function" \
    "[ -z \"\$(nm -D --defined-only '$SO' | awk '\$2 != \"A\" && \$2 != \"T\"')\" ]"
abi=$(awk '$2 == "KVT_ABI_VERSION" { print $3 }' include/kvtier/kvtier.h)
check "KVT_ABI_VERSION is at least 2 (struct kvt_item gained variant)" "[ '$abi' -ge 2 ]"
check "every export has the version KVTIER_$abi" "! grep -v '@@KVTIER_$abi\$' '$D/nm'"
check "the version script's node is KVTIER_$abi" "grep -q '^KVTIER_$abi {' client/lib/libkvtier.map"
# The variant forms of the calls that name a chunk are part of the ABI.
for f in kvt_put_v kvt_get_v kvt_get_range_v kvt_lookup_v kvt_delete_v kvt_get_range_batch; do
    check "libkvtier.so exports $f" "grep -qx '$f' '$D/exported'"
done
check "soname is libkvtier.so.$abi" \
    "readelf -d '$SO' | grep -q 'Library soname: \[libkvtier.so.$abi\]'"
check "$SO resolves to libkvtier.so.$abi" "[ -e '$B/libkvtier.so.$abi' ] && [ '$SO' -ef '$B/libkvtier.so.$abi' ]"

# A program built as an engine would build it: the installed headers only (no -Iinclude, no
# project paths), -lkvtier, an rpath to the build directory.
mkdir -p "$D/include/kvtier"
cp "${HEADERS[@]}" "$D/include/kvtier/"
cat > "$D/prog.c" <<'EOF'
#include <kvtier/kvtier.h>
#include <stdio.h>
#include <string.h>

/* Written in the common subset of C and C++, so the same file checks both languages. */
int main(void)
{
    char want[32];
    snprintf(want, sizeof(want), "%d.%d.%d", KVT_VERSION_MAJOR, KVT_VERSION_MINOR,
             KVT_VERSION_PATCH);
    printf("version %s header %s\n", kvt_version(), want);
    if (strcmp(kvt_version(), want) != 0)
        return 1;
    printf("strerror %s | %s | %s\n", kvt_strerror(KVT_E_NOTFOUND),
           kvt_strerror_name(KVT_E_RANGE), kvt_strerror_name(-2));
    if (strcmp(kvt_strerror(KVT_E_NOTFOUND), "key not found") != 0 ||
        strcmp(kvt_strerror_name(KVT_E_RANGE), "E_RANGE") != 0 ||
        strcmp(kvt_strerror_name(-2), "ENOENT") != 0)
        return 2;

    struct kvt_ns_info ns;
    memset(&ns, 0, sizeof(ns));
    ns.seed = 0x1234;
    ns.tokens_per_chunk = 4;
    int32_t tokens[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    struct kvt_key keys[4], tail[1];
    size_t n = kvt_chunk_keys(&ns, NULL, tokens, 10, keys, 4); /* 2 full chunks */
    printf("chunk_keys %zu\n", n);
    if (n != 2 || kvt_chunk_keys(&ns, NULL, tokens, 10, keys, 1) != 1)
        return 3;
    n = kvt_chunk_keys(&ns, NULL, tokens, 10, keys, 4);
    /* The chain continues from a parent: the second chunk alone, after the first key. */
    if (kvt_chunk_keys(&ns, &keys[0], tokens + 4, 4, tail, 1) != 1 ||
        memcmp(&tail[0], &keys[1], sizeof(tail[0])) != 0)
        return 4;
    char text[33];
    struct kvt_key back;
    for (size_t i = 0; i < n; i++) {
        printf("key%zu %s\n", i, kvt_key_format(&keys[i], text));
        if (kvt_key_parse(text, &back) != 0 || memcmp(&back, &keys[i], sizeof(back)) != 0)
            return 5;
    }
    printf("dtype_size %zu\n", kvt_dtype_size(KVT_DTYPE_BF16));
    return kvt_dtype_size(KVT_DTYPE_BF16) == 2 ? 0 : 6;
}
EOF
# A sanitizer build (make asan) of the library needs its runtime first in the program too.
SAN=
readelf -d "$SO" | grep -q 'NEEDED.*libasan' && SAN="$SAN -fsanitize=address"
readelf -d "$SO" | grep -q 'NEEDED.*libubsan' && SAN="$SAN -fsanitize=undefined"
CFLAGS_PROG="-std=c11 -Wall -Wextra -Werror -pedantic $SAN -I$D/include"
check "C program builds against the installed headers and -lkvtier" \
    "$CC $CFLAGS_PROG '$D/prog.c' -o '$D/prog' -L'$B' -lkvtier -Wl,-rpath,'$BDIR' 2>'$D/cc.err' || { cat '$D/cc.err'; false; }"
check "it loads libkvtier.so.$abi from $B" \
    "ldd '$D/prog' | grep -q 'libkvtier.so.$abi => $BDIR/libkvtier.so.$abi'"
check "it runs without a daemon" "'$D/prog' > '$D/out.so' || { cat '$D/out.so'; false; }"
sed 's/^/     /' "$D/out.so"
check "it counts 2 chunk keys" "grep -qx 'chunk_keys 2' '$D/out.so'"
check "the static library gives the same output" \
    "$CC $CFLAGS_PROG '$D/prog.c' -o '$D/prog_static' '$B/libkvtier.a' -lprotobuf-c -lxxhash -lm -pthread 2>'$D/cc.err' && '$D/prog_static' | diff '$D/out.so' - >/dev/null || { head -5 '$D/cc.err'; false; }"
if command -v "$CXX" >/dev/null 2>&1; then
    cp "$D/prog.c" "$D/prog.cc"
    check "C++ program links against the same C symbols (extern \"C\")" \
        "$CXX -std=c++11 -Wall -Wextra -Werror $SAN -I'$D/include' '$D/prog.cc' -o '$D/prog_cxx' -L'$B' -lkvtier -Wl,-rpath,'$BDIR' 2>'$D/cxx.err' && '$D/prog_cxx' | diff '$D/out.so' - >/dev/null || { cat '$D/cxx.err'; false; }"
else
    echo "skip C++ check: no $CXX"
fi

# Internals are not part of the ABI: a program that reaches for one does not link.
printf 'void *kvt_malloc(int tag, unsigned long n);\nint main(void) { return kvt_malloc(0, 1) != 0; }\n' > "$D/internal.c"
check "an internal function (kvt_malloc) cannot be linked from libkvtier.so" \
    "! $CC $SAN -I'$D/include' '$D/internal.c' -o '$D/internal' -L'$B' -lkvtier -Wl,-rpath,'$BDIR' 2>/dev/null"

# One release number for the library, the daemon and the CLI.
check "kvt_version() is the release kvtierd --version reports" \
    "[ \"\$('$B/kvtierd' --version)\" = \"kvtierd \$(sed -n 's/^version \([^ ]*\) .*/\1/p' '$D/out.so')\" ]"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
