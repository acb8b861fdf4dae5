// A C++ application of an installed Lattice, through the C header: two replicas, a write on one,
// its changeset applied to the other. Prints "consumer ok: <title>" and exits 0 when it worked.
#include <lattice/lattice.h>

#include <cstdint>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>

namespace {

struct ReplicaFree {
  void operator()(lattice_replica* r) const { lattice_replica_free(r); }
};
struct StmtFinalize {
  void operator()(lattice_stmt* s) const { lattice_stmt_finalize(s); }
};
using ReplicaPtr = std::unique_ptr<lattice_replica, ReplicaFree>;
using StmtPtr = std::unique_ptr<lattice_stmt, StmtFinalize>;

void check(lattice_code code, const lattice_error& error, lattice_code want = LATTICE_OK) {
  if (code != want)
    throw std::runtime_error(std::string(lattice_error_code_name(error.code)) + ": " +
                             error.message);
}

ReplicaPtr open_todo(lattice_error& error) {
  ReplicaPtr r(lattice_replica_open(":memory:", nullptr, &error));
  if (!r) check(error.code, error);
  check(lattice_replica_exec(r.get(), "CREATE TABLE todo(id TEXT PRIMARY KEY, n INTEGER)", &error),
        error);
  check(lattice_replica_replicate(r.get(), "todo", R"({"n": "counter"})", &error), error);
  return r;
}

}  // namespace

int main() try {
  lattice_error error{};
  ReplicaPtr phone = open_todo(error);
  ReplicaPtr laptop = open_todo(error);
  check(lattice_replica_exec(phone.get(), "INSERT INTO todo VALUES ('a', 40)", &error), error);
  check(lattice_replica_exec(laptop.get(), "INSERT INTO todo VALUES ('a', 0)", &error), error);
  check(lattice_replica_exec(laptop.get(), "UPDATE todo SET n = n + 2", &error), error);

  lattice_buffer changes{};
  check(lattice_replica_changes_since(phone.get(), nullptr, 0, &changes, &error), error);
  std::unique_ptr<lattice_buffer, void (*)(lattice_buffer*)> owned(&changes, lattice_buffer_free);
  lattice_apply_result result{};
  check(lattice_replica_apply(laptop.get(), changes.data, changes.size, &result, &error), error);

  StmtPtr select(lattice_stmt_prepare(laptop.get(), "SELECT n FROM todo", &error));
  if (!select) check(error.code, error);
  check(lattice_stmt_step(select.get(), &error), error, LATTICE_ROW);
  lattice_value n{};
  check(lattice_stmt_column(select.get(), 0, &n, &error), error);
  std::cout << "consumer ok: " << n.integer << " (api " << lattice_api_version() << ")\n";
  return n.integer == 42 ? 0 : 1;
} catch (const std::exception& e) {
  std::cerr << "consumer: " << e.what() << "\n";
  return 1;
}
