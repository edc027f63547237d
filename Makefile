# Thin wrapper around CMake/CTest. `make` builds everything into build/ (tools in build/bin/),
# `make test` builds and runs every test, `make demo` builds and runs the main job;
# `make fuzz` and `make test-sanitize` build their own trees (build-fuzz/, build-sanitize/).
# `make install PREFIX=DIR` (default /usr/local) builds, then installs the tools into DIR/bin, the
# HDF5 zstd plugin into DIR/lib/pmamba/plugin and the docs into DIR/share/doc/pmamba.
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=

FUZZ_DIR ?= build-fuzz
FUZZ_SECONDS ?= 60
SANITIZE_DIR ?= build-sanitize
PREFIX ?= /usr/local

.PHONY: all deps configure build test demo bench clean fuzz fuzz-raw fuzz-build test-sanitize install

all: build

deps:
	@scripts/install-deps.sh

$(BUILD_DIR)/CMakeCache.txt:
	@$(MAKE) --no-print-directory deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)

configure: $(BUILD_DIR)/CMakeCache.txt

build: deps configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

install: build
	cmake --install $(BUILD_DIR) --prefix $(PREFIX)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 1500

demo: build
	scripts/demo.sh $(BUILD_DIR)

bench: build
	scripts/bench.sh $(BUILD_DIR)

# libFuzzer targets under ASan + UBSan (clang), each run FUZZ_SECONDS; fails on any finding.
fuzz-build:
	@scripts/install-deps.sh --fuzz
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPMAMBA_FUZZ=ON \
	    -DPMAMBA_BUILD_TESTS=OFF $(CMAKE_ARGS)
	cmake --build $(FUZZ_DIR) -j $(JOBS) --target pmamba_fuzzers

fuzz: fuzz-build
	scripts/fuzz.sh $(FUZZ_DIR) $(FUZZ_SECONDS)

fuzz-raw: fuzz-build
	scripts/fuzz.sh $(FUZZ_DIR) $(FUZZ_SECONDS) --raw

# The unit and CLI tests built and run under ASan + UBSan (a separate build directory).
test-sanitize:
	@$(MAKE) --no-print-directory deps
	cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPMAMBA_SANITIZE=ON $(CMAKE_ARGS)
	cmake --build $(SANITIZE_DIR) -j $(JOBS)
	scripts/test-sanitize.sh $(SANITIZE_DIR) $(JOBS)

clean:
	rm -rf $(BUILD_DIR) $(FUZZ_DIR) $(SANITIZE_DIR)
