// ClusterLog over libpq (cluster_log.hpp). Parameters and results travel in binary: bytea as
// its bytes, bigint as 8 bytes big-endian, so no value is ever quoted or escaped into SQL text.

#include "relay/cluster_log.hpp"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
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
  head bigint NOT NULL,
  pruned bigint NOT NULL DEFAULT 0
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
-- Columns a later release added, only when missing: ALTER TABLE locks its table even when it
-- changes nothing, and two of them in this transaction would deadlock with appends.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = 'lattice_log'
                   AND column_name = 'origin') THEN
    ALTER TABLE lattice_log ADD COLUMN origin bytea NOT NULL DEFAULT ''::bytea;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = 'lattice_log_heads'
                   AND column_name = 'pruned') THEN
    ALTER TABLE lattice_log_heads ADD COLUMN pruned bigint NOT NULL DEFAULT 0;
  END IF;
END
$$;
-- Each namespace notifies a channel of its own, so that a relay is woken only by the
-- namespaces it follows (those with devices there). Channel names are identifiers of at most
-- 63 bytes and namespace names have up to 64: a digest of the name stands for it.
CREATE OR REPLACE FUNCTION lattice_log_channel(p_ns text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'lattice_log_' || md5(p_ns) $$;
CREATE OR REPLACE FUNCTION lattice_log_follow(p_listen text[], p_unlisten text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  n text;
BEGIN
  FOREACH n IN ARRAY p_unlisten LOOP
    EXECUTE format('UNLISTEN %I', lattice_log_channel(n));
  END LOOP;
  FOREACH n IN ARRAY p_listen LOOP
    EXECUTE format('LISTEN %I', lattice_log_channel(n));
  END LOOP;
END
$$;
-- A relay's group: every batch under one lock of the head row, one notification. When the
-- entries it logged fit (payloads are under 8,000 bytes: 3,900 bytes as hex), the notification
-- carries them after the namespace's name and a space, so that a follower need not read them
-- back: per entry its position, first sequence, then site, batch and origin, each after its
-- length (int8send and int4send: big-endian). Otherwise it carries the name alone.
CREATE OR REPLACE FUNCTION lattice_log_append_all(p_ns text, p_sites bytea[], p_firsts bigint[],
                                                  p_batches bytea[], p_origins bytea[])
  RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
  h bigint;
  p bigint;
  positions bigint[] := '{}';
  carried bytea := ''::bytea;
BEGIN
  INSERT INTO lattice_log_heads VALUES (p_ns, 0) ON CONFLICT (ns) DO NOTHING;
  SELECT head INTO h FROM lattice_log_heads WHERE ns = p_ns FOR UPDATE;
  FOR i IN 1 .. coalesce(array_length(p_sites, 1), 0) LOOP
    SELECT position INTO p FROM lattice_log
      WHERE ns = p_ns AND site = p_sites[i] AND first_seq = p_firsts[i];
    IF NOT FOUND THEN
      h := h + 1;
      p := h;
      INSERT INTO lattice_log VALUES (p_ns, h, p_sites[i], p_firsts[i], p_batches[i], p_origins[i]);
      IF octet_length(p_batches[i]) > 3900 THEN
        carried := NULL;  -- too large to carry: not copied only to be dropped
      END IF;
      carried := carried || int8send(h) || int8send(p_firsts[i])
                 || int4send(octet_length(p_sites[i])) || p_sites[i]
                 || int4send(octet_length(p_batches[i])) || p_batches[i]
                 || int4send(octet_length(p_origins[i])) || p_origins[i];
      IF octet_length(carried) > 3900 THEN
        carried := NULL;  -- and stays NULL: NULL || x is NULL
      END IF;
    END IF;
    positions := positions || p;
  END LOOP;
  UPDATE lattice_log_heads SET head = h WHERE ns = p_ns;
  PERFORM pg_notify(lattice_log_channel(p_ns),
                    CASE WHEN octet_length(carried) > 0 THEN p_ns || ' ' || encode(carried, 'hex')
                         ELSE p_ns END);
  RETURN positions;
END
$$;
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
  PERFORM pg_notify(lattice_log_channel(p_ns), p_ns);
  RETURN h + 1;
END
$$;
CREATE TABLE IF NOT EXISTS lattice_relay_positions (
  relay text NOT NULL,
  ns text NOT NULL,
  position bigint NOT NULL,
  seen_at timestamptz NOT NULL,
  PRIMARY KEY (relay, ns)
);
CREATE TABLE IF NOT EXISTS lattice_snapshots (
  ns text NOT NULL,
  position bigint NOT NULL,
  schema_version bigint NOT NULL,
  manifest text NOT NULL,
  bytes bigint NOT NULL,
  pieces integer NOT NULL,
  taken_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (ns, position)
);
CREATE TABLE IF NOT EXISTS lattice_snapshot_pieces (
  ns text NOT NULL,
  position bigint NOT NULL,
  piece integer NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY (ns, position, piece)
);
CREATE OR REPLACE FUNCTION lattice_log_prune(p_ns text, p_grace double precision) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  snapshot bigint;
  applied bigint;
  upto bigint;
  done bigint;
BEGIN
  SELECT pruned INTO done FROM lattice_log_heads WHERE ns = p_ns FOR UPDATE;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  DELETE FROM lattice_relay_positions
    WHERE ns = p_ns AND seen_at < now() - make_interval(secs => 10 * p_grace);
  SELECT max(position) INTO snapshot FROM lattice_snapshots WHERE ns = p_ns;
  IF snapshot IS NULL THEN
    RETURN done;
  END IF;
  SELECT min(position) INTO applied FROM lattice_relay_positions
    WHERE ns = p_ns AND seen_at >= now() - make_interval(secs => p_grace);
  upto := least(snapshot, coalesce(applied, snapshot));
  IF upto <= done THEN
    RETURN done;
  END IF;
  DELETE FROM lattice_log WHERE ns = p_ns AND position <= upto;
  UPDATE lattice_log_heads SET pruned = upto WHERE ns = p_ns;
  RETURN upto;
END
$$;
)sql";

// Snapshots travel in pieces of this size: no single value near bytea's 1 GB limit, and no
// whole file in memory at once.
constexpr std::size_t kSnapshotPiece = 4u << 20;

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

std::string be32(std::int32_t v) {
  std::string out(4, '\0');
  for (int i = 3; i >= 0; --i, v >>= 8) out[static_cast<std::size_t>(i)] = static_cast<char>(v);
  return out;
}

std::int32_t from_be32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return static_cast<std::int32_t>(v);
}

// Element types of the arrays passed in binary (pg_type's OIDs, fixed in every PostgreSQL).
constexpr std::int32_t kByteaOid = 17;
constexpr std::int32_t kInt8Oid = 20;

// A one-dimensional array of `elements` (each already in its type's binary form) in
// PostgreSQL's binary array format: dimensions, flags, element type, length and lower bound,
// then each element's length and bytes.
std::string binary_array(std::int32_t element_oid, const std::vector<std::string>& elements) {
  std::string out = be32(1) + be32(0) + be32(element_oid) +
                    be32(static_cast<std::int32_t>(elements.size())) + be32(1);
  for (const std::string& e : elements) out += be32(static_cast<std::int32_t>(e.size())) + e;
  return out;
}

// The elements of a one-dimensional bigint[] in binary form.
std::vector<std::int64_t> int8_array(const char* p, std::size_t n) {
  const auto bad = [] { return Error(ErrorCode::kIo, "PostgreSQL: a malformed bigint[] answer"); };
  if (n < 12) throw bad();
  const std::int32_t dims = from_be32(p);
  if (dims == 0) return {};
  if (dims != 1 || n < 20) throw bad();
  const auto count = static_cast<std::size_t>(from_be32(p + 12));
  std::vector<std::int64_t> out;
  std::size_t at = 20;
  for (std::size_t i = 0; i < count; ++i) {
    if (at + 12 > n || from_be32(p + at) != 8) throw bad();
    out.push_back(from_be64(p + at + 4));
    at += 12;
  }
  return out;
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

// A text array literal of `items`: {"a","b"}. Namespace names are [A-Za-z0-9_-] (the hub
// checks), but quoting each keeps any text whole.
std::string text_array(const std::vector<std::string>& items) {
  std::string array = "{";
  for (const std::string& item : items) {
    if (array.size() > 1) array += ',';
    array += '"';
    for (char c : item) {
      if (c == '"' || c == '\\') array += '\\';
      array += c;
    }
    array += '"';
  }
  return array + '}';
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

// (ns text, position bigint) rows, in binary, as a map.
std::map<std::string, std::int64_t> positions_by_namespace(const PGresult* r) {
  std::map<std::string, std::int64_t> out;
  for (int i = 0; i < PQntuples(r); ++i)
    out[std::string(PQgetvalue(r, i, 0), static_cast<std::size_t>(PQgetlength(r, i, 0)))] =
        from_be64(PQgetvalue(r, i, 1));
  return out;
}

}  // namespace

struct ClusterLog::Impl {
  std::string conninfo;
  std::string application_name;
  PGconn* conn = nullptr;
  std::set<std::string> followed;  // LISTENed to on this connection, again after connect()
  // The statements query() prepared on this connection, by SQL text: each is parsed and
  // planned by PostgreSQL once per connection rather than at every call.
  std::map<std::string, std::string, std::less<>> prepared;
  // Notifying backends (by process id) whose role may insert into the log, and when that was
  // checked: see notifier_may_append().
  std::map<int, std::pair<bool, std::chrono::steady_clock::time_point>> notifiers;

  [[noreturn]] void fail(const std::string& what) const {
    std::string message = conn ? PQerrorMessage(conn) : "out of memory";
    while (!message.empty() && (message.back() == '\n' || message.back() == ' '))
      message.pop_back();
    throw Error(ErrorCode::kIo, "PostgreSQL: " + what + ": " + message);
  }

  void connect() {
    if (conn) PQfinish(conn);
    prepared.clear();
    notifiers.clear();
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
    if (!followed.empty()) listen_to({followed.begin(), followed.end()}, {});
  }

  void listen_to(const std::vector<std::string>& listen, const std::vector<std::string>& unlisten) {
    Params params;
    params.text(text_array(listen)).text(text_array(unlisten));
    const Result done(query("SELECT lattice_log_follow($1::text[], $2::text[])", params,
                            "cannot LISTEN to the log's notifications"));
  }

  // Runs SQL without parameters (several statements allowed), expecting `status`.
  void run(const char* sql, ExecStatusType status, const char* what) {
    Result result(PQexec(conn, sql));
    if (PQresultStatus(result.r) != status) fail(what);
  }

  // Runs one statement with parameters, prepared on first use; results in binary.
  PGresult* query(const char* sql, const Params& params, const char* what) {
    std::vector<const char*> values;
    std::vector<int> lengths;
    for (const auto& v : params.values) {
      values.push_back(v.data());
      lengths.push_back(static_cast<int>(v.size()));
    }
    auto statement = prepared.find(std::string_view(sql));
    if (statement == prepared.end()) {
      const std::string name = "lattice_" + std::to_string(prepared.size() + 1);
      Result made(PQprepare(conn, name.c_str(), sql, static_cast<int>(values.size()), nullptr));
      if (PQresultStatus(made.r) != PGRES_COMMAND_OK) fail(what);
      statement = prepared.emplace(sql, name).first;
    }
    PGresult* result =
        PQexecPrepared(conn, statement->second.c_str(), static_cast<int>(values.size()),
                       values.data(), lengths.data(), params.formats.data(), /*resultFormat=*/1);
    if (PQresultStatus(result) != PGRES_TUPLES_OK) {
      PQclear(result);
      fail(what);
    }
    return result;
  }

  // Whether the backend `pid` that sent a notification runs as a role that may insert into the
  // log. Any role that can connect to the database can NOTIFY any channel, so the entries a
  // notification carries are taken only from such a role, which could write them into the log
  // itself anyway; from any other they would be batches no relay logged or checked. Asked once
  // per backend and again after ten seconds (process ids are reused).
  bool notifier_may_append(int pid) {
    const auto now = std::chrono::steady_clock::now();
    auto known = notifiers.find(pid);
    if (known != notifiers.end() && now - known->second.second < std::chrono::seconds(10))
      return known->second.first;
    if (notifiers.size() > 1000) notifiers.clear();
    Params params;
    params.binary(be32(pid));
    const Result result(
        query("SELECT coalesce((SELECT has_table_privilege(usesysid, 'lattice_log', 'INSERT') "
              "FROM pg_stat_activity WHERE pid = $1::integer), false)::text",
              params, "cannot check who sent a notification"));
    const bool may =
        PQntuples(result.r) == 1 && std::string_view(PQgetvalue(result.r, 0, 0)) == "true";
    notifiers[pid] = {may, now};
    return may;
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

bool ClusterLog::connected() const { return impl_->conn && PQstatus(impl_->conn) == CONNECTION_OK; }

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

std::vector<std::int64_t> ClusterLog::append_all(const std::string& ns,
                                                 const std::vector<LogEntry>& entries) {
  if (entries.empty()) return {};
  std::vector<std::string> sites, firsts, batches, origins;
  for (const LogEntry& e : entries) {
    sites.emplace_back(e.site.as_bytes());
    firsts.push_back(be64(static_cast<std::int64_t>(e.first_seq)));
    batches.push_back(e.batch);
    origins.push_back(encode_tags(e.origin_log));
  }
  Params params;
  params.text(ns)
      .binary(binary_array(kByteaOid, sites))
      .binary(binary_array(kInt8Oid, firsts))
      .binary(binary_array(kByteaOid, batches))
      .binary(binary_array(kByteaOid, origins));
  Result result(impl_->query(
      "SELECT lattice_log_append_all($1, $2::bytea[], $3::bigint[], $4::bytea[], $5::bytea[])",
      params, ("cannot append to the log of '" + ns + "'").c_str()));
  if (PQntuples(result.r) != 1)
    throw Error(ErrorCode::kIo, "PostgreSQL: lattice_log_append_all returned no positions");
  std::vector<std::int64_t> positions =
      int8_array(PQgetvalue(result.r, 0, 0), static_cast<std::size_t>(PQgetlength(result.r, 0, 0)));
  if (positions.size() != entries.size())
    throw Error(ErrorCode::kIo, "PostgreSQL: lattice_log_append_all returned " +
                                    std::to_string(positions.size()) + " positions for " +
                                    std::to_string(entries.size()) + " entries");
  return positions;
}

std::int64_t ClusterLog::head(const std::string& ns) {
  Params params;
  params.text(ns);
  Result result(impl_->query("SELECT head FROM lattice_log_heads WHERE ns = $1", params,
                             ("cannot read the head of '" + ns + "'").c_str()));
  return PQntuples(result.r) == 1 ? from_be64(PQgetvalue(result.r, 0, 0)) : 0;
}

std::map<std::string, std::int64_t> ClusterLog::heads(const std::vector<std::string>& namespaces) {
  if (namespaces.empty()) return {};
  Params params;
  params.text(text_array(namespaces));
  Result result(impl_->query("SELECT ns, head FROM lattice_log_heads WHERE ns = ANY($1::text[])",
                             params, "cannot read the log's heads"));
  return positions_by_namespace(result.r);
}

double ClusterLog::notification_queue_usage() {
  Result result(impl_->query("SELECT pg_notification_queue_usage()::text", Params{},
                             "cannot read pg_notification_queue_usage()"));
  if (PQntuples(result.r) != 1) return 0;
  return std::strtod(PQgetvalue(result.r, 0, 0), nullptr);
}

LogRead ClusterLog::read(const std::string& ns, std::int64_t after, std::size_t max,
                         std::size_t max_bytes) {
  const auto bigint = [](std::size_t v) {
    return be64(static_cast<std::int64_t>(std::min<std::size_t>(v, INT64_MAX)));
  };
  Params params;
  params.text(ns).binary(be64(after)).binary(bigint(max)).binary(bigint(max_bytes));
  // One statement: the pruned position and the entries as of one moment (prune() deletes and
  // moves it in one transaction). The entries stop at `max`, or before the one that would pass
  // `max_bytes` of batches (the first always comes).
  Result result(impl_->query(
      "SELECT h.pruned, l.position, l.site, l.first_seq, l.batch, l.origin "
      "FROM lattice_log_heads h LEFT JOIN LATERAL (SELECT * FROM ("
      "SELECT *, sum(octet_length(batch)) OVER (ORDER BY position) - octet_length(batch) AS "
      "before FROM lattice_log WHERE ns = $1 AND position > $2::bigint ORDER BY position "
      "LIMIT $3::bigint) w WHERE before = 0 OR before + octet_length(batch) <= $4::bigint) l "
      "ON true WHERE h.ns = $1 ORDER BY l.position",
      params, ("cannot read the log of '" + ns + "'").c_str()));
  LogRead out;
  const int rows = PQntuples(result.r);
  out.entries.reserve(static_cast<std::size_t>(rows));
  for (int i = 0; i < rows; ++i) {
    out.pruned = from_be64(PQgetvalue(result.r, i, 0));
    if (PQgetisnull(result.r, i, 1)) continue;  // nothing after `after`
    LogEntry entry;
    entry.position = from_be64(PQgetvalue(result.r, i, 1));
    try {
      entry.site = crdt::SiteId::from_bytes(std::string_view(
          PQgetvalue(result.r, i, 2), static_cast<std::size_t>(PQgetlength(result.r, i, 2))));
      entry.first_seq = static_cast<std::uint64_t>(from_be64(PQgetvalue(result.r, i, 3)));
      entry.batch.assign(PQgetvalue(result.r, i, 4),
                         static_cast<std::size_t>(PQgetlength(result.r, i, 4)));
      entry.origin_log = decode_tags(PQgetvalue(result.r, i, 5),
                                     static_cast<std::size_t>(PQgetlength(result.r, i, 5)));
    } catch (const Error&) {
      // A row no relay wrote so (edited by hand, another program): it keeps its position, with
      // nothing a relay could merge, so that the log goes on past it.
      entry = LogEntry{};
      entry.position = from_be64(PQgetvalue(result.r, i, 1));
    }
    out.entries.push_back(std::move(entry));
  }
  return out;
}

void ClusterLog::report_positions(const std::string& relay,
                                  const std::map<std::string, std::int64_t>& positions) {
  if (positions.empty()) return;
  std::vector<std::string> names, values;
  for (const auto& [ns, position] : positions) {
    names.push_back(ns);
    values.push_back(std::to_string(position));
  }
  Params params;
  params.text(relay).text(text_array(names)).text(text_array(values));
  Result result(impl_->query(
      "INSERT INTO lattice_relay_positions "
      "SELECT $1, n, p, now() FROM unnest($2::text[], $3::bigint[]) AS t(n, p) "
      "ON CONFLICT (relay, ns) DO UPDATE SET position = excluded.position, seen_at = now() "
      "RETURNING 1",
      params, "cannot report the relay's positions"));
}

bool ClusterLog::put_snapshot(const std::string& ns, const LogSnapshot& snapshot,
                              const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, "cannot read the snapshot '" + path + "'");
  impl_->run("BEGIN", PGRES_COMMAND_OK, "BEGIN");
  try {
    // One relay stores a snapshot of a namespace at a time; another that comes meanwhile
    // stores nothing rather than wait (the first may be a relay stopped mid-transaction).
    Params lock;
    lock.text("lattice_snapshot:" + ns);
    Result locked(impl_->query("SELECT pg_try_advisory_xact_lock(hashtext($1))::text", lock,
                               "cannot take the snapshot lock"));
    if (PQntuples(locked.r) != 1 || std::string(PQgetvalue(locked.r, 0, 0)) != "true") {
      impl_->run("ROLLBACK", PGRES_COMMAND_OK, "ROLLBACK");
      return false;
    }
    Params newest;
    newest.text(ns).binary(be64(snapshot.position));
    Result newer(
        impl_->query("SELECT 1 FROM lattice_snapshots WHERE ns = $1 AND position >= $2::bigint",
                     newest, ("cannot read the snapshots of '" + ns + "'").c_str()));
    if (PQntuples(newer.r) > 0) {
      impl_->run("ROLLBACK", PGRES_COMMAND_OK, "ROLLBACK");
      return false;
    }
    std::string piece(kSnapshotPiece, '\0');
    std::uint64_t bytes = 0;
    int pieces = 0;
    while (in) {
      in.read(piece.data(), static_cast<std::streamsize>(piece.size()));
      const auto n = static_cast<std::size_t>(in.gcount());
      if (n == 0) break;
      Params row;
      row.text(ns).binary(be64(snapshot.position)).binary(be64(pieces)).binary(piece.substr(0, n));
      Result inserted(impl_->query(
          "INSERT INTO lattice_snapshot_pieces VALUES ($1, $2::bigint, $3::bigint::integer, "
          "$4::bytea) RETURNING 1",
          row, ("cannot store the snapshot of '" + ns + "'").c_str()));
      bytes += n;
      ++pieces;
    }
    if (in.bad()) throw Error(ErrorCode::kIo, "cannot read the snapshot '" + path + "'");
    Params row;
    row.text(ns)
        .binary(be64(snapshot.position))
        .binary(be64(snapshot.schema_version))
        .text(snapshot.manifest)
        .binary(be64(static_cast<std::int64_t>(bytes)))
        .binary(be64(pieces));
    Result inserted(impl_->query(
        "INSERT INTO lattice_snapshots(ns, position, schema_version, manifest, bytes, pieces) "
        "VALUES ($1, $2::bigint, $3::bigint, $4, $5::bigint, $6::bigint::integer) RETURNING 1",
        row, ("cannot store the snapshot of '" + ns + "'").c_str()));
    Params older;
    older.text(ns).binary(be64(snapshot.position));
    Result dropped(impl_->query(
        "WITH gone AS (DELETE FROM lattice_snapshots WHERE ns = $1 AND position < $2::bigint "
        "RETURNING position) DELETE FROM lattice_snapshot_pieces p USING gone "
        "WHERE p.ns = $1 AND p.position = gone.position RETURNING 1",
        older, ("cannot drop the older snapshots of '" + ns + "'").c_str()));
    impl_->run("COMMIT", PGRES_COMMAND_OK, "cannot store the snapshot");
    return true;
  } catch (...) {
    PQclear(PQexec(impl_->conn, "ROLLBACK"));
    throw;
  }
}

std::map<std::string, std::int64_t> ClusterLog::snapshot_positions(
    const std::vector<std::string>& namespaces) {
  if (namespaces.empty()) return {};
  Params params;
  params.text(text_array(namespaces));
  Result result(
      impl_->query("SELECT ns, max(position) FROM lattice_snapshots WHERE ns = ANY($1::text[]) "
                   "GROUP BY ns",
                   params, "cannot read the snapshots' positions"));
  return positions_by_namespace(result.r);
}

std::optional<LogSnapshot> ClusterLog::fetch_snapshot(const std::string& ns,
                                                      const std::string& path) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec))
    throw Error(ErrorCode::kIo, "fetch_snapshot: '" + path + "' exists; give a new file");
  // One snapshot of the database throughout: a newer snapshot stored meanwhile does not delete
  // the pieces being read.
  impl_->run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", PGRES_COMMAND_OK, "BEGIN");
  try {
    Params params;
    params.text(ns);
    Result newest(impl_->query(
        "SELECT position, schema_version, manifest, bytes, pieces::bigint FROM lattice_snapshots "
        "WHERE ns = $1 ORDER BY position DESC LIMIT 1",
        params, ("cannot read the snapshots of '" + ns + "'").c_str()));
    if (PQntuples(newest.r) == 0) {
      impl_->run("COMMIT", PGRES_COMMAND_OK, "COMMIT");
      return std::nullopt;
    }
    LogSnapshot snapshot;
    snapshot.position = from_be64(PQgetvalue(newest.r, 0, 0));
    snapshot.schema_version = from_be64(PQgetvalue(newest.r, 0, 1));
    snapshot.manifest.assign(PQgetvalue(newest.r, 0, 2),
                             static_cast<std::size_t>(PQgetlength(newest.r, 0, 2)));
    snapshot.bytes = static_cast<std::uint64_t>(from_be64(PQgetvalue(newest.r, 0, 3)));
    const std::int64_t pieces = from_be64(PQgetvalue(newest.r, 0, 4));
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(ErrorCode::kIo, "cannot create '" + path + "'");
    std::uint64_t written = 0;
    for (std::int64_t piece = 0; piece < pieces; ++piece) {
      Params key;
      key.text(ns).binary(be64(snapshot.position)).binary(be64(piece));
      Result data(impl_->query(
          "SELECT data FROM lattice_snapshot_pieces WHERE ns = $1 AND position = $2::bigint "
          "AND piece = $3::bigint",
          key, ("cannot read the snapshot of '" + ns + "'").c_str()));
      if (PQntuples(data.r) != 1)
        throw Error(ErrorCode::kIo, "PostgreSQL: the snapshot of '" + ns + "' at position " +
                                        std::to_string(snapshot.position) + " lacks piece " +
                                        std::to_string(piece));
      const auto n = static_cast<std::size_t>(PQgetlength(data.r, 0, 0));
      out.write(PQgetvalue(data.r, 0, 0), static_cast<std::streamsize>(n));
      written += n;
    }
    out.close();
    if (!out || written != snapshot.bytes)
      throw Error(ErrorCode::kIo, "cannot write the snapshot of '" + ns + "' to '" + path + "'");
    impl_->run("COMMIT", PGRES_COMMAND_OK, "COMMIT");
    return snapshot;
  } catch (...) {
    PQclear(PQexec(impl_->conn, "ROLLBACK"));
    std::filesystem::remove(path, ec);
    throw;
  }
}

std::int64_t ClusterLog::prune(const std::string& ns, std::chrono::seconds grace) {
  Params params;
  params.text(ns).text(std::to_string(grace.count()));
  Result result(impl_->query("SELECT lattice_log_prune($1, $2::double precision)", params,
                             ("cannot prune the log of '" + ns + "'").c_str()));
  if (PQntuples(result.r) != 1 || PQgetlength(result.r, 0, 0) != 8)
    throw Error(ErrorCode::kIo, "PostgreSQL: lattice_log_prune returned no position");
  return from_be64(PQgetvalue(result.r, 0, 0));
}

std::vector<std::string> ClusterLog::follow(const std::set<std::string>& namespaces) {
  std::vector<std::string> listen, unlisten;
  std::set_difference(namespaces.begin(), namespaces.end(), impl_->followed.begin(),
                      impl_->followed.end(), std::back_inserter(listen));
  std::set_difference(impl_->followed.begin(), impl_->followed.end(), namespaces.begin(),
                      namespaces.end(), std::back_inserter(unlisten));
  if (listen.empty() && unlisten.empty()) return {};
  impl_->listen_to(listen, unlisten);
  impl_->followed = namespaces;
  return listen;
}

std::size_t ClusterLog::followed() const { return impl_->followed.size(); }

namespace {

// The entries a notification's payload carried after the namespace's name and a space
// (lattice_log_append_all), or nothing when it carried none or they do not decode.
std::optional<std::vector<LogEntry>> carried_entries(std::string_view hex) {
  const auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  if (hex.empty() || hex.size() % 2 != 0) return std::nullopt;
  std::string bytes(hex.size() / 2, '\0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const int high = nibble(hex[2 * i]), low = nibble(hex[2 * i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    bytes[i] = static_cast<char>(high << 4 | low);
  }
  std::vector<LogEntry> entries;
  std::size_t at = 0;
  const auto take = [&](std::size_t n) -> std::optional<std::string_view> {
    if (bytes.size() - at < n) return std::nullopt;
    at += n;
    return std::string_view(bytes).substr(at - n, n);
  };
  const auto sized = [&]() -> std::optional<std::string_view> {
    const auto length = take(4);
    if (!length) return std::nullopt;
    const std::int32_t n = from_be32(length->data());
    if (n < 0) return std::nullopt;
    return take(static_cast<std::size_t>(n));
  };
  try {
    while (at < bytes.size()) {
      LogEntry entry;
      const auto position = take(8), first = take(8);
      const auto site = sized(), batch = sized(), origin = sized();
      if (!position || !first || !site || !batch || !origin) return std::nullopt;
      entry.position = from_be64(position->data());
      entry.first_seq = static_cast<std::uint64_t>(from_be64(first->data()));
      entry.site = crdt::SiteId::from_bytes(*site);
      entry.batch = std::string(*batch);
      entry.origin_log = decode_tags(origin->data(), origin->size());
      if (!entries.empty() && entry.position != entries.back().position + 1) return std::nullopt;
      entries.push_back(std::move(entry));
    }
  } catch (const Error&) {
    return std::nullopt;  // a site id or origin of the wrong length: read() tells
  }
  return entries;
}

}  // namespace

std::vector<LogAppended> ClusterLog::wait_for_appends(std::chrono::milliseconds timeout,
                                                      int wake_fd) {
  PGconn* conn = impl_->conn;
  // Per namespace, what its notifications carried so far; nullopt once one carried nothing.
  std::map<std::string, std::optional<std::vector<LogEntry>>> appended;
  auto drain = [&] {
    if (!PQconsumeInput(conn)) impl_->fail("the LISTEN connection is lost");
    while (PGnotify* notify = PQnotifies(conn)) {
      const std::string_view payload(notify->extra);
      const std::size_t space = payload.find(' ');
      auto carried = space == std::string_view::npos || !impl_->notifier_may_append(notify->be_pid)
                         ? std::nullopt
                         : carried_entries(payload.substr(space + 1));
      auto [it, first] = appended.try_emplace(std::string(payload.substr(0, space)));
      if (first)
        it->second = std::move(carried);
      else if (!it->second || !carried)
        it->second.reset();
      else
        std::move(carried->begin(), carried->end(), std::back_inserter(*it->second));
      PQfreemem(notify);
    }
  };
  drain();
  if (appended.empty()) {
    pollfd fds[2] = {{PQsocket(conn), POLLIN, 0}, {wake_fd, POLLIN, 0}};
    if (fds[0].fd < 0) impl_->fail("the LISTEN connection is lost");
    if (::poll(fds, wake_fd < 0 ? 1 : 2, static_cast<int>(timeout.count())) > 0 &&
        fds[0].revents != 0)
      drain();
  }
  std::vector<LogAppended> out;
  for (auto& [ns, entries] : appended)
    out.push_back(LogAppended{ns, entries ? std::move(*entries) : std::vector<LogEntry>{}});
  return out;
}

}  // namespace lattice::relay
