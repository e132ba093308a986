#!/usr/bin/env bash
# Structural checks of the dependency direction (docs/architecture.md): common <- kernels <- tiers
# <- daemon; a tier never includes a daemon header; the tier manager never calls request handling
# or the server (its completions are callbacks the request layer registers), includes no tier and
# names none (it uses the operations table of tiers/tier.h); request handlers reach tiers only
# through the tier manager; common/ and kernels/ include nothing above them. Fails naming the file and line that breaks a rule.
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
check "the tier manager includes no server, handler or tier header" \
    '#include "(daemon/(server|ops|tierset)|tiers/(host|disk)/)' daemon/tiermgr.c daemon/tiermgr.h
check "the tier manager names no tier: it drives them through their operations table" \
    'kvt_(host|disk)_|KVT_TIER_(CPU|DISK|GPU|REMOTE)|struct kvt_(server|op|conn)\b' \
    daemon/tiermgr.c daemon/tiermgr.h
# (The Stats handler, ops_admin.c, reads each tier's own counters: that is its job.)
check "data handlers reach the tiers only through the tier manager" \
    'kvt_(host|disk)_' daemon/ops_data.c daemon/ops_keys.c daemon/ops_session.c daemon/ops_meta.c
[ $fail -eq 0 ] && echo "test_layering: ok"
exit $fail
