// ClusterLog over libpq (cluster_log.hpp). Parameters and results travel in binary: bytea as
// its bytes, bigint as 8 bytes big-endian, so no value is ever quoted or escaped into SQL text.

#include "relay/cluster_log.hpp"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cstdlib>
#include <set>

#include "crdt/error.hpp"

namespace lattice::relay {

namespace {

// The log's schema. lattice_log_append is the one place positions are assigned: under the lock
// of the namespace's head row (SELECT ... FOR UPDATE), so a second append of the namespace waits
// for the first to commit and then reads its head; positions are gapless and in commit order.
constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS lattice_log_heads (
  ns text PRIMARY KEY,
  head bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS lattice_log (
  ns text NOT NULL,
  position bigint NOT NULL,
  site bytea NOT NULL,
  first_seq bigint NOT NULL,
  batch bytea NOT NULL,
  origin bytea NOT NULL DEFAULT ''::bytea,
  PRIMARY KEY (ns, position),
  UNIQUE (ns, site, first_seq)
);
ALTER TABLE lattice_log ADD COLUMN IF NOT EXISTS origin bytea NOT NULL DEFAULT ''::bytea;
DROP FUNCTION IF EXISTS lattice_log_append(text, bytea, bigint, bytea);
CREATE OR REPLACE FUNCTION lattice_log_append(p_ns text, p_site bytea, p_first bigint,
                                              p_batch bytea, p_origin bytea) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  h bigint;
  p bigint;
BEGIN
  INSERT INTO lattice_log_heads VALUES (p_ns, 0) ON CONFLICT (ns) DO NOTHING;
  SELECT head INTO h FROM lattice_log_heads WHERE ns = p_ns FOR UPDATE;
  SELECT position INTO p FROM lattice_log
    WHERE ns = p_ns AND site = p_site AND first_seq = p_first;
  IF FOUND THEN
    RETURN p;
  END IF;
  INSERT INTO lattice_log VALUES (p_ns, h + 1, p_site, p_first, p_batch, p_origin);
  UPDATE lattice_log_heads SET head = h + 1 WHERE ns = p_ns;
  PERFORM pg_notify('lattice_log', p_ns);
  RETURN h + 1;
END
$$;
)sql";

// Relays of one cluster that start together create the schema one at a time (CREATE TABLE IF
// NOT EXISTS is not safe against a concurrent CREATE of the same name).
constexpr const char* kSchemaLock = "SELECT pg_advisory_xact_lock(746163697461)";

std::string be64(std::int64_t v) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8) out[static_cast<std::size_t>(i)] = static_cast<char>(v);
  return out;
}

std::int64_t from_be64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return static_cast<std::int64_t>(v);
}

// Transaction tags as bytea: 16 bytes each, sequence then tag, big-endian.
std::string encode_tags(const std::vector<crdt::TxnTag>& tags) {
  std::string out;
  out.reserve(tags.size() * 16);
  for (const crdt::TxnTag& t : tags)
    out += be64(static_cast<std::int64_t>(t.seq)) + be64(static_cast<std::int64_t>(t.tag));
  return out;
}

std::vector<crdt::TxnTag> decode_tags(const char* p, std::size_t n) {
  if (n % 16 != 0) throw Error(ErrorCode::kIo, "PostgreSQL: a log entry's origin is malformed");
  std::vector<crdt::TxnTag> tags;
  tags.reserve(n / 16);
  for (std::size_t i = 0; i < n; i += 16)
    tags.push_back(crdt::TxnTag{static_cast<std::uint64_t>(from_be64(p + i)),
                                static_cast<std::uint64_t>(from_be64(p + i + 8))});
  return tags;
}

struct Result {
  PGresult* r = nullptr;
  explicit Result(PGresult* result) : r(result) {}
  ~Result() { PQclear(r); }
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;
};

// One SQL text with its parameters: text ones (namespace names) and binary ones.
struct Params {
  std::vector<std::string> values;
  std::vector<int> formats;  // 0 text, 1 binary

  Params& text(std::string v) {
    values.push_back(std::move(v));
    formats.push_back(0);
    return *this;
  }
  Params& binary(std::string v) {
    values.push_back(std::move(v));
    formats.push_back(1);
    return *this;
  }
};

}  // namespace

struct ClusterLog::Impl {
  std::string conninfo;
  std::string application_name;
  PGconn* conn = nullptr;
  bool listening = false;

  [[noreturn]] void fail(const std::string& what) const {
    std::string message = conn ? PQerrorMessage(conn) : "out of memory";
    while (!message.empty() && (message.back() == '\n' || message.back() == ' '))
      message.pop_back();
    throw Error(ErrorCode::kIo, "PostgreSQL: " + what + ": " + message);
  }

  void connect() {
    if (conn) PQfinish(conn);
    // Later keywords win: the conninfo's own settings, if it has them, over ours.
    const char* const keywords[] = {"connect_timeout", "application_name", "dbname", nullptr};
    const char* const values[] = {"5", application_name.c_str(), conninfo.c_str(), nullptr};
    conn = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) fail("cannot connect");
    // The server's notices ("relation already exists, skipping") are not errors: not printed.
    PQsetNoticeProcessor(
        conn, [](void*, const char*) {}, nullptr);
    run("BEGIN", PGRES_COMMAND_OK, "BEGIN");
    try {
      run(kSchemaLock, PGRES_TUPLES_OK, "cannot take the schema lock");
      run(kSchema, PGRES_COMMAND_OK, "cannot create the log's tables");
      run("COMMIT", PGRES_COMMAND_OK, "cannot create the log's tables");
    } catch (...) {
      PQclear(PQexec(conn, "ROLLBACK"));
      throw;
    }
    if (listening) run("LISTEN lattice_log", PGRES_COMMAND_OK, "LISTEN");
  }

  // Runs SQL without parameters (several statements allowed), expecting `status`.
  void run(const char* sql, ExecStatusType status, const char* what) {
    Result result(PQexec(conn, sql));
    if (PQresultStatus(result.r) != status) fail(what);
  }

  // Runs one statement with parameters; results in binary.
  PGresult* query(const char* sql, const Params& params, const char* what) {
    std::vector<const char*> values;
    std::vector<int> lengths;
    for (const auto& v : params.values) {
      values.push_back(v.data());
      lengths.push_back(static_cast<int>(v.size()));
    }
    PGresult* result =
        PQexecParams(conn, sql, static_cast<int>(values.size()), nullptr, values.data(),
                     lengths.data(), params.formats.data(), /*resultFormat=*/1);
    if (PQresultStatus(result) != PGRES_TUPLES_OK) {
      PQclear(result);
      fail(what);
    }
    return result;
  }
};

ClusterLog::ClusterLog(const std::string& conninfo, const std::string& application_name)
    : impl_(std::make_unique<Impl>()) {
  impl_->conninfo = conninfo;
  impl_->application_name = application_name;
  try {
    impl_->connect();
  } catch (...) {
    PQfinish(impl_->conn);
    throw;
  }
}

ClusterLog::~ClusterLog() { PQfinish(impl_->conn); }

void ClusterLog::reconnect() { impl_->connect(); }

int ClusterLog::backend_pid() const { return PQbackendPID(impl_->conn); }

std::int64_t ClusterLog::append(const std::string& ns, const crdt::SiteId& site,
                                std::uint64_t first_seq, std::string_view batch,
                                const std::vector<crdt::TxnTag>& origin_log) {
  Params params;
  params.text(ns)
      .binary(std::string(site.as_bytes()))
      .binary(be64(static_cast<std::int64_t>(first_seq)))
      .binary(std::string(batch))
      .binary(encode_tags(origin_log));
  Result result(
      impl_->query("SELECT lattice_log_append($1, $2::bytea, $3::bigint, $4::bytea, $5::bytea)",
                   params, ("cannot append to the log of '" + ns + "'").c_str()));
  if (PQntuples(result.r) != 1 || PQgetlength(result.r, 0, 0) != 8)
    throw Error(ErrorCode::kIo, "PostgreSQL: lattice_log_append returned no position");
  return from_be64(PQgetvalue(result.r, 0, 0));
}

std::int64_t ClusterLog::head(const std::string& ns) {
  Params params;
  params.text(ns);
  Result result(impl_->query("SELECT head FROM lattice_log_heads WHERE ns = $1", params,
                             ("cannot read the head of '" + ns + "'").c_str()));
  return PQntuples(result.r) == 1 ? from_be64(PQgetvalue(result.r, 0, 0)) : 0;
}

std::map<std::string, std::int64_t> ClusterLog::heads(const std::vector<std::string>& namespaces) {
  std::map<std::string, std::int64_t> out;
  if (namespaces.empty()) return out;
  // A text array literal of the names: {"a","b"}. Names are [A-Za-z0-9_-] (the hub checks), but
  // quoting each keeps any name whole.
  std::string array = "{";
  for (const std::string& ns : namespaces) {
    if (array.size() > 1) array += ',';
    array += '"';
    for (char c : ns) {
      if (c == '"' || c == '\\') array += '\\';
      array += c;
    }
    array += '"';
  }
  array += '}';
  Params params;
  params.text(std::move(array));
  Result result(impl_->query("SELECT ns, head FROM lattice_log_heads WHERE ns = ANY($1::text[])",
                             params, "cannot read the log's heads"));
  for (int i = 0; i < PQntuples(result.r); ++i)
    out[std::string(PQgetvalue(result.r, i, 0),
                    static_cast<std::size_t>(PQgetlength(result.r, i, 0)))] =
        from_be64(PQgetvalue(result.r, i, 1));
  return out;
}

double ClusterLog::notification_queue_usage() {
  Result result(impl_->query("SELECT pg_notification_queue_usage()::text", Params{},
                             "cannot read pg_notification_queue_usage()"));
  if (PQntuples(result.r) != 1) return 0;
  return std::strtod(PQgetvalue(result.r, 0, 0), nullptr);
}

std::vector<LogEntry> ClusterLog::read(const std::string& ns, std::int64_t after, std::size_t max) {
  Params params;
  params.text(ns)
      .binary(be64(after))
      .binary(be64(static_cast<std::int64_t>(std::min<std::size_t>(max, INT64_MAX))));
  Result result(
      impl_->query("SELECT position, site, first_seq, batch, origin FROM lattice_log "
                   "WHERE ns = $1 AND position > $2::bigint ORDER BY position LIMIT $3::bigint",
                   params, ("cannot read the log of '" + ns + "'").c_str()));
  std::vector<LogEntry> out;
  const int rows = PQntuples(result.r);
  out.reserve(static_cast<std::size_t>(rows));
  for (int i = 0; i < rows; ++i) {
    LogEntry entry;
    entry.position = from_be64(PQgetvalue(result.r, i, 0));
    entry.site = crdt::SiteId::from_bytes(std::string_view(
        PQgetvalue(result.r, i, 1), static_cast<std::size_t>(PQgetlength(result.r, i, 1))));
    entry.first_seq = static_cast<std::uint64_t>(from_be64(PQgetvalue(result.r, i, 2)));
    entry.batch.assign(PQgetvalue(result.r, i, 3),
                       static_cast<std::size_t>(PQgetlength(result.r, i, 3)));
    entry.origin_log = decode_tags(PQgetvalue(result.r, i, 4),
                                   static_cast<std::size_t>(PQgetlength(result.r, i, 4)));
    out.push_back(std::move(entry));
  }
  return out;
}

void ClusterLog::listen() {
  impl_->run("LISTEN lattice_log", PGRES_COMMAND_OK, "LISTEN");
  impl_->listening = true;
}

std::vector<std::string> ClusterLog::wait_for_appends(std::chrono::milliseconds timeout) {
  PGconn* conn = impl_->conn;
  std::set<std::string> namespaces;
  auto drain = [&] {
    if (!PQconsumeInput(conn)) impl_->fail("the LISTEN connection is lost");
    while (PGnotify* notify = PQnotifies(conn)) {
      namespaces.insert(notify->extra);
      PQfreemem(notify);
    }
  };
  drain();
  if (namespaces.empty()) {
    pollfd fd{PQsocket(conn), POLLIN, 0};
    if (fd.fd < 0) impl_->fail("the LISTEN connection is lost");
    if (::poll(&fd, 1, static_cast<int>(timeout.count())) > 0) drain();
  }
  return {namespaces.begin(), namespaces.end()};
}

}  // namespace lattice::relay
