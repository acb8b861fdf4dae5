#include "transport/claims.hpp"

#include <algorithm>

namespace lattice::transport {

namespace {

std::string too_large(const std::string& what, std::uint64_t value) {
  return what + " " + std::to_string(value) + " is over the largest sequence " +
         std::to_string(kMaxSequence);
}

// Calls `visit(site index, seq, causal length, what)` for every stamp and counter part.
template <class Visit>
std::optional<std::string> each_stamp(const crdt::Changeset& changeset, const Visit& visit) {
  for (const crdt::RowChange& row : changeset.rows) {
    if (row.liveness)
      if (auto why = visit(row.liveness->site, row.liveness->seq, row.liveness->causal_length,
                           "a liveness stamp"))
        return why;
    for (const crdt::CellChange& cell : row.cells)
      if (auto why = visit(cell.stamp.site, cell.stamp.seq, cell.stamp.causal_length, "a cell"))
        return why;
    for (const crdt::CounterChange& counter : row.counters)
      if (auto why =
              visit(counter.site, counter.part.seq, counter.part.causal_length, "a counter part"))
        return why;
  }
  return std::nullopt;
}

// Keeps, in place, the stamps and counter parts `keep(site id, seq)` accepts; drops rows left
// with nothing.
template <class Keep>
void filter_rows(crdt::Changeset& changeset, const Keep& keep) {
  const auto& sites = changeset.sites;
  std::erase_if(changeset.rows, [&](crdt::RowChange& row) {
    if (row.liveness && !keep(sites[row.liveness->site], row.liveness->seq)) {
      row.liveness.reset();
      row.liveness_values.clear();
    }
    std::erase_if(row.cells, [&](const crdt::CellChange& cell) {
      return !keep(sites[cell.stamp.site], cell.stamp.seq);
    });
    std::erase_if(row.counters, [&](const crdt::CounterChange& counter) {
      return !keep(sites[counter.site], counter.part.seq);
    });
    return !row.liveness && row.cells.empty() && row.counters.empty();
  });
}

// `vector` with the entry of `site` lowered to at most `limit` (a vector only ever rises).
crdt::VersionVector lowered(const crdt::VersionVector& vector, const crdt::SiteId& site,
                            std::uint64_t limit) {
  crdt::VersionVector out;
  for (const auto& [s, seq] : vector.entries())
    out.advance(s, s == site ? std::min(seq, limit) : seq);
  return out;
}

}  // namespace

std::optional<std::string> check_vector(const crdt::VersionVector& vector, const char* what) {
  if (vector.entries().size() > kMaxVectorEntries)
    return std::string(what) + " has " + std::to_string(vector.entries().size()) +
           " entries, over the limit of " + std::to_string(kMaxVectorEntries);
  for (const auto& [site, seq] : vector.entries())
    if (seq > kMaxSequence)
      return std::string(what) + " claims site " + site.to_hex() + " through " +
             std::to_string(seq) + ", over the largest sequence " + std::to_string(kMaxSequence);
  return std::nullopt;
}

std::optional<std::string> check_device_changes(const crdt::Changeset& changeset,
                                                const std::vector<crdt::TxnTag>& origin_log,
                                                const crdt::SiteId& device,
                                                const crdt::VersionVector& relay_held,
                                                std::uint64_t untagged_through) {
  if (auto why = check_vector(changeset.since, "changeset.since")) return why;
  if (auto why = check_vector(changeset.until, "changeset.until")) return why;
  if (origin_log.size() > kMaxLogEntries)
    return "origin log has " + std::to_string(origin_log.size()) + " entries, over the limit of " +
           std::to_string(kMaxLogEntries);

  const std::uint64_t until_own = changeset.until.get(device);
  const std::uint64_t since_own = changeset.since.get(device);
  const std::string own = device.to_hex();
  auto stamp_check = [&](std::uint32_t index, std::uint64_t seq, std::uint64_t causal_length,
                         const char* what) -> std::optional<std::string> {
    if (seq > kMaxSequence) return too_large(what, seq);
    if (causal_length > kMaxSequence)
      return too_large("the causal length of " + std::string(what), causal_length);
    if (index >= changeset.sites.size()) return std::nullopt;  // the codec refuses these
    const crdt::SiteId& site = changeset.sites[index];
    if (site != device)
      return std::string(what) + " of site " + site.to_hex() +
             ": a device sends only its own writes (site " + own + ")";
    if (seq > std::max(until_own, relay_held.get(device)))
      return std::string(what) + " of transaction " + std::to_string(seq) +
             " is past the changeset's own until " + std::to_string(until_own);
    return std::nullopt;
  };
  if (auto why = each_stamp(changeset, stamp_check)) return why;

  for (const auto& [site, seq] : changeset.until.entries())
    if (site != device && seq > relay_held.get(site))
      return "changeset claims site " + site.to_hex() + " through " + std::to_string(seq) +
             ", but the relay holds it through " + std::to_string(relay_held.get(site)) +
             "; a device speaks only for its own site";

  std::uint64_t previous = since_own;
  for (const crdt::TxnTag& t : origin_log) {
    if (t.seq <= previous || t.seq > until_own)
      return "origin log entry " + std::to_string(t.seq) + " is not increasing within (" +
             std::to_string(since_own) + ", " + std::to_string(until_own) + "]";
    previous = t.seq;
  }
  // Every own transaction the relay is to count from now on must be listed, so that a later
  // copy or impersonator of this site id is told apart by its tags (docs/protocol.md, "Rekey").
  const std::uint64_t listed_from = std::max(relay_held.get(device), untagged_through);
  auto it = std::lower_bound(origin_log.begin(), origin_log.end(), listed_from + 1,
                             [](const crdt::TxnTag& t, std::uint64_t seq) { return t.seq < seq; });
  for (std::uint64_t seq = listed_from + 1; seq <= until_own; ++seq, ++it)
    if (it == origin_log.end() || it->seq != seq)
      return "changeset counts own transaction " + std::to_string(seq) +
             " but its origin log does not list it";
  return std::nullopt;
}

crdt::Changeset without_held_own(crdt::Changeset changeset, const crdt::SiteId& device,
                                 std::uint64_t held) {
  filter_rows(changeset, [&](const crdt::SiteId& site, std::uint64_t seq) {
    return site != device || seq > held;
  });
  return changeset;
}

crdt::Changeset own_changes_only(crdt::Changeset changeset, const crdt::SiteId& own) {
  crdt::VersionVector until;
  for (const auto& [site, seq] : changeset.until.entries())
    until.advance(site, site == own ? seq : std::min(seq, changeset.since.get(site)));
  changeset.until = std::move(until);
  filter_rows(changeset, [&](const crdt::SiteId& site, std::uint64_t) { return site == own; });
  return changeset;
}

crdt::Changeset clamp_own_claims(crdt::Changeset changeset, const crdt::SiteId& own,
                                 std::uint64_t own_head) {
  changeset.until = lowered(changeset.until, own, own_head);
  filter_rows(changeset, [&](const crdt::SiteId& site, std::uint64_t seq) {
    return site != own || seq <= own_head;
  });
  return changeset;
}

}  // namespace lattice::transport
