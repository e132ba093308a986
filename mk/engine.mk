# Reference inference engine (issue 4): $(BUILD)/kvtier-engine, the engine archive its tests link,
# the model fetch that `make test` needs, and `make demo`.

ENGINE_SRC   := $(filter-out engine/main.c,$(wildcard engine/*.c))
ENGINE_OBJ   := $(call obj,$(ENGINE_SRC) engine/main.c)
ENGINE_A     := $(BUILD)/libkvtengine.a
ENGINE_MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf

$(ENGINE_A): $(call obj,$(ENGINE_SRC))
	$(Q)rm -f $@ && ar rcs $@ $^

# The core archive brings the kernels (the lossy modes quantize and cluster with them).
$(BUILD)/kvtier-engine: $(call obj,engine/main.c) $(ENGINE_A) $(CLIENT_A) $(CORE_A)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

all: $(BUILD)/kvtier-engine

# kvtier-bench reuse runs the engine in its own process (bench/reuse.c).
$(BUILD)/kvtier-bench: $(ENGINE_A)
$(BUILD)/kvtier-bench: LIBS += $(ENGINE_A) $(CLIENT_A)

# Engine tests link the engine archive. The targets are listed explicitly: a pattern rule without
# a recipe would add no prerequisites. libkvtier goes once more after the engine archive because
# the offload mode calls into it and archives are scanned in order.
ENGINE_UNIT_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/unit/%,$(wildcard tests/unit/test_engine_*.c))
ENGINE_INTEG_BIN := $(patsubst tests/integration/%.c,$(BUILD)/tests/integration/%,$(wildcard tests/integration/test_engine_*.c))
$(ENGINE_UNIT_BIN): $(ENGINE_A)
$(ENGINE_INTEG_BIN): $(ENGINE_A) | $(BUILD)/kvtierd
$(ENGINE_UNIT_BIN) $(ENGINE_INTEG_BIN): LIBS += $(ENGINE_A) $(CLIENT_A) $(CORE_A)

# The engine tests read the model; fetch it (once) before any test runs.
$(ENGINE_MODEL):
	$(Q)./scripts/fetch-model.sh models >/dev/null
TEST_PREREQS += $(ENGINE_MODEL)

demo: $(BUILD)/kvtierd $(BUILD)/kvtier $(BUILD)/kvtier-engine
	$(Q)BUILD=$(BUILD) ./scripts/demo.sh
EXTRA_TESTS += tests/engine/test_cli.sh
