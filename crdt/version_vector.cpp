#include "crdt/version_vector.hpp"

#include <limits>

#include "crdt/error.hpp"

namespace lattice::crdt {

std::uint64_t VersionVector::get(const SiteId& site) const {
  const auto it = entries_.find(site);
  return it == entries_.end() ? 0 : it->second;
}

void VersionVector::advance(const SiteId& site, std::uint64_t seq) {
  if (seq == 0) return;  // 0 is "nothing seen": never stored
  auto [it, inserted] = entries_.try_emplace(site, seq);
  if (!inserted && seq > it->second) it->second = seq;
}

bool VersionVector::dominates(const VersionVector& other) const {
  for (const auto& [site, seq] : other.entries_) {
    if (get(site) < seq) return false;
  }
  return true;
}

VersionVector::Order VersionVector::compare(const VersionVector& other) const {
  const bool ge = dominates(other);
  const bool le = other.dominates(*this);
  if (ge && le) return Order::kEqual;
  if (le) return Order::kBefore;
  if (ge) return Order::kAfter;
  return Order::kConcurrent;
}

void VersionVector::merge(const VersionVector& other) {
  for (const auto& [site, seq] : other.entries_) advance(site, seq);
}

std::vector<VersionVector::Range> VersionVector::missing_from(const VersionVector& holder) const {
  std::vector<Range> out;
  for (const auto& [site, seq] : entries_) {
    const std::uint64_t held = holder.get(site);
    if (held < seq) out.push_back(Range{site, held, seq});
  }
  return out;
}

std::string VersionVector::to_json() const {
  std::string out = "{";
  bool first = true;
  for (const auto& [site, seq] : entries_) {
    if (!first) out.append(", ");
    first = false;
    out.append("\"").append(site.to_hex()).append("\": ").append(std::to_string(seq));
  }
  out.append("}");
  return out;
}

namespace {

// A strict parser for exactly the form to_json() writes, whitespace aside. General JSON
// (escapes, fractions, nesting) is refused rather than half-understood.
class JsonVectorParser {
 public:
  explicit JsonVectorParser(std::string_view text) : text_(text) {}

  VersionVector parse() {
    VersionVector out;
    skip_space();
    expect('{', "'{' opening the version vector");
    skip_space();
    if (peek_is('}')) {
      ++pos_;
    } else {
      for (;;) {
        skip_space();
        const std::size_t key_at = pos_;
        const SiteId site = parse_site();
        skip_space();
        expect(':', "':' after the site id");
        skip_space();
        const std::uint64_t seq = parse_seq();
        if (!seen_.try_emplace(site, true).second) {
          fail_at(key_at, "a site id not seen before; site " + site.to_hex() + " is repeated");
        }
        out.advance(site, seq);
        skip_space();
        if (peek_is(',')) {
          ++pos_;
          continue;
        }
        expect('}', "',' or '}' after a sequence number");
        break;
      }
    }
    skip_space();
    if (pos_ != text_.size()) fail("the end of the text after the closing '}'");
    return out;
  }

 private:
  [[noreturn]] void fail_at(std::size_t at, const std::string& expected) const {
    std::string found;
    if (at >= text_.size()) {
      found = "the end of the text";
    } else {
      const unsigned char c = static_cast<unsigned char>(text_[at]);
      if (c >= 0x20 && c < 0x7f) {
        found = std::string("'") + static_cast<char>(c) + "'";
      } else {
        static constexpr char kDigits[] = "0123456789abcdef";
        found = std::string("byte 0x") + kDigits[c >> 4] + kDigits[c & 0xf];
      }
    }
    throw Error(ErrorCode::kInvalidArgument, "version vector JSON: at byte " + std::to_string(at) +
                                                 ": expected " + expected + ", found " + found);
  }
  [[noreturn]] void fail(const std::string& expected) const { fail_at(pos_, expected); }

  bool peek_is(char c) const { return pos_ < text_.size() && text_[pos_] == c; }

  void expect(char c, const char* what) {
    if (!peek_is(c)) fail(what);
    ++pos_;
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  static bool is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }

  SiteId parse_site() {
    expect('"', "'\"' opening a site id");
    const std::size_t start = pos_;
    while (pos_ < text_.size() && pos_ - start < 32 && is_hex(text_[pos_])) ++pos_;
    if (pos_ - start < 32) fail("a hexadecimal digit (a site id is 32 of them)");
    if (!peek_is('"')) fail("'\"' closing a site id of 32 hexadecimal digits");
    const SiteId site = SiteId::from_hex(text_.substr(start, 32));
    ++pos_;
    return site;
  }

  std::uint64_t parse_seq() {
    if (peek_is('-')) fail("a non-negative sequence number");
    if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9') {
      fail("a sequence number (a non-negative integer)");
    }
    const std::size_t start = pos_;
    std::uint64_t value = 0;
    constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const auto digit = static_cast<std::uint64_t>(text_[pos_] - '0');
      if (value > (kMax - digit) / 10) {
        fail_at(start, "a sequence number of at most 18446744073709551615");
      }
      value = value * 10 + digit;
      ++pos_;
    }
    if (text_[start] == '0' && pos_ - start > 1) {
      fail_at(start, "a sequence number without leading zeros");
    }
    if (peek_is('.') || peek_is('e') || peek_is('E')) {
      fail("an integer sequence number (no fraction or exponent)");
    }
    return value;
  }

  std::string_view text_;
  std::size_t pos_ = 0;
  std::map<SiteId, bool> seen_;  // includes sites given as 0, which advance() does not store
};

}  // namespace

VersionVector VersionVector::from_json(std::string_view json) {
  return JsonVectorParser(json).parse();
}

}  // namespace lattice::crdt
