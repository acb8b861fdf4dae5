# SQLite compiled from an amalgamation the application provides, instead of the system's
# (find_package(SQLite3)). For Android, whose NDK exposes no SQLite to native code
# (docs/android.md):
#
#   -DLATTICE_SQLITE_AMALGAMATION=/path/to/sqlite3.c      (sqlite3.h beside it)
#
# Defines the static library lattice_sqlite3 and the name the modules link, SQLite::SQLite3.
# Included by the root CMakeLists.txt when the option is set.

if(NOT EXISTS "${LATTICE_SQLITE_AMALGAMATION}")
  message(FATAL_ERROR "LATTICE_SQLITE_AMALGAMATION: no file '${LATTICE_SQLITE_AMALGAMATION}'")
endif()
get_filename_component(LATTICE_SQLITE_AMALGAMATION_DIR "${LATTICE_SQLITE_AMALGAMATION}" DIRECTORY)
if(NOT EXISTS "${LATTICE_SQLITE_AMALGAMATION_DIR}/sqlite3.h")
  message(FATAL_ERROR "LATTICE_SQLITE_AMALGAMATION: no sqlite3.h beside "
                      "'${LATTICE_SQLITE_AMALGAMATION}'")
endif()
file(STRINGS "${LATTICE_SQLITE_AMALGAMATION_DIR}/sqlite3.h" LATTICE_SQLITE_VERSION_LINE
     REGEX "^#define SQLITE_VERSION +\"")
string(REGEX REPLACE ".*\"(.*)\".*" "\\1" LATTICE_SQLITE_VERSION "${LATTICE_SQLITE_VERSION_LINE}")
message(STATUS "SQLite: compiled from ${LATTICE_SQLITE_AMALGAMATION} (${LATTICE_SQLITE_VERSION})")

# Compile-time options on top of the ones Lattice needs; e.g. SQLITE_ENABLE_FTS5.
set(LATTICE_SQLITE_EXTRA_DEFINITIONS "" CACHE STRING
    "Extra compile definitions for the SQLite amalgamation (a ;-list)")

add_library(lattice_sqlite3 STATIC "${LATTICE_SQLITE_AMALGAMATION}")
target_include_directories(lattice_sqlite3 SYSTEM PUBLIC "${LATTICE_SQLITE_AMALGAMATION_DIR}")
target_compile_definitions(lattice_sqlite3
  # The replica's change listeners need the pre-update hook, and the header declares it only
  # with this defined, so it is PUBLIC (storage/CMakeLists.txt sets it too).
  PUBLIC SQLITE_ENABLE_PREUPDATE_HOOK
  # SyncClient uses its replica from its own thread: serialized mode, as the system library.
  PRIVATE SQLITE_THREADSAFE=1
  # Nothing in Lattice loads SQLite extensions; this also drops the library's use of dlopen.
          SQLITE_OMIT_LOAD_EXTENSION
          ${LATTICE_SQLITE_EXTRA_DEFINITIONS})
# Linked into liblattice.so: position-independent, and no SQLite symbol exported from it
# (the C API's version script hides them too; this also keeps them out of other builds).
set_target_properties(lattice_sqlite3 PROPERTIES
  POSITION_INDEPENDENT_CODE ON C_VISIBILITY_PRESET hidden)
# SQLite's own code is not ours to warn about.
target_compile_options(lattice_sqlite3 PRIVATE -w)
# libm: glibc and Android's bionic both keep the math functions in their own library.
target_link_libraries(lattice_sqlite3 PUBLIC Threads::Threads m)

add_library(SQLite::SQLite3 ALIAS lattice_sqlite3)

# liblattice.a (engine/CMakeLists.txt) names SQLite::SQLite3 in its link interface, so an
# installed static package needs this library too: it joins the static library's export set.
include(GNUInstallDirs)
install(TARGETS lattice_sqlite3 EXPORT LatticeStaticTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT lattice)
