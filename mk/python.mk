# Python package (issue 14): client/python, a C extension over libkvtier.a, built into a
# virtualenv under $(BUILD)/py by scripts/py-venv.sh; `make test` runs its pytest suite
# (tests/python/test_pytest.sh) and llama-cpp-python restoring a prompt prefix from kvtier
# (tests/python/test_llama.sh).
#   make python          the virtualenv with kvtier installed ($(BUILD)/py/venv)
#   make bench-python    Python against the C client, and llama.cpp's time to first token
# The interpreter is Debian's python3 (python3-venv, python3-dev from scripts/install-deps.sh);
# KVT_PYTHON=/path/to/python3 picks another.

PY_DIR         := $(BUILD)/py
PY_VENV_STAMP  := $(PY_DIR)/venv.stamp
PY_STAMP       := $(PY_DIR)/kvtier.stamp
PY_LLAMA_STAMP := $(PY_DIR)/llama.stamp
PY_PKG_SRC     := $(wildcard client/python/kvtier/*.c client/python/kvtier/*.py \
                    client/python/kvtier/*.pyi) client/python/setup.py client/python/pyproject.toml

.PHONY: python bench-python

$(PY_VENV_STAMP): client/python/requirements-test.txt scripts/py-venv.sh $(DEPS_STAMP)
	$(Q)KVT_PYTHON=$(KVT_PYTHON) ./scripts/py-venv.sh venv $(BUILD)
	$(Q)touch $@

$(PY_STAMP): $(PY_VENV_STAMP) $(PY_PKG_SRC) $(CLIENT_A) include/kvtier/kvtier.h \
             include/kvtier/errors.h
	@echo "  PY    client/python"
	$(Q)SAN="$(SAN)" ./scripts/py-venv.sh kvtier $(BUILD)
	$(Q)touch $@

# Depends on the virtualenv only, so that under `make -j2 test` the long first build of
# llama-cpp-python runs beside the C build.
$(PY_LLAMA_STAMP): $(PY_VENV_STAMP) client/python/requirements-llama.txt
	$(Q)./scripts/py-venv.sh llama $(BUILD)
	$(Q)touch $@

python: $(PY_STAMP)

TEST_PREREQS += $(PY_STAMP) $(PY_LLAMA_STAMP)
EXTRA_TESTS += tests/python/test_pytest.sh tests/python/test_llama.sh

bench-python: $(PY_STAMP) $(PY_LLAMA_STAMP) $(BUILD)/kvtierd $(BUILD)/py/cbench $(ENGINE_MODEL)
	$(Q)$(PY_DIR)/venv/bin/python client/python/bench/bench_python.py --build $(BUILD) $(ARGS)

# The C side of bench-python: the same loops through libkvtier directly.
$(BUILD)/py/cbench: $(call obj,client/python/bench/cbench.c) $(CLIENT_A)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)
all: $(BUILD)/py/cbench
