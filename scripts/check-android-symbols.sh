#!/usr/bin/env bash
# Fails when a cross-built arm64 liblattice.so needs something from the C library that Android's
# bionic lacks (docs/android.md, "The C library check").
#
#   scripts/check-android-symbols.sh build-arm64/engine/liblattice.so
#
# Every undefined dynamic symbol is classified by its symbol version:
#   GLIBC_PRIVATE               fails
#   GLIBC_*                     must be in ALLOWED below: a bionic function with the API level
#                               it appeared in (above MIN_API fails), or glibc header plumbing
#                               that the NDK's headers turn into bionic's own names
#   GLIBCXX_*, CXXABI_*, GCC_*  the C++ runtime and unwinder: libc++/libunwind on Android
#   OPENSSL_*                   the app's OpenSSL
#   none, sqlite3_*             the app's SQLite (compiled from its amalgamation on Android)
# Anything else fails. A new C library call is added to ALLOWED only after looking it up in
# bionic's libc/libc.map.txt (the "introduced=" comments give the API level).
set -euo pipefail

lib="${1:?usage: check-android-symbols.sh LIBRARY.so}"
nm="${NM:-aarch64-linux-gnu-nm}"
min_api="${LATTICE_ANDROID_MIN_API:-24}"

# Each line: the API level bionic has had these functions since (arm64 exists from API 21, so
# 21 means "always"; levels from bionic's libc.map.txt), or a word for the names that our
# source never calls itself, explained above the line.
ALLOWED="
21 __cxa_atexit __cxa_finalize abort atoi close connect epoll_create epoll_create1 epoll_ctl
21 epoll_wait eventfd fcntl free freeaddrinfo getaddrinfo getsockopt gettimeofday gmtime_r
21 if_indextoname if_nametoindex inet_ntop inet_pton ioctl isalnum isalpha isspace malloc memchr
21 memcmp memcpy memmove memset pause pipe poll pthread_cond_broadcast pthread_cond_destroy
21 pthread_cond_init pthread_cond_signal pthread_cond_wait pthread_condattr_destroy
21 pthread_condattr_init pthread_condattr_setclock pthread_create pthread_detach
21 pthread_getspecific pthread_join pthread_key_create pthread_key_delete pthread_mutex_destroy
21 pthread_mutex_init pthread_mutex_lock pthread_mutex_unlock pthread_once pthread_self
21 pthread_setspecific pthread_sigmask recv recvmsg sendmsg setsockopt shutdown sigfillset
21 snprintf socket sprintf strcat strchr strcmp strerror_r strlen strncpy strnlen strtod strtoul
21 timerfd_create timerfd_settime tolower toupper vsnprintf write
# stdio and errno text, for import and export files (engine/import_export/)
21 fclose ferror fflush fopen fputs fread fseek fwrite remove rename strerror
23 __cxa_thread_atexit_impl
# Boost.Beast's file_body, which the snapshot download writes its file with
# (transport/snapshot_download.cpp): open and fstat since always, posix_fadvise since 21
21 fstat open posix_fadvise
# The encrypted VFS's key rotation reads and writes its journal and pages at offsets
# (storage/encrypted_vfs.cpp): in bionic's LIBC set from the start
21 pread pwrite
# SQLite's own calls, when it is compiled in from an amalgamation (-DLATTICE_SQLITE_AMALGAMATION)
21 access fchmod fchown fstat64 fsync ftruncate64 getcwd getenv geteuid getpid localtime
21 lstat64 mkdir mmap64 mremap munmap nanosleep open64 pread64 pthread_mutex_trylock
21 pthread_mutexattr_destroy pthread_mutexattr_init pthread_mutexattr_settype pwrite64 read
21 readlink realloc rmdir stat64 strcspn strncmp strrchr strspn sysconf time unlink utimes
# glibc's headers spell errno and libstdc++'s single-thread shortcut this way; bionic's
# headers spell them __errno and (libc++) not at all.
header __errno_location __libc_single_threaded
# glibc's <fcntl.h> renames fcntl to fcntl64 for large-file builds; bionic's 64-bit headers
# keep the name fcntl (21), where off_t is 64-bit already.
header fcntl64
# Reached only through headers that ask the platform first: Boost.Asio calls aligned_alloc when
# the C++ library declares std::aligned_alloc, libstdc++'s condition_variable calls
# pthread_cond_clockwait when glibc has it. On Android, libc++ decides both by the API level
# (bionic has them from 28 and 30), so a build for API 24 takes the fallbacks.
header aligned_alloc pthread_cond_clockwait
# GCC's libgcc initialises its outline atomics (-moutline-atomics, the aarch64 default) with
# it; clang's compiler-rt uses getauxval, which bionic has (API 18).
toolchain __getauxval
"

declare -A api=()
while read -r level names; do
  [[ -z "${level}" || "${level}" == "#" ]] && continue
  for name in ${names}; do
    api["${name}"]="${level}"
  done
done <<<"${ALLOWED}"

failures=0
checked=0
fail() {
  echo "check-android-symbols: $*" >&2
  failures=$((failures + 1))
}

symbols="$("${nm}" -D --undefined-only --with-symbol-versions "${lib}")"
while read -r kind symbol; do
  [[ -z "${symbol:-}" ]] && continue
  checked=$((checked + 1))
  name="${symbol%%@*}"
  version=""
  [[ "${symbol}" == *@* ]] && version="${symbol##*@}"
  case "${version}" in
    GLIBC_PRIVATE)
      fail "${name}: glibc-private (${version})" ;;
    GLIBC_*)
      level="${api[${name}]:-}"
      if [[ -z "${level}" ]]; then
        fail "${name}@${version}: not in the allowlist; look it up in bionic's libc.map.txt" \
             "and add it to ALLOWED with the API level it appeared in"
      elif [[ "${level}" =~ ^[0-9]+$ && "${level}" -gt "${min_api}" ]]; then
        fail "${name}: bionic has it only since API ${level}, above the minimum ${min_api}"
      fi ;;
    GLIBCXX_* | CXXABI_* | GCC_*) ;;
    OPENSSL_*) ;;
    "")
      if [[ "${name}" != sqlite3_* && "${kind}" != w ]]; then
        fail "${name}: unversioned and not SQLite's; where does it come from?"
      fi ;;
    *)
      fail "${name}@${version}: from an unexpected library" ;;
  esac
done <<<"${symbols}"

if [[ "${failures}" -gt 0 ]]; then
  echo "check-android-symbols: ${failures} of ${checked} undefined symbols of ${lib} fail" >&2
  exit 1
fi
echo "check-android-symbols: ${checked} undefined symbols of ${lib}: all available on Android" \
     "API ${min_api} or provided by the app"
