# imgfs — one build for everything.
#   make            build imgfs (and imgctl when present)
#   make test       install what is missing, then unit and integration tests, plain and under ASan/UBSan
#   make run        install what is missing, build, mount the bundled examples and show them
#   make bench      imgfs against the raw file and qemu-storage-daemon; imgctl against qemu-img
#   make asan       sanitizer build in build-asan/ (same as SANITIZE=1)
#   make install    PREFIX=/usr/local DESTDIR=

CC      ?= cc
PREFIX  ?= /usr/local
DESTDIR ?=

PKGS    := fuse3 zlib libzstd libcrypto
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -Wall -Wextra -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I. \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lfuse3 -lz -lzstd -lcrypto) -lpthread

ifeq ($(SANITIZE),1)
BUILD   := build-asan
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
BUILD   := build
endif

CORE_SRC  := $(wildcard core/*.c) $(wildcard formats/*.c) $(wildcard formats/*/*.c)
FUSE_SRC  := $(wildcard fuse/*.c)
CTL_SRC   := $(wildcard ctl/*.c)
UNIT_SRC  := $(wildcard tests/unit/*.c)
TOOL_SRC  := $(wildcard tests/tools/*.c)

CORE_OBJ  := $(CORE_SRC:%.c=$(BUILD)/%.o)
FUSE_OBJ  := $(FUSE_SRC:%.c=$(BUILD)/%.o)
CTL_OBJ   := $(CTL_SRC:%.c=$(BUILD)/%.o)
UNIT_OBJ  := $(UNIT_SRC:%.c=$(BUILD)/%.o)
TOOLS     := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tools/%)

PROGS := $(BUILD)/imgfs $(if $(CTL_SRC),$(BUILD)/imgctl)

.PHONY: all asan test unit unit-asan integration integration-asan run bench install uninstall clean deps fuzz
all: $(PROGS) $(TOOLS)

$(BUILD)/libimgcore.a: $(CORE_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/imgfs: $(FUSE_OBJ) $(BUILD)/libimgcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/imgctl: $(CTL_OBJ) $(BUILD)/libimgcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/unit-tests: $(UNIT_OBJ) $(BUILD)/libimgcore.a
	$(CC) $(LDFLAGS) -o $@ $^ -lcriterion $(LDLIBS)

$(BUILD)/tools/%: tests/tools/%.c $(BUILD)/libimgcore.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

-include $(wildcard $(BUILD)/*/*.d $(BUILD)/*/*/*.d $(BUILD)/*/*/*/*.d)

asan:
	$(MAKE) SANITIZE=1 all $(BUILD:build=build-asan)/unit-tests

deps:
	@scripts/install-deps

unit: $(BUILD)/unit-tests
	$(BUILD)/unit-tests --jobs 2

# Unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
unit-asan:
	$(MAKE) SANITIZE=1 build-asan/unit-tests
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    build-asan/unit-tests --jobs 2

integration: all
	tests/integration/run-all.sh $(BUILD)

# The same mounts and imgctl runs with the daemon and imgctl built under
# AddressSanitizer + UndefinedBehaviorSanitizer, leak checking on: a report
# in a daemon log or a sanitizer exit fails the case.
integration-asan:
	$(MAKE) SANITIZE=1 all
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    tests/integration/run-all.sh build-asan

test: deps
	$(MAKE) all $(BUILD)/unit-tests
	$(MAKE) unit
	$(MAKE) unit-asan
	$(MAKE) integration
	$(MAKE) integration-asan

run: deps
	$(MAKE) all
	scripts/run-examples $(BUILD)

# imgfs against the raw file and qemu-storage-daemon, then imgctl against
# qemu-img (with the 50-kill crash test of convert and commit).
bench: deps
	$(MAKE) all
	scripts/bench $(BUILD)
	CRASH_RUNS=$${CRASH_RUNS:-50} scripts/bench-imgctl $(BUILD)

# libFuzzer targets (clang) built into build-fuzz/ by tests/fuzz/fuzz.mk,
# seeded and run FUZZ_SECONDS each by scripts/fuzz; what they find lands in
# tests/fuzz/pending/ (still crashes) or tests/fuzz/regressions/ (replayed
# by `make test`).
FUZZ_SECONDS ?= 120
fuzz:
	scripts/install-deps fuzz
	$(MAKE) -f tests/fuzz/fuzz.mk
	scripts/fuzz --seeds
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz --run

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(PROGS) $(DESTDIR)$(PREFIX)/bin/

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/imgfs $(DESTDIR)$(PREFIX)/bin/imgctl

clean:
	rm -rf build build-asan build-fuzz
