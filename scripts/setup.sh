#!/usr/bin/env bash
# Installs the Debian packages Lattice needs to build and test.
#
# Idempotent: a package is installed only when dpkg says it is missing, and
# `apt-get update` runs only if something has to be installed. On a machine that
# already has everything this is a fast no-op. Targets Debian 12 (bookworm).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
  SUDO="sudo"
fi

# Everything except libmsgpack-cxx-dev, which needs the Boost shim below.
PACKAGES=(
  build-essential g++ cmake ninja-build
  clang clang-14 libclang-rt-14-dev clang-format
  libsqlite3-dev sqlite3
  libboost1.81-dev
  libboost-json1.81-dev  # Boost.JSON, which imports read JSON with (engine/import_export/);
                         # compiled from its sources in one file, so nothing links its library
  libssl-dev openssl
  doctest-dev
  python3
  curl          # scripts/demo.sh talks to the demo app's HTTP API
  chromium      # the browser test (tests/browser), driven by playwright-core
  openjdk-17-jdk-headless  # the Java binding (bindings/java): javac, the JNI headers, java
  testssl.sh    # tests/relay/tls_scan.sh: the relay's TLS scanned in make test
  libpq-dev     # the relay cluster's log in PostgreSQL (relay/cluster_log.*), through libpq
  postgresql-15 # its tests run a real server: initdb and pg_ctl in a temporary directory
  haproxy       # in front of a cluster's relays (deploy/haproxy.cfg), tested as shipped
)

# `pkg` means the native (or Architecture: all) package, `pkg:arm64` the arm64 one. With
# the arm64 architecture added, dpkg-query lists one line per installed architecture.
is_installed() {
  local arch_re
  if [[ "$1" == *:* ]]; then
    arch_re="${1##*:}"
  else
    arch_re="($(dpkg --print-architecture)|all)"
  fi
  local status
  status="$(dpkg-query -W -f='${Architecture} ${Status}\n' "$1" 2>/dev/null || true)"
  grep -qE "^${arch_re} install ok installed$" <<<"${status}"
}

apt_updated=0
apt_install() {
  if [[ "${apt_updated}" -eq 0 ]]; then
    ${SUDO} apt-get update -q
    apt_updated=1
  fi
  ${SUDO} apt-get install -y -q "$@"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  is_installed "${pkg}" || missing+=("${pkg}")
done
if [[ "${#missing[@]}" -gt 0 ]]; then
  echo "setup: installing ${missing[*]}"
  apt_install "${missing[@]}"
fi

# libmsgpack-cxx-dev (header-only) Depends on the unversioned `libboost-dev`.
# On Debian 12 that package means Boost 1.74 (libboost1.74-dev), which
# Conflicts with the libboost1.81-dev we build against, so apt would either
# refuse or swap our Boost out. msgpack only needs *some* Boost headers, so we
# install a tiny local package that Provides libboost-dev and Depends on
# libboost1.81-dev; with it installed, apt sees libmsgpack-cxx-dev's dependency
# as satisfied and leaves Boost 1.81 alone.
if ! is_installed libmsgpack-cxx-dev; then
  if ! is_installed lattice-boost-dev-provider; then
    echo "setup: installing lattice-boost-dev-provider (Boost 1.81 shim for libmsgpack-cxx-dev)"
    shim_dir="$(mktemp -d)"
    trap 'rm -rf "${shim_dir}"' EXIT
    mkdir -p "${shim_dir}/pkg/DEBIAN"
    cat >"${shim_dir}/pkg/DEBIAN/control" <<'EOF'
Package: lattice-boost-dev-provider
Version: 1.81
Section: libdevel
Priority: optional
Architecture: all
Maintainer: Lattice developers <dev@lattice.invalid>
Depends: libboost1.81-dev
Provides: libboost-dev
Description: lets libmsgpack-cxx-dev use Boost 1.81
 libmsgpack-cxx-dev depends on libboost-dev, which on Debian 12 pulls
 Boost 1.74 and conflicts with libboost1.81-dev. This empty package
 provides libboost-dev on top of libboost1.81-dev instead.
EOF
    dpkg-deb --root-owner-group --build "${shim_dir}/pkg" \
      "${shim_dir}/lattice-boost-dev-provider_1.81_all.deb" >/dev/null
    # libboost1.81-dev was installed above, so the shim's dependency holds.
    ${SUDO} dpkg -i "${shim_dir}/lattice-boost-dev-provider_1.81_all.deb"
  fi
  echo "setup: installing libmsgpack-cxx-dev"
  apt_install libmsgpack-cxx-dev
fi

# --- arm64 cross build (make test-arm64; docs/android.md) --------------------
# The cross compiler, qemu-user to run the arm64 tests, and the arm64 builds of the two
# libraries that are compiled code (SQLite, OpenSSL) from Debian's multiarch archive.
# Boost, msgpack-cxx and doctest are header-only and come from the host's /usr/include
# (cmake/toolchains/aarch64-linux-gnu.cmake), so no arm64 copies: libboost1.81-dev:arm64
# would drag in a lot and meet the Boost 1.74/1.81 conflict described above.
# qemu-user-binfmt is not needed: CMake runs the tests through qemu-aarch64 explicitly.
# Set LATTICE_SKIP_ARM64=1 to leave all this out.
if [[ "${LATTICE_SKIP_ARM64:-0}" != "1" ]]; then
  foreign_archs=" $(dpkg --print-foreign-architectures | tr '\n' ' ') "
  if [[ "${foreign_archs}" != *" arm64 "* ]]; then
    echo "setup: adding the arm64 architecture (dpkg multiarch)"
    ${SUDO} dpkg --add-architecture arm64
    apt_updated=0   # the package lists have no arm64 entries yet
  fi
  ARM64_PACKAGES=(g++-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user
                  libsqlite3-dev:arm64 libssl-dev:arm64)
  arm64_missing=()
  for pkg in "${ARM64_PACKAGES[@]}"; do
    is_installed "${pkg}" || arm64_missing+=("${pkg}")
  done
  if [[ "${#arm64_missing[@]}" -gt 0 ]]; then
    echo "setup: installing ${arm64_missing[*]}"
    apt_install "${arm64_missing[@]}"
  fi
fi

# The browser test's npm packages (playwright-core, pinned by tests/browser/package-lock.json).
# Node.js and npm usually come with the machine; Debian's packages otherwise.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup: installing nodejs npm"
  apt_install nodejs npm
fi
browser_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/browser" && pwd)"
if [[ ! -f "${browser_dir}/node_modules/.package-lock.json" ||
      "${browser_dir}/package-lock.json" -nt "${browser_dir}/node_modules/.package-lock.json" ]]; then
  echo "setup: npm ci in tests/browser"
  (cd "${browser_dir}" && npm ci --no-audit --no-fund)
fi

echo "setup: all packages present"
