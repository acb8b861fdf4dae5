#include "tests/relay/postgres_server.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

extern char** environ;

namespace lattice::test {

namespace {

// Runs `argv` (as the postgres user when this process is root), its output appended to `log`;
// returns its exit status.
int run(std::vector<std::string> argv, const std::string& log) {
  if (::geteuid() == 0) argv.insert(argv.begin(), {"runuser", "-u", "postgres", "--"});
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  REQUIRE(ok);
  return ntohs(address.sin_port);
}

namespace {

// Where Debian keeps initdb and pg_ctl: `pg_config --bindir`, else PostgreSQL 15's directory.
std::string postgres_bin() {
  std::string dir;
  if (FILE* pipe = ::popen("pg_config --bindir 2>/dev/null", "r")) {
    char line[512];
    if (std::fgets(line, sizeof line, pipe)) dir = line;
    ::pclose(pipe);
  }
  while (!dir.empty() && (dir.back() == '\n' || dir.back() == ' ')) dir.pop_back();
  if (dir.empty() || !std::filesystem::exists(dir + "/initdb")) dir = "/usr/lib/postgresql/15/bin";
  return dir;
}

std::string read_log(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

PostgresServer::PostgresServer() : PostgresServer(Empty{}) {
  const std::string log = dir_ + "/initdb.log";
  const int rc = run({bin_ + "/initdb", "-D", dir_ + "/data", "-U", "lattice", "--auth=trust", "-E",
                      "UTF8", "--no-instructions"},
                     log);
  REQUIRE_MESSAGE(rc == 0, "initdb failed: " << read_log(log));
  start();
}

PostgresServer::PostgresServer(Empty) : bin_(postgres_bin()) {
  char pattern[] = "/tmp/lattice-pg.XXXXXX";
  REQUIRE(::mkdtemp(pattern) != nullptr);
  dir_ = pattern;
  if (::geteuid() == 0) {
    const passwd* postgres = ::getpwnam("postgres");
    REQUIRE_MESSAGE(postgres,
                    "running as root, the tests need the user 'postgres' (Debian's "
                    "postgresql-15 package makes it)");
    REQUIRE(::chown(dir_.c_str(), postgres->pw_uid, postgres->pw_gid) == 0);
  }
}

std::unique_ptr<PostgresServer> PostgresServer::standby_of(const PostgresServer& primary) {
  std::unique_ptr<PostgresServer> standby(new PostgresServer(Empty{}));
  const std::string log = standby->dir_ + "/basebackup.log";
  const std::string primary_port = std::to_string(primary.port_);
  // -R: standby.signal and primary_conninfo; the line appended names the walreceiver, which
  // synchronous_standby_names refers to.
  const int rc =
      run({standby->bin_ + "/pg_basebackup", "-h", "127.0.0.1", "-p", primary_port, "-U", "lattice",
           "-D", standby->dir_ + "/data", "-R", "-X", "stream", "--checkpoint=fast"},
          log);
  REQUIRE_MESSAGE(rc == 0, "pg_basebackup failed: " << read_log(log));
  {
    std::ofstream conf(standby->dir_ + "/data/postgresql.auto.conf", std::ios::app);
    conf << "primary_conninfo = 'host=127.0.0.1 port=" << primary_port
         << " user=lattice application_name=standby'\n";
    REQUIRE(conf.good());
  }
  standby->start();
  primary.query("ALTER SYSTEM SET synchronous_standby_names = 'standby'");
  primary.query("SELECT pg_reload_conf()");
  std::string state;
  for (int i = 0; i < 300 && state != "sync"; ++i) {
    if (i) ::usleep(100'000);
    state = primary.query(
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'");
  }
  REQUIRE_MESSAGE(state == "sync", "the standby did not become synchronous: " << state);
  return standby;
}

void PostgresServer::promote() { pg_ctl("promote"); }

PostgresServer::~PostgresServer() {
  if (running_) pg_ctl("stop", "immediate");
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string PostgresServer::conninfo() const {
  return "host=127.0.0.1 port=" + std::to_string(port_) +
         " user=lattice dbname=postgres connect_timeout=5";
}

std::string PostgresServer::query(const std::string& sql) const {
  PGconn* conn = PQconnectdb(conninfo().c_str());
  REQUIRE_MESSAGE(PQstatus(conn) == CONNECTION_OK, PQerrorMessage(conn));
  PGresult* result = PQexec(conn, sql.c_str());
  const auto status = PQresultStatus(result);
  std::string value =
      status == PGRES_TUPLES_OK && PQntuples(result) > 0 ? PQgetvalue(result, 0, 0) : "";
  CHECK_MESSAGE((status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK),
                sql << ": " << PQerrorMessage(conn));
  PQclear(result);
  PQfinish(conn);
  return value;
}

void PostgresServer::pg_ctl(const std::string& action, const std::string& mode) {
  std::vector<std::string> argv{bin_ + "/pg_ctl",    "-D", dir_ + "/data", "-w", "-l",
                                dir_ + "/server.log"};
  if (!mode.empty()) argv.insert(argv.end(), {"-m", mode});
  if (action == "start")
    argv.insert(argv.end(), {"-o", "-p " + std::to_string(port_) + " -k " + dir_ +
                                       " -c listen_addresses=127.0.0.1 -c fsync=on "
                                       "-c synchronous_commit=on"});
  argv.push_back(action);
  const int rc = run(argv, dir_ + "/pg_ctl.log");
  REQUIRE_MESSAGE(rc == 0, "pg_ctl " << action << " failed: " << read_log(dir_ + "/pg_ctl.log")
                                     << read_log(dir_ + "/server.log"));
}

void PostgresServer::kill() {
  pg_ctl("stop", "immediate");
  running_ = false;
}

void PostgresServer::start() {
  if (port_ == 0) port_ = free_port();
  pg_ctl("start");
  running_ = true;
}

}  // namespace lattice::test
