# Cross build for 64-bit ARM Linux with Debian's cross compiler (g++-aarch64-linux-gnu) and
# Debian's arm64 development packages installed side by side with the host's (multiarch):
#
#   cmake -S . -B build-arm64 -G Ninja \
#     -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
#
# scripts/setup.sh installs what it needs; `make test-arm64` uses it. Our stand-in for an
# Android device (docs/android.md): ctest runs every test through qemu-aarch64.
#
# Where things come from:
# - compiled libraries (SQLite, OpenSSL): the arm64 packages, /usr/lib/aarch64-linux-gnu,
#   with their arch-specific headers in /usr/include/aarch64-linux-gnu (the cross compiler
#   searches that before /usr/include);
# - header-only libraries (Boost.Beast/Asio, msgpack-cxx, doctest): the host's /usr/include
#   and the host's CMake package files, which only name include directories. Installing
#   their arm64 copies would gain nothing and would meet the Boost 1.74/1.81 conflict that
#   scripts/setup.sh works around.
#
# There is no separate sysroot: Debian's multiarch layout is the sysroot ("/"), and a
# library is only ever taken from an aarch64-linux-gnu directory.

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(LATTICE_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${LATTICE_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${LATTICE_CROSS_TRIPLE}-g++)
# The matching binutils, so that -flto's archives and `strip` understand arm64 objects.
find_program(CMAKE_AR ${LATTICE_CROSS_TRIPLE}-gcc-ar REQUIRED)
find_program(CMAKE_RANLIB ${LATTICE_CROSS_TRIPLE}-gcc-ranlib REQUIRED)
find_program(CMAKE_STRIP ${LATTICE_CROSS_TRIPLE}-strip REQUIRED)
find_program(CMAKE_NM ${LATTICE_CROSS_TRIPLE}-nm REQUIRED)
find_program(CMAKE_OBJDUMP ${LATTICE_CROSS_TRIPLE}-objdump REQUIRED)
find_program(CMAKE_READELF ${LATTICE_CROSS_TRIPLE}-readelf REQUIRED)

# Libraries only from the arm64 directories: /usr/aarch64-linux-gnu (the cross toolchain's
# own libc and libstdc++) and /usr/lib/aarch64-linux-gnu (multiarch). Never /usr/lib/x86_64-*.
set(CMAKE_FIND_ROOT_PATH /usr/${LATTICE_CROSS_TRIPLE} /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)   # build tools run on the host
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)    # host headers for the header-only libraries
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(CMAKE_LIBRARY_PATH /usr/lib/${LATTICE_CROSS_TRIPLE} /lib/${LATTICE_CROSS_TRIPLE})
# With CMAKE_LIBRARY_ARCHITECTURE set, find_library() looks in <prefix>/lib/aarch64-linux-gnu
# before <prefix>/lib; and the host's own library directories are never searched, so a
# missing arm64 package fails the configure instead of linking an x86-64 library.
set(CMAKE_SYSTEM_IGNORE_PATH /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu)

# The header-only packages' CMake files live under the host's library directory; they name
# only /usr/include, which is right for any architecture.
foreach(package_dir IN ITEMS /usr/lib/x86_64-linux-gnu/cmake /usr/lib/cmake /usr/share/cmake)
  if(IS_DIRECTORY ${package_dir})
    list(APPEND CMAKE_PREFIX_PATH ${package_dir})
  endif()
endforeach()

# FindOpenSSL consults pkg-config: point it at the arm64 .pc files only.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/${LATTICE_CROSS_TRIPLE}/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")

# ctest (and any add_test() command naming a target) runs arm64 executables through qemu.
# -L: the cross toolchain's dynamic loader, libc and libstdc++ (/usr/aarch64-linux-gnu/lib);
# LD_LIBRARY_PATH adds the multiarch directory for the arm64 libsqlite3 and libssl.
find_program(LATTICE_QEMU_AARCH64 qemu-aarch64)
if(LATTICE_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR
      ${LATTICE_QEMU_AARCH64} -L /usr/${LATTICE_CROSS_TRIPLE}
      -E LD_LIBRARY_PATH=/usr/${LATTICE_CROSS_TRIPLE}/lib:/usr/lib/${LATTICE_CROSS_TRIPLE}:/lib/${LATTICE_CROSS_TRIPLE})
else()
  message(WARNING "qemu-aarch64 not found (Debian package qemu-user): the arm64 build works, "
                  "but ctest cannot run its tests")
endif()
