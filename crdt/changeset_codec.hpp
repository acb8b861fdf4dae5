#pragma once
// The byte form of a changeset (msgpack; specified in docs/changeset-format.md).

#include <cstddef>
#include <string>
#include <string_view>

#include "crdt/changeset.hpp"

namespace lattice::crdt {

struct DecodeLimits {
  std::size_t max_bytes = 256u << 20;       // whole changeset
  std::size_t max_rows = 16u << 20;         // RowChange entries
  std::size_t max_sites = 1u << 20;         // entries of the site table and of each vector
  std::size_t max_value_bytes = 64u << 20;  // one text or blob value
};

// Encodes `changeset`. Never fails.
std::string encode_changeset(const Changeset& changeset);

// Decodes and validates bytes from an untrusted source. Throws Error naming what was wrong:
// kTooLarge past a limit, kUnsupportedVersion for a newer format, kCorrupt for anything that
// does not decode or references something that does not exist (a site index out of range, a
// row of a table missing from the catalog, a column its table lacks, a last-writer-wins value
// for a counter column or a counter part for a last-writer-wins one, a liveness of even causal
// length carrying values, ...).
Changeset decode_changeset(std::string_view bytes, const DecodeLimits& limits = {});

// The version and the two vectors of a changeset, read from its first bytes without decoding
// its rows (to order files before applying them). Throws Error as decode_changeset does for
// what it reads.
struct ChangesetVectors {
  std::uint64_t format_version = 0;
  VersionVector since, until;
};
ChangesetVectors peek_changeset_vectors(std::string_view bytes, const DecodeLimits& limits = {});

}  // namespace lattice::crdt
