# Kernels (docs/kernels.md). The CPU variants are ordinary sources of the core archive
# (KERNELS_SRC in the top-level Makefile). The CUDA versions, kernels/cuda/*.cu, are built only
# when nvcc was found (NVCC), into their own archive libkvtcuda.a that only test_kernels links,
# with the CUDA runtime: the daemon and every other binary keep their link lines and never need
# libcudart (nor libstdc++, which the host side of nvcc's output needs). Without nvcc none of this exists and test_kernels builds without HAVE_CUDA.

ifneq ($(strip $(NVCC)),)
CUDA_HOME    ?= $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
CUDA_LIBDIR  ?= $(CUDA_HOME)/lib64
# sm_80 (A100) and sm_90 (H100/H200) as machine code, compute_90 as PTX for newer devices.
CUDA_ARCH    ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
                -gencode arch=compute_90,code=compute_90
NVCCFLAGS    ?= -O2 -std=c++17 -Xcompiler -fPIC,-Wall,-Werror $(CUDA_ARCH)
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

KERNELS_TEST_BIN := $(BUILD)/tests/unit/test_kernels
$(KERNELS_TEST_BIN): $(CUDA_A)
$(KERNELS_TEST_BIN): LIBS += $(CUDA_LIBS)
$(BUILD)/obj/tests/unit/test_kernels.o: CPPFLAGS += -DHAVE_CUDA
endif
