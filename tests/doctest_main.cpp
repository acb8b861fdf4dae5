// The one main() for every doctest executable; see lattice_add_test in tests/CMakeLists.txt.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
