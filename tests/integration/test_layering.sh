#!/usr/bin/env bash
# Structural checks of the dependency direction (docs/architecture.md): common <- kernels <- tiers
# <- daemon; a tier never includes a daemon header; the tier manager never calls request handling
# or the server (its completions are callbacks the request layer registers); common/ and kernels/
# include nothing above them. Fails naming the file and line that breaks a rule.
set -u
cd "$(dirname "$0")/../.."
fail=0
check() { # DESCRIPTION PATTERN FILES...
    local what=$1 pat=$2
    shift 2
    local hits
    hits=$(grep -nE "$pat" "$@" 2>/dev/null)
    if [ -n "$hits" ]; then
        echo "FAIL $what:"
        echo "$hits" | sed 's/^/    /'
        fail=1
    else
        echo "ok   $what"
    fi
}
check "tiers include no daemon header" '#include "daemon/' tiers/*.[ch] tiers/*/*.[ch]
check "kernels include no tier or daemon header" '#include "(tiers|daemon)/' \
    kernels/*.[ch] kernels/*/*.[ch]
check "common includes no kernel, tier or daemon header" '#include "(kernels|tiers|daemon)/' \
    common/*.[ch]
check "the tier manager calls no request handler or server function" \
    'kvt__ops_|kvt__server_' daemon/tiermgr.c daemon/tiermgr.h
check "the tier manager builds no protocol message" 'Kvtier__|kvtier__' \
    daemon/tiermgr.c daemon/tiermgr.h
[ $fail -eq 0 ] && echo "test_layering: ok"
exit $fail
