// Boost.JSON, compiled from its sources here and nowhere else (it is meant to be included once
// per program): liblattice.a then carries it, and the arm64 cross build needs no arm64 Boost
// library. Link lattice::boost_json instead of including <boost/json/src.hpp> again.

#include <boost/json/src.hpp>
