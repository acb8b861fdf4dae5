#include "crdt/value.hpp"

namespace lattice::crdt {

const char* value_type_name(const Value& value) {
  switch (value.index()) {
    case 0:
      return "null";
    case 1:
      return "integer";
    case 2:
      return "real";
    case 3:
      return "text";
    case 4:
      return "blob";
  }
  return "valueless";  // only after an exception during assignment
}

}  // namespace lattice::crdt
