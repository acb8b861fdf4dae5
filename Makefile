# Lattice developer entry points. `make test` is what CI runs (.ci/run).
#
#   make test          setup, normal build + tests, ASan/UBSan build + tests, TSan build + the
#                      threaded tests, fuzzers, arm64 cross build + tests under qemu, format check
#   make check         the quick tier for everyday work: build/ and its tests, the simulation
#                      with 50 seeds instead of 1,000, and the format check (a few minutes on a
#                      built tree)
#   make build         configure and build build/ (RelWithDebInfo)
#   make demo          setup, build, then scripts/demo.sh: a relay and two lattice-todo devices
#                      in the browser until Ctrl-C (SCRIPTED=1: the scripted scenario, no browser;
#                      CLUSTER=1: PostgreSQL, three relays of a cluster and haproxy instead)
#   make bench         build, then run build/bench/lattice-bench if it exists
#   make format        apply clang-format to every C/C++ file in the repo
#   make format-check  fail if any C/C++ file is not clang-formatted
#   make test-tsan     the relay's and the sync client's threads under ThreadSanitizer
#   make test-arm64    C API cross-built for arm64, its tests under qemu-aarch64 (docs/android.md)
#   make arm64-size    the stripped arm64 liblattice.so size of docs/benchmarks.md
#   make clean         remove the build trees (build/, build-asan/, build-tsan/, build-fuzz/,
#                      build-arm64*/)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

BUILD_DIR ?= build
ASAN_DIR  ?= build-asan
TSAN_DIR  ?= build-tsan
FUZZ_DIR  ?= build-fuzz
JOBS      ?= 2

# The sanitizer trees are Debug (asserts on) at -O1: fast enough to build and
# run, still readable stack traces. They are built with clang, which compiles them in under half
# GCC's time (the ASan tree: about 1,050 CPU-seconds against 2,200 for four fifths of it; Beast's
# WebSocket client 141 s against 392 s), while build/ keeps GCC, so both compilers see every line.
SANITIZER_COMPILERS := -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
ASAN_CMAKE_FLAGS := -DLATTICE_SANITIZE=ON -DLATTICE_BENCH=OFF -DCMAKE_BUILD_TYPE=Debug \
                    -DCMAKE_C_FLAGS_DEBUG="-O1 -g" -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
                    $(SANITIZER_COMPILERS)

export ASAN_OPTIONS  ?= halt_on_error=1:detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS ?= halt_on_error=1:print_stacktrace=1

.PHONY: all test check build build-asan test-build test-asan test-tsan test-fuzz demo bench format format-check setup clean
.PHONY: test-arm64 arm64-size

all: build

setup:
	bash scripts/setup.sh

# cmake runs on every build, not only the first: a module folder that gained
# its CMakeLists.txt since the last configure is only picked up that way
# (ninja cannot see it). An existing tree keeps its generator and cache.
build:
	@if [[ -f $(BUILD_DIR)/CMakeCache.txt ]]; then \
	  cmake -S . -B $(BUILD_DIR); \
	else \
	  cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo; \
	fi
	cmake --build $(BUILD_DIR) -j $(JOBS)

build-asan:
	@if [[ -f $(ASAN_DIR)/CMakeCache.txt ]]; then \
	  cmake -S . -B $(ASAN_DIR) -DLATTICE_SANITIZE=ON; \
	else \
	  cmake -S . -B $(ASAN_DIR) -G Ninja $(ASAN_CMAKE_FLAGS); \
	fi
	cmake --build $(ASAN_DIR) -j $(JOBS)

test-build: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)

check: build
	LATTICE_SIM_SEEDS=50 ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)
	$(MAKE) --no-print-directory format-check

test-asan: build-asan
	ctest --test-dir $(ASAN_DIR) --output-on-failure -j $(JOBS)

# Sequential on purpose: the trees would fight over 2 cores. Each stage's time and the disk
# space left after it are printed, so that what makes CI slow or full is measured, not guessed.
# PRUNE_TREES=1 (.ci/run sets it) removes each stage's build tree once its tests have passed:
# the five trees together take several GiB, more than a CI machine may have free (a run failed
# on "No space left on device" linking the ASan tree); one tree at a time fits.
TEST_STAGES := setup test-build test-asan test-tsan test-fuzz test-arm64 format-check
PRUNE_TREES ?= 0

test:
	@started=$$(date +%s); \
	for stage in $(TEST_STAGES); do \
	  at=$$(date +%s); \
	  $(MAKE) --no-print-directory $$stage; \
	  case $$stage in \
	    test-build) tree=$(BUILD_DIR) ;; test-asan) tree=$(ASAN_DIR) ;; \
	    test-tsan) tree=$(TSAN_DIR) ;; test-fuzz) tree=$(FUZZ_DIR) ;; \
	    test-arm64) tree=$(ARM64_DIR) ;; *) tree= ;; \
	  esac; \
	  size=; \
	  if [[ -n "$$tree" && -d "$$tree" ]]; then size=", its tree $$(du -sh "$$tree" | cut -f1)"; fi; \
	  if [[ "$(PRUNE_TREES)" == 1 && -n "$$tree" ]]; then rm -rf "$$tree"; size="$$size (removed)"; fi; \
	  echo "make test: $$stage took $$(( $$(date +%s) - at )) s$$size;" \
	       "$$(df -h --output=avail . | tail -1 | tr -d ' ') free"; \
	done; \
	echo "make test: every stage passed in $$(( $$(date +%s) - started )) s"

# ThreadSanitizer over what runs on several threads: the relay (its disk thread; the relay
# processes of the integration tests are built in this tree too), its TLS stream, and the
# device's SyncClient (a thread of its own). Only those tests are built. A race halts the process
# with status 66, which fails the test. sync_integration_tests leaves out its two volume cases
# (100,000 rows in one transaction, 10,000 transactions): minutes under TSan, no new interleaving,
# and the cluster's relays killed under load (the PostgreSQL outage runs the same paths); and
# stops PostgreSQL twice instead of five times.
TSAN_TARGETS := lean_tls_tests relay_group_commit_tests relay_integration_tests \
                sync_integration_tests
test-tsan:
	@if [[ ! -f $(TSAN_DIR)/CMakeCache.txt ]]; then \
	  cmake -S . -B $(TSAN_DIR) -G Ninja -DLATTICE_TSAN=ON -DLATTICE_BENCH=OFF \
	    -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS_DEBUG="-O1 -g" -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
	    $(SANITIZER_COMPILERS); \
	fi
	cmake --build $(TSAN_DIR) -j $(JOBS) --target $(TSAN_TARGETS)
	TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1 \
	  ctest --test-dir $(TSAN_DIR) --output-on-failure -j $(JOBS) \
	    -R '^(lean_tls_tests|relay_group_commit_tests|relay_integration_tests)$$'
	cd $(TSAN_DIR)/tests/integration && TSAN_OPTIONS=halt_on_error=1:exitcode=66 \
	  LATTICE_PG_OUTAGES=2 ./sync_integration_tests \
	    --test-case-exclude='*100?000 rows*,*10?000 transactions*,*SIGKILLed one after another*'

# The decoders of untrusted bytes under libFuzzer (clang), briefly: the fuzz tree instruments
# every target, so only the fuzz executables are built in it.
FUZZ_TARGETS := changeset_fuzz changeset_fuzz_seeds frame_fuzz frame_fuzz_seeds hello_fuzz \
                hello_fuzz_seeds import_fuzz import_fuzz_seeds
test-fuzz:
	@if [[ ! -f $(FUZZ_DIR)/CMakeCache.txt ]]; then \
	  cmake -S . -B $(FUZZ_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DLATTICE_FUZZ=ON; \
	fi
	cmake --build $(FUZZ_DIR) -j $(JOBS) --target $(FUZZ_TARGETS)
	ctest --test-dir $(FUZZ_DIR) --output-on-failure -j $(JOBS) -L fuzz

# The C API cross-built for arm64 with Debian's cross compiler, its tests run under qemu-aarch64
# (cmake/toolchains/aarch64-linux-gnu.cmake): our stand-in for an Android device. Only what
# those tests need is built; the symbol check fails on C library calls Android lacks.
ARM64_DIR     ?= build-arm64
ARM64_TARGETS := lattice_c capi_test lattice-relay crdt_tests transport_tests
ARM64_TESTS   := ^(crdt_tests|transport_tests|capi_test|capi_exports)$$
ifeq ($(LATTICE_SKIP_ARM64),1)
test-arm64:
	@echo "test-arm64: skipped (LATTICE_SKIP_ARM64=1: scripts/setup.sh installed no arm64 toolchain)"
else
test-arm64:
	@if [[ -f $(ARM64_DIR)/CMakeCache.txt ]]; then \
	  cmake -S . -B $(ARM64_DIR) >/dev/null; \
	else \
	  cmake -S . -B $(ARM64_DIR) -G Ninja -DCMAKE_BUILD_TYPE=MinSizeRel -DLATTICE_BENCH=OFF \
	    -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake; \
	fi
	cmake --build $(ARM64_DIR) -j $(JOBS) --target $(ARM64_TARGETS)
	bash scripts/check-android-symbols.sh $(ARM64_DIR)/engine/liblattice.so
	ctest --test-dir $(ARM64_DIR) --output-on-failure -R '$(ARM64_TESTS)'
endif

arm64-size:
	bash bench/arm64_size.sh

demo: setup
	$(MAKE) --no-print-directory build
	LATTICE_BUILD_DIR=$(BUILD_DIR) DEMO_CLUSTER=$(if $(CLUSTER),1,0) \
	  bash scripts/demo.sh $(if $(SCRIPTED),--scripted)

bench: build
	@if [[ -x $(BUILD_DIR)/bench/lattice-bench ]]; then \
	  $(BUILD_DIR)/bench/lattice-bench; \
	else \
	  echo "bench: $(BUILD_DIR)/bench/lattice-bench not built (no bench/CMakeLists.txt yet?)"; \
	fi

format:
	git ls-files -co --exclude-standard -z -- '*.hpp' '*.cpp' '*.h' '*.c' \
	  | xargs -0 -r clang-format -i

format-check:
	bash scripts/format-check.sh

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(TSAN_DIR) $(FUZZ_DIR) $(ARM64_DIR) build-arm64-size
