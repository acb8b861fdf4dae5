#pragma once
// A real PostgreSQL 15 server for tests of the relay cluster: a new cluster made with initdb in a
// temporary directory, started with pg_ctl on 127.0.0.1 and a free port, fsync and
// synchronous_commit on (the defaults), trust authentication for the user "lattice". When the
// tests run as root, PostgreSQL's programs run as the "postgres" user (initdb refuses root).

#include <memory>
#include <string>

namespace lattice::test {

// A port of 127.0.0.1 no one listens on now (bound, read and closed: another process may take
// it before the caller does).
int free_port();

class PostgresServer {
 public:
  // Makes the cluster and starts it. Fails the test (doctest REQUIRE) when it cannot.
  PostgresServer();
  // Stops the server (immediately) and removes its directory.
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // A libpq connection string for database "postgres" as user "lattice".
  std::string conninfo() const;
  int port() const { return port_; }

  // Runs `sql` on a new connection; the first column of its first row ("" when none). Fails
  // the test (doctest CHECK) when the statement fails.
  std::string query(const std::string& sql) const;

  // pg_ctl stop -m immediate: as a crash of the server (no checkpoint; recovery at the next
  // start replays its WAL).
  void kill();
  // Starts it again on the same port.
  void start();

  // A hot standby of `primary` on a port of its own (pg_basebackup, then streaming replication
  // as application "standby"), made synchronous: from then on each commit of the primary
  // returns only once the standby has it on disk. Fails the test when it cannot.
  static std::unique_ptr<PostgresServer> standby_of(const PostgresServer& primary);
  // pg_ctl promote: a standby becomes a primary that takes writes; returns once it does.
  void promote();

 private:
  struct Empty {};
  explicit PostgresServer(Empty);  // the directory only: no cluster, not started
  void pg_ctl(const std::string& action, const std::string& mode = "");

  std::string dir_;
  std::string bin_;
  int port_ = 0;
  bool running_ = false;
};

}  // namespace lattice::test
