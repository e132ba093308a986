#!/usr/bin/env bash
# A short run of the frame fuzzer (make fuzz) inside `make test`: builds it with clang and ASan,
# fuzzes for FUZZ_SMOKE_SECONDS (default 30) from the committed seeds and fails on any crash,
# leak or hang. The long run is documented in docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
make --no-print-directory fuzz FUZZ_SECONDS="${FUZZ_SMOKE_SECONDS:-30}"
echo "test_fuzz_smoke: ok"
