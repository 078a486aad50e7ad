# libFuzzer targets, built with clang into build-fuzz/ (`make fuzz` runs
# this, then scripts/fuzz).  The core and the drivers are compiled here from
# source with the fuzzer's coverage instrumentation: the gcc-built
# libimgcore.a has none, and libFuzzer would fly blind.

FUZZ_CC     ?= clang
FUZZ_BUILD  ?= build-fuzz
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS := -O1 -g -fno-omit-frame-pointer -std=gnu11 -Wall -Wextra \
               -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I. $(FUZZ_SAN)
FUZZ_LIBS   := $(shell pkg-config --libs zlib libzstd libcrypto 2>/dev/null || \
                 echo -lz -lzstd -lcrypto) -lpthread

CORE_SRC    := $(wildcard core/*.c) $(wildcard formats/*.c) $(wildcard formats/*/*.c)
CORE_OBJ    := $(CORE_SRC:%.c=$(FUZZ_BUILD)/obj/%.o)
HARNESS_OBJ := $(FUZZ_BUILD)/obj/tests/fuzz/exercise.o
TARGETS     := $(patsubst tests/fuzz/fuzz_%.c,$(FUZZ_BUILD)/fuzz_%,$(wildcard tests/fuzz/fuzz_*.c))

.PHONY: all
# Objects are shared by every target: keep them between runs.
.SECONDARY: $(CORE_OBJ) $(HARNESS_OBJ)
all: $(TARGETS)

# The code under test: coverage edges only, libFuzzer's main() is linked
# once per target below.
$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

# The harness is not under test: without coverage and comparison hooks, so
# that libFuzzer does not learn its private folder's name from the checks.
$(HARNESS_OBJ): tests/fuzz/exercise.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c -o $@ $<

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_target.h $(HARNESS_OBJ) $(CORE_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(HARNESS_OBJ) $(CORE_OBJ) $(FUZZ_LIBS)

-include $(wildcard $(FUZZ_BUILD)/obj/*/*.d $(FUZZ_BUILD)/obj/*/*/*.d)
