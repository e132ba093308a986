# kvtier build. One Makefile, automatic header dependencies, strict warnings.
#   make / make all   build the daemon, the client library, the CLI, benchmarks and tests
#   make run          build and start kvtierd on embedded defaults (foreground)
#   make test         build and run every test (unit + integration)
#   make asan         the whole suite under AddressSanitizer + UBSan (separate build dir)
#   make bench        every benchmark in quick mode
#   make lint         clang-format check
# Components add themselves through mk/*.mk (engine, disk tier, ...).

BUILD     ?= build
CC        ?= cc
OPT       ?= -O2
SAN       ?=
V         ?= 0
Q         := $(if $(filter 1,$(V)),,@)

WARN      := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
             -Wpointer-arith -Wformat=2 -Wvla -Wundef -Wnull-dereference
CPPFLAGS  += -D_GNU_SOURCE -Iinclude -I. -I$(BUILD)/gen
CFLAGS    += -std=c11 $(OPT) -g -fPIC -fno-strict-aliasing $(WARN) $(SAN) -MMD -MP
LDFLAGS   += $(SAN) -pthread
LIBS      := -luring -llz4 -lzstd -lprotobuf-c -lxxhash -lhiredis -lmicrohttpd -lm
TEST_LIBS := -lcmocka

ifeq ($(SAN),)
else
OPT := -O1
endif

NVCC ?= $(shell command -v nvcc 2>/dev/null || ( [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc ))

DEPS_STAMP := $(BUILD)/.deps-installed

.PHONY: all deps test unit integration run bench asan lint format clean bench-plot demo
all: deps

deps: $(DEPS_STAMP)
$(DEPS_STAMP): scripts/install-deps.sh
	$(Q)mkdir -p $(BUILD)
	$(Q)./scripts/install-deps.sh
	$(Q)touch $@

# ---- generated protocol code -------------------------------------------------------------------
PROTO_C := $(BUILD)/gen/kvtier.pb-c.c
PROTO_H := $(BUILD)/gen/kvtier.pb-c.h
$(PROTO_C) $(PROTO_H) &: proto/kvtier.proto $(DEPS_STAMP)
	$(Q)mkdir -p $(BUILD)/gen
	$(Q)protoc-c --proto_path=proto --c_out=$(BUILD)/gen proto/kvtier.proto
$(BUILD)/gen/kvtier.pb-c.o: $(PROTO_C)
	@echo "  CC    $<"
	$(Q)$(CC) $(CPPFLAGS) -std=c11 $(OPT) -g -fPIC $(SAN) -w -c $< -o $@

# ---- sources -----------------------------------------------------------------------------------
COMMON_SRC  := $(wildcard common/*.c)
KERNELS_SRC := $(wildcard kernels/*.c kernels/*/*.c)
TIERS_SRC   := $(wildcard tiers/*.c tiers/*/*.c)
DAEMON_SRC  := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
CLIENT_SRC  := $(wildcard client/lib/*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

PROTO_O  := $(BUILD)/gen/kvtier.pb-c.o
CORE_A   := $(BUILD)/libkvtcore.a
CLIENT_A := $(BUILD)/libkvtier.a
CLIENT_SO:= $(BUILD)/libkvtier.so
# The shared library's soname follows the header's ABI generation: a change to the ABI (a
# function's signature, or the size of a struct the library reads, such as kvt_connect_opts)
# bumps KVT_ABI_VERSION, so programs built against the old one keep loading theirs.
CLIENT_ABI    := $(shell awk '$$2 == "KVT_ABI_VERSION" { print $$3 }' include/kvtier/kvtier.h)
CLIENT_SONAME := libkvtier.so.$(CLIENT_ABI)
CLIENT_MAP    := client/lib/libkvtier.map
DAEMON_O := $(call obj,$(DAEMON_SRC))

$(BUILD)/obj/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(CORE_A): $(call obj,$(COMMON_SRC) $(KERNELS_SRC) $(TIERS_SRC)) $(PROTO_O)
	$(Q)rm -f $@ && ar rcs $@ $^
$(CLIENT_A): $(call obj,$(CLIENT_SRC) $(COMMON_SRC)) $(PROTO_O)
	$(Q)rm -f $@ && ar rcs $@ $^
# libkvtier.so exports only the public API: the objects it is made of are compiled with hidden
# visibility (KVT_API in include/kvtier/*.h marks what is public) and the version script lists
# the same names, which also hides the generated protobuf code. The same objects go into the
# static archives; hidden visibility changes nothing for a static link.
$(call obj,$(CLIENT_SRC) $(COMMON_SRC)): CFLAGS += -fvisibility=hidden
$(BUILD)/$(CLIENT_SONAME): $(call obj,$(CLIENT_SRC) $(COMMON_SRC)) $(PROTO_O) $(CLIENT_MAP)
	@echo "  LD    $@"
	$(Q)$(CC) -shared $(LDFLAGS) -Wl,-soname,$(CLIENT_SONAME) -Wl,--version-script=$(CLIENT_MAP) \
		-o $@ $(filter %.o,$^) -lprotobuf-c -lxxhash -lm
$(CLIENT_SO): $(BUILD)/$(CLIENT_SONAME)
	$(Q)ln -sf $(CLIENT_SONAME) $@

$(BUILD)/kvtierd: $(call obj,daemon/main.c) $(DAEMON_O) $(CORE_A)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)
$(BUILD)/kvtier: $(call obj,client/cli.c) $(CLIENT_A)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

BENCH_SRC := $(wildcard bench/*.c)
TEST_HELPERS := $(call obj,$(wildcard tests/lib/*.c))
$(BUILD)/kvtier-bench: $(call obj,$(BENCH_SRC)) $(TEST_HELPERS) $(CLIENT_A) $(CORE_A)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

# ---- tests: one cmocka binary per file -----------------------------------------------------------
UNIT_SRC := $(wildcard tests/unit/test_*.c)
INTEG_SRC := $(wildcard tests/integration/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/unit/%,$(UNIT_SRC))
INTEG_BIN := $(patsubst tests/integration/%.c,$(BUILD)/tests/integration/%,$(INTEG_SRC))

TEST_LINK = $(TEST_HELPERS) $(DAEMON_O) $(CLIENT_A) $(CORE_A)
$(BUILD)/tests/unit/%: $(BUILD)/obj/tests/unit/%.o $(TEST_LINK)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) $(TEST_LIBS)
$(BUILD)/tests/integration/%: $(BUILD)/obj/tests/integration/%.o $(TEST_LINK)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) $(TEST_LIBS)

BINS := $(BUILD)/kvtierd $(BUILD)/kvtier $(BUILD)/kvtier-bench $(CLIENT_SO)
all: $(BINS) $(UNIT_BIN) $(INTEG_BIN)

-include mk/*.mk

INTEG_SH := $(wildcard tests/integration/test_*.sh)
test: all $(TEST_PREREQS)
	$(Q)KVT_BUILD=$(BUILD) ./tests/run.sh $(UNIT_BIN) $(INTEG_BIN) $(INTEG_SH) $(EXTRA_TESTS)

run: all
	$(BUILD)/kvtierd $(ARGS)

bench: all
	$(BUILD)/kvtier-bench all --quick

# PNG charts of the CSVs the last benchmarks wrote to bench/out (installs gnuplot-nox if missing).
bench-plot:
	$(Q)./scripts/bench-plot.sh bench/out

asan:
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test

LINT_FILES = $(shell git ls-files '*.c' '*.h' 2>/dev/null)
lint:
	clang-format --dry-run -Werror $(LINT_FILES)

format:
	clang-format -i $(LINT_FILES)

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
