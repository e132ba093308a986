# Test tools of the metrics endpoint and the disk tier's graceful degradation: no_io_uring runs
# a command under a seccomp filter that refuses io_uring (tests/integration/test_metrics.sh).
NO_IO_URING := $(BUILD)/tests/tools/no_io_uring
$(NO_IO_URING): tests/tools/no_io_uring.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $<
all: $(NO_IO_URING)
TEST_PREREQS += $(NO_IO_URING)
