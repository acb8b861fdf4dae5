#!/usr/bin/env bash
# The size of the C API's shared library on arm64, as docs/benchmarks.md reports it:
# liblattice.so cross-built for aarch64 with -Os and link-time optimization, then stripped.
# SQLite and OpenSSL are not counted: they stay shared libraries the application provides
# (liblattice.so lists them as NEEDED, printed below). Goal: at most 1.5 MiB.
#
#   bench/arm64_size.sh            # builds build-arm64-size/ (lattice_c only) and reports
#   ARM64_SIZE_DIR=dir JOBS=n bench/arm64_size.sh
#
# Needs the arm64 toolchain from scripts/setup.sh. Exit status 0 whether or not the goal is
# met: this measures, it does not gate.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${ARM64_SIZE_DIR:-build-arm64-size}"
jobs="${JOBS:-2}"
triple=aarch64-linux-gnu
goal=$((3 * 1024 * 1024 / 2))   # 1.5 MiB

if [[ ! -f "${dir}/CMakeCache.txt" ]]; then
  # -Os everywhere, LTO, and unreferenced sections dropped at link time. Hidden visibility
  # and the version script (only lattice_* exported) are the library's own settings.
  cmake -S . -B "${dir}" -G Ninja \
    -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/${triple}.cmake \
    -DCMAKE_BUILD_TYPE=MinSizeRel \
    -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=ON \
    -DCMAKE_C_FLAGS="-ffunction-sections -fdata-sections" \
    -DCMAKE_CXX_FLAGS="-ffunction-sections -fdata-sections" \
    -DCMAKE_SHARED_LINKER_FLAGS="-Wl,--gc-sections" \
    -DLATTICE_BENCH=OFF >/dev/null
fi
cmake --build "${dir}" -j "${jobs}" --target lattice_c

lib="$(readlink -f "${dir}/engine/liblattice.so")"
stripped="${dir}/liblattice.stripped.so"
${triple}-strip --strip-all -o "${stripped}" "${lib}"
bytes="$(stat -c %s "${stripped}")"

echo
if commit="$(git rev-parse --short HEAD 2>/dev/null)"; then
  git diff --quiet HEAD -- . || commit+=" (with uncommitted changes)"
else
  commit="unknown (not a git checkout)"
fi
echo "commit:   ${commit}"
echo "compiler: $(${triple}-g++ --version | head -1)"
echo "library:  ${lib}"
echo "NEEDED:   $(${triple}-readelf -d "${lib}" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
echo "exported: $(${triple}-nm -D --defined-only "${stripped}" | grep -c ' T lattice_') lattice_* functions"
awk -v b="${bytes}" -v g="${goal}" 'BEGIN {
  printf "stripped: %d bytes (%.2f MiB); goal %d bytes (1.5 MiB): %s\n",
         b, b / 1048576, g, (b <= g ? "met" : "MISSED")
}'

echo
echo "sections (stripped):"
${triple}-size -A "${stripped}" | awk '$2 ~ /^[0-9]+$/ && $2 > 4096 { printf "  %-20s %9d\n", $1, $2 }'

# What the code is, from the unstripped library's symbol table (LTO keeps local symbols):
# with --size-sort, nm prints "SIZE TYPE NAME"; text symbols summed by outermost namespace.
echo
echo "code by origin (text symbols of the unstripped library, bytes):"
${triple}-nm -C --size-sort --radix=d "${lib}" | awk '$2 ~ /^[tTwW]$/' |
  awk '{
    size = $1 + 0; name = $0; sub(/^[0-9]+ [a-zA-Z] /, "", name)
    # A template function demangles with its return type first: drop a simple one.
    sub(/^((void|bool|int|long|unsigned|char|auto|double|const) )+/, "", name)
    origin = "other"
    if (name ~ /^lattice_/) origin = "lattice C API"
    else if (name ~ /^lattice::/) origin = "lattice::"
    else if (name ~ /^boost::beast/) origin = "boost::beast"
    else if (name ~ /^boost::asio/) origin = "boost::asio"
    else if (name ~ /^boost::/) origin = "boost (other)"
    else if (name ~ /^msgpack/) origin = "msgpack"
    else if (name ~ /^std::|^__gnu_cxx::/) origin = "std:: (templates)"
    total[origin] += size; all += size
  } END {
    for (o in total) printf "%d\t%s\t%.1f\n", total[o], o, 100 * total[o] / all
  }' | sort -n -r | awk -F'\t' '{ printf "  %-20s %9d  %5.1f%%\n", $2, $1, $3 }'

echo
echo "largest 15 functions:"
${triple}-nm -C --size-sort --radix=d "${lib}" | awk '$2 ~ /^[tTwW]$/' | tail -15 |
  awk '{ size = $1 + 0; $1 = ""; $2 = ""; sub(/^ +/, ""); printf "  %8d  %.110s\n", size, $0 }'
