# Fuzzing (hardening issue): a libFuzzer target for the frame decoder, request validation and the
# handlers behind them, built with clang and ASan+UBSan in its own build directory.
#   make fuzz                      builds it and runs it for FUZZ_SECONDS (default 60)
#   make fuzz FUZZ_SECONDS=1800    the long run (docs/fuzzing.md)
# `make test` runs a short smoke run of it (tests/fuzz/test_fuzz_smoke.sh).

FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_SAN     := -fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer \
                -fno-sanitize-recover=all

.PHONY: fuzz fuzz-build
fuzz-build: deps
	$(Q)$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=clang SAN="$(FUZZ_SAN)" \
		$(FUZZ_BUILD)/fuzz_frames

fuzz: fuzz-build
	$(Q)./scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

$(BUILD)/fuzz_frames: $(call obj,tests/fuzz/fuzz_frames.c) $(DAEMON_O) $(CORE_A)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LIBS)

EXTRA_TESTS += tests/fuzz/test_fuzz_smoke.sh
