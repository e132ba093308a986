# Kernels (docs/kernels.md). The CPU variants are ordinary sources of the core archive
# (KERNELS_SRC in the top-level Makefile). The CUDA versions, kernels/cuda/*.cu, are built only
# when nvcc was found (NVCC), into their own archive libkvtcuda.a that only test_kernels and
# test_rope link,
# with the CUDA runtime: the daemon and every other binary keep their link lines and never need
# libcudart (nor libstdc++, which the host side of nvcc's output needs). Without nvcc none of this exists and test_kernels builds without HAVE_CUDA.

ifneq ($(strip $(NVCC)),)
CUDA_HOME    ?= $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
CUDA_LIBDIR  ?= $(CUDA_HOME)/lib64
# sm_80 (A100) and sm_90 (H100/H200) as machine code, compute_90 as PTX for newer devices.
CUDA_ARCH    ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
                -gencode arch=compute_90,code=compute_90
# --fmad=false: the kernels' sums are specified bit for bit, so no multiply-add may be fused
# (the scoring kernels also use __fmul_rn/__fadd_rn, which are never fused).
NVCCFLAGS    ?= -O2 -std=c++17 --fmad=false -Xcompiler -fPIC,-Wall,-Werror $(CUDA_ARCH)
CUDA_SRC     := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ     := $(patsubst %.cu,$(BUILD)/obj/%.cu.o,$(CUDA_SRC))
CUDA_A       := $(BUILD)/libkvtcuda.a
CUDA_LIBS    := $(CUDA_A) -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcudart -lstdc++

$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	@echo "  NVCC  $<"
	$(Q)$(NVCC) $(NVCCFLAGS) -Iinclude -I. -DHAVE_CUDA -MMD -MP -c $< -o $@

$(CUDA_A): $(CUDA_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^

KERNELS_TEST_BIN := $(BUILD)/tests/unit/test_kernels $(BUILD)/tests/unit/test_rope
$(KERNELS_TEST_BIN): $(CUDA_A)
$(KERNELS_TEST_BIN): LIBS += $(CUDA_LIBS)
$(BUILD)/obj/tests/unit/test_kernels.o $(BUILD)/obj/tests/unit/test_rope.o: CPPFLAGS += -DHAVE_CUDA
# The lossy kernels' test (tests/unit/test_lossy.c) checks their CUDA versions the same way.
LOSSY_TEST_BIN := $(BUILD)/tests/unit/test_lossy
$(LOSSY_TEST_BIN): $(CUDA_A)
$(LOSSY_TEST_BIN): LIBS += $(CUDA_LIBS)
$(BUILD)/obj/tests/unit/test_lossy.o: CPPFLAGS += -DHAVE_CUDA
endif

# The kernels' float results are specified bit for bit (kernels.h): no variant may let the
# compiler fuse a multiply and an add into an FMA, which rounds once instead of twice. -std=c11
# already implies this for GCC; saying it keeps it true under -std=gnu11 or another compiler.
$(call obj,$(KERNELS_SRC)): CFLAGS += -ffp-contract=off
