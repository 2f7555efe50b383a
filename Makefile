# sluice: LLM batch inference in C11 + CUDA C, run as an MPI job.
#
#   make            build build/sluice (CUDA backend too when nvcc is found)
#   make test       build and run the CPU test suite (what CI runs)
#   make test-gpu   GPU kernel tests + end-to-end on a GPU host
#   make run        build and run the demo job on the bundled model
#   make deps       install the Debian packages sluice builds against
#
# Options: CUDA=0 forces a CPU-only build; CUDA_HOME, GPU_ARCH, DEBUG=1, ASAN=1.

ifeq ($(origin CC),default)
CC := gcc
endif
CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(shell command -v nvcc 2>/dev/null || { test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc; })
GPU_ARCH ?= -gencode=arch=compute_90a,code=sm_90a
DEBUG ?= 0
ASAN ?= 0
BUILD ?= build

ifeq ($(NVCC),)
CUDA := 0
endif
CUDA ?= 1

# ---------------------------------------------------------------------------
# dependencies: exact pkg-config names first, plain -l flags as the fallback

pc = $(shell pkg-config --silence-errors $(2) $(1))
HDF5_PC := $(firstword $(foreach p,hdf5-serial hdf5-openmpi hdf5,$(if $(shell pkg-config --exists $(p) && echo y),$(p))))
ifneq ($(HDF5_PC),)
HDF5_CFLAGS := $(call pc,$(HDF5_PC),--cflags)
HDF5_LIBS := $(call pc,$(HDF5_PC),--libs)
else
HDF5_CFLAGS := -I/usr/include/hdf5/serial
HDF5_LIBS := -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5
endif
MPI_CFLAGS := $(or $(call pc,ompi-c,--cflags),$(shell mpicc --showme:compile 2>/dev/null))
MPI_LIBS := $(or $(call pc,ompi-c,--libs),$(shell mpicc --showme:link 2>/dev/null),-lmpi)
JANSSON_LIBS := $(or $(call pc,jansson,--libs),-ljansson)
PCRE2_LIBS := $(or $(call pc,libpcre2-8,--libs),-lpcre2-8)
UTF8PROC_LIBS := $(or $(call pc,libutf8proc,--libs),-lutf8proc)
CUNIT_LIBS := $(or $(call pc,cunit,--libs),-lcunit)
DEP_CFLAGS := $(HDF5_CFLAGS) $(MPI_CFLAGS) $(call pc,jansson,--cflags) \
              $(call pc,libpcre2-8,--cflags) $(call pc,cunit,--cflags)

# ---------------------------------------------------------------------------
# flags

OPT := $(if $(filter 1,$(DEBUG)),-O0 -g3,-O3 -g -march=x86-64-v3)
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer
SAN := $(if $(filter 1,$(ASAN)),$(SAN_FLAGS))
INCLUDES := -Isrc -Ikernels -Iio -Iparallel
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter \
              -Wshadow -Wno-sign-compare $(OPT) $(SAN) -fopenmp -MMD -MP \
              $(INCLUDES) $(DEP_CFLAGS) $(CFLAGS)
LIBS := $(HDF5_LIBS) $(MPI_LIBS) $(JANSSON_LIBS) $(PCRE2_LIBS) $(UTF8PROC_LIBS) -lm -lpthread
LDFLAGS_ALL := -fopenmp $(SAN) $(LDFLAGS)
NVCCFLAGS ?= -O3 -std=c++17 $(GPU_ARCH) -lineinfo -Xcompiler -fPIC,-Wall $(INCLUDES)

ifeq ($(CUDA),1)
CFLAGS_ALL += -DSLUICE_CUDA -I$(CUDA_HOME)/include
NCCL_LIBS := $(or $(call pc,nccl,--libs),-lnccl)
LIBS += -L$(CUDA_HOME)/lib64 -lcublasLt -lcublas $(NCCL_LIBS) -lcudart -lstdc++
endif

# ---------------------------------------------------------------------------
# sources: everything but main.c goes into libsluice.a; tests link against it

C_SRCS := $(filter-out src/main.c,$(wildcard src/*.c kernels/cpu/*.c io/*.c parallel/*.c))
CU_SRCS := $(if $(filter 1,$(CUDA)),$(wildcard kernels/cuda/*.cu),)
ifneq ($(CUDA),1)
C_SRCS := $(filter-out %_cuda.c,$(C_SRCS))
endif
OBJS := $(C_SRCS:%.c=$(BUILD)/obj/%.o) $(CU_SRCS:%.cu=$(BUILD)/obj/%.o)
LIB := $(BUILD)/libsluice.a
BIN := $(BUILD)/sluice
TEST_SRCS := $(wildcard tests/test_*.c)
ifneq ($(CUDA),1)
TEST_SRCS := $(filter-out tests/test_gpu_%,$(TEST_SRCS))
endif
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
TEST_COMMON := $(BUILD)/obj/tests/testutil.o

.PHONY: all test ci test-gpu run deps clean install bench
# test objects are intermediates of the test binaries: keep them between builds
.SECONDARY:
all: $(BIN) $(TEST_BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(BUILD)/obj/src/main.o $(LIB)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_COMMON) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(CUNIT_LIBS) $(LIBS)

# ---------------------------------------------------------------------------
# running

# The README's test command. Unit suites (CUnit binaries) then end-to-end
# scripts; every one must pass. GPU tests inside skip with a message here.
test: all
	@bash tests/run_all.sh $(BUILD)

# What CI runs (.ci/run, after make deps): the suite, then the suite again under
# ASan + UBSan + LSan, then a short smoke of every fuzz target.
ci: test
	@$(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory fuzz-smoke FUZZ_TIME=$(or $(CI_FUZZ_TIME),20)

test-gpu: all
	@SLUICE_REQUIRE_GPU=1 bash tests/run_all.sh $(BUILD) gpu

DEMO_OUT ?= $(BUILD)/demo-out
run: $(BIN)
	@bash tests/demo_run.sh $(BIN) $(DEMO_OUT)

bench: $(BIN)
	$(BIN) bench --help

deps:
	bash .ci/deps.sh

PREFIX ?= /usr/local
install: $(BIN)
	install -D -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/sluice

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# ---- fuzzing and sanitizers (tests/fuzz) ----
# docs/FUZZING.md says what each target reads and what was found.
#   make fuzz          libFuzzer targets in $(BUILD)/fuzz (clang; the library
#                      sources they need are compiled again with the fuzz
#                      flags into $(BUILD)/fuzz/obj, never the gcc objects)
#   make fuzz-smoke    each target for FUZZ_TIME seconds over its corpus;
#                      fails on any crash, leak, timeout or sanitizer report
#                      in sluice (tests/fuzz/smoke.sh: faults inside libhdf5
#                      are triaged and listed, not failed)
#   make asan          the CPU test suite built with ASAN=1 in ASAN_BUILD and
#                      run with leak detection on; fails on any report
#                      (tests/fuzz/asan.sh; ASAN_SKIP / ASAN_NOLEAK lists)
FUZZ_CC ?= clang
FUZZ_TIME ?= 20
ASAN_BUILD ?= $(BUILD)/asan
FUZZ_SAN := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
            -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -O1 -g $(FUZZ_SAN) -fopenmp -Wall -Wextra \
               -Wno-unused-parameter -Wno-sign-compare -MMD -MP $(INCLUDES) $(DEP_CFLAGS)
FUZZ_LIB_SRCS := src/common.c src/config.c src/arch.c src/tokenizer.c src/tok_bpe.c \
                 src/prompts_text.c io/safetensors.c io/h5io.c
FUZZ_TARGETS := safetensors config tokenizer jsonl h5prompts
FUZZ_OBJS := $(FUZZ_LIB_SRCS:%.c=$(BUILD)/fuzz/obj/%.o)
FUZZ_BINS := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)
FUZZ_LIBS := $(HDF5_LIBS) $(JANSSON_LIBS) $(PCRE2_LIBS) $(UTF8PROC_LIBS) -lm -lpthread

.PHONY: fuzz fuzz-smoke asan
fuzz: $(FUZZ_BINS)

$(BUILD)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(BUILD)/fuzz/fuzz_%: $(BUILD)/fuzz/obj/tests/fuzz/fuzz_%.o $(FUZZ_OBJS)
	$(FUZZ_CC) $(FUZZ_SAN) -fopenmp -o $@ $^ $(FUZZ_LIBS)

# tests/fuzz/smoke.sh: FUZZ_TIME seconds per target; the committed corpora
# are read, never written.
fuzz-smoke: $(FUZZ_BINS)
	bash tests/fuzz/smoke.sh $(BUILD)/fuzz $(FUZZ_TIME) $(FUZZ_TARGETS)

asan:
	$(MAKE) BUILD=$(ASAN_BUILD) ASAN=1 CUDA=0 all
	bash tests/fuzz/asan.sh $(ASAN_BUILD)

-include $(shell find $(BUILD)/fuzz/obj -name '*.d' 2>/dev/null)
