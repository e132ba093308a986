"""Builds kvtier._kvtier, the C extension, linked statically against libkvtier.

It needs a built kvtier tree (`make` at the top): include/kvtier/*.h and <build>/libkvtier.a.
KVTIER_ROOT (default: the tree this file is in) and KVTIER_BUILD (default: <root>/build) say
where; KVTIER_CFLAGS and KVTIER_LDFLAGS add flags (the Makefile passes its sanitizer flags).
The extension is C11 with the warnings of the top-level Makefile, -Werror included.
"""
import os
import shlex

from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.abspath(os.environ.get("KVTIER_ROOT") or os.path.join(here, "..", ".."))
build = os.environ.get("KVTIER_BUILD") or os.path.join(root, "build")
if not os.path.isabs(build):
    build = os.path.join(root, build)
archive = os.path.join(build, "libkvtier.a")
if not os.path.exists(archive) and not os.environ.get("KVTIER_ALLOW_MISSING"):
    raise SystemExit(f"kvtier: {archive} not found; run `make` in {root} first "
                     "(or set KVTIER_BUILD)")

# Build artifacts go under the build folder, never into the source tree.
work = os.path.join(build, "py", "setuptools")
os.makedirs(work, exist_ok=True)

warn = ["-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes", "-Wmissing-prototypes",
        "-Wpointer-arith", "-Wformat=2", "-Wvla", "-Wundef", "-Wnull-dereference"]

setup(
    options={"build": {"build_base": work}, "egg_info": {"egg_base": work}},
    ext_modules=[
        Extension(
            "kvtier._kvtier",
            sources=["kvtier/_kvtier.c"],
            include_dirs=[os.path.join(root, "include")],
            extra_compile_args=["-std=c11", "-fvisibility=hidden", *warn,
                                *shlex.split(os.environ.get("KVTIER_CFLAGS", ""))],
            # Only PyInit__kvtier leaves the module: libkvtier's internals stay inside it.
            extra_link_args=["-Wl,--exclude-libs,ALL", "-pthread",
                             *shlex.split(os.environ.get("KVTIER_LDFLAGS", ""))],
            extra_objects=[archive],
            libraries=["protobuf-c", "xxhash", "m"],
        )
    ],
)
