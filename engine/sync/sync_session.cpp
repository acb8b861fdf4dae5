#include "engine/sync/sync_session.hpp"

#include <algorithm>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "transport/claims.hpp"

namespace lattice::engine {

const char* sync_state_name(SyncState state) {
  switch (state) {
    case SyncState::kOffline:
      return "offline";
    case SyncState::kConnecting:
      return "connecting";
    case SyncState::kSyncing:
      return "syncing";
    case SyncState::kLive:
      return "live";
  }
  return "unknown";
}

SyncSession::SyncSession(storage::Replica& replica,
                         std::shared_ptr<transport::Connection> connection, Options options,
                         Events events)
    : replica_(replica),
      connection_(std::move(connection)),
      options_(std::move(options)),
      events_(std::move(events)) {
  std::weak_ptr<bool> alive = alive_;
  connection_->set_handlers(
      transport::Connection::Handlers{[this, alive](std::string_view bytes) {
                                        if (alive.lock()) on_frame(bytes);
                                      },
                                      [this, alive](const std::string& reason) {
                                        if (!alive.lock()) return;
                                        closed_ = true;
                                        set_state(SyncState::kOffline);
                                        if (events_.on_closed) events_.on_closed(reason);
                                      },
                                      [this, alive] {
                                        if (alive.lock() && outgoing_) send_pieces();
                                      }});
}

SyncSession::~SyncSession() {
  alive_.reset();
  if (!closed_) connection_->close("session ended");
  connection_->set_handlers({});
}

void SyncSession::set_state(SyncState state) {
  if (state == state_) return;
  state_ = state;
  if (events_.on_state) events_.on_state(state);
}

void SyncSession::send(const transport::Frame& frame) {
  if (!closed_) connection_->send(transport::encode_frame(frame));
}

void SyncSession::start() {
  set_state(SyncState::kConnecting);
  transport::Hello hello;
  hello.site = replica_.site_id();
  hello.ns = options_.ns;
  hello.token = options_.token;
  hello.held = replica_.version_vector();
  // The schema with its ids and the last migration's number: the relay tells an older or newer
  // version from a conflicting one (docs/protocol.md, "Schema versions").
  hello_schema_ = storage::format_manifest(replica_.schema_manifest());
  hello.schema_fingerprint = hello_schema_;
  hello.schema_version = static_cast<std::uint64_t>(replica_.schema_version());
  // Acknowledged, or (in files from before triggers version 6) older than the log kept:
  // transactions whose tags the relay cannot be shown, which it would otherwise refuse to count
  // for ever.
  hello.acked_seq = replica_.untagged_through();
  // The relay compares these with what it has of our site id after acked_seq, which another
  // copy can only have extended from there. A hello must be small (the relay's limit before
  // authentication, docs/protocol.md): 1,024 entries (16 KiB); later transactions are compared
  // when they are pushed, with each batch's origin log.
  constexpr std::uint64_t kMaxHelloLog = 1'023;
  hello.own_log = replica_.local_log(
      hello.acked_seq, std::min(hello.held.get(hello.site), hello.acked_seq + kMaxHelloLog));
  send(hello);
}

void SyncSession::request_digest(std::function<void(const std::string&)> on_digest) {
  const std::uint64_t nonce = next_nonce_++;
  digest_waiters_[nonce] = std::move(on_digest);
  send(transport::DigestRequest{nonce});
}

void SyncSession::close(const std::string& reason) {
  if (!closed_) connection_->close(reason);
}

void SyncSession::push_local_changes() {
  if (closed_ || (state_ != SyncState::kSyncing && state_ != SyncState::kLive)) return;
  if (outgoing_) return;  // after its last piece (send_pieces)
  // One batch in flight at a time: what is written meanwhile goes together in the next one,
  // when the acknowledgement comes back (on_frame, Ack), in one frame instead of one per write.
  if (!in_flight_.empty()) return;
  // A migration since the hello: the relay judges the new version before it takes its writes.
  if (storage::format_manifest(replica_.schema_manifest()) != hello_schema_)
    return close("the replica's schema changed: reconnecting to present its new version");
  const crdt::SiteId& own = replica_.site_id();
  crdt::VersionVector sent = relay_held_;
  for (const auto& [batch, until] : in_flight_) sent.merge(until);
  sent.merge(skipped_);
  crdt::Changeset changeset;
  for (;;) {
    crdt::Changeset extracted = replica_.changes_since(sent, options_.max_batch_changes);
    const crdt::VersionVector extracted_until = extracted.until;
    // A device speaks only for its own site id (docs/protocol.md, "What a peer may claim"):
    // other sites' changes that reached this file by other means go to the relay from their
    // own device. They are stepped over for the rest of this connection.
    for (const auto& [site, seq] : extracted_until.entries())
      if (site != own) skipped_.advance(site, seq);
    changeset = transport::own_changes_only(std::move(extracted), own);
    // The origin log lists every own transaction the batch covers; past the log limit (many
    // transactions whose writes were all superseded), the batch stops at the limit. A row
    // written both within and after the batch's last transaction is extracted as it is now:
    // its parts from later transactions wait for their own batch, since the relay accepts
    // nothing of ours past the batch's `until`.
    // (The limit is read before the call: arguments are evaluated in no fixed order, and the
    // first one moves the changeset away.)
    const std::uint64_t from = sent.get(own);
    const std::uint64_t limit =
        std::min(changeset.until.get(own), from + transport::kMaxLogEntries);
    changeset = transport::clamp_own_claims(std::move(changeset), own, limit);
    // A batch without rows still matters when it moves the relay's vector: writes that were
    // superseded here before they went out leave nothing to send, but the relay must learn
    // they are covered, or the two vectors never agree.
    if (!changeset.rows.empty() || !sent.dominates(changeset.until)) break;
    if (sent.dominates(extracted_until)) return;  // nothing left to send
    sent.merge(extracted_until);                  // only other sites' changes: step over them
  }
  const std::uint64_t batch = next_batch_++;
  in_flight_[batch] = changeset.until;
  transport::Changes frame{batch, crdt::encode_changeset(changeset),
                           replica_.local_log(sent.get(own) + 1, changeset.until.get(own))};
  // One transaction larger than a batch or a frame goes in pieces (protocol 3), paced by the
  // connection (on_drained); the relay merges it whole.
  if (protocol_ >= 3 && (frame.changeset.size() > options_.piece_bytes ||
                         changeset.change_count() > options_.max_batch_changes)) {
    outgoing_ = std::move(frame);
    outgoing_at_ = 0;
    return send_pieces();
  }
  send(frame);
  // The rest of a large backlog follows when this batch is acknowledged (on_frame, Ack).
}

void SyncSession::send_pieces() {
  // At least two pieces, so that a batch over max_batch_changes never travels in one frame.
  const std::string& bytes = outgoing_->changeset;
  const std::size_t piece =
      std::max<std::size_t>(1, std::min(options_.piece_bytes, (bytes.size() + 1) / 2));
  for (int i = 0; i < 4 && !closed_; ++i) {  // a few at a time: the rest when these have left
    if (bytes.size() - outgoing_at_ <= piece) {
      outgoing_->changeset.erase(0, outgoing_at_);
      send(*outgoing_);
      outgoing_.reset();
      return push_local_changes();  // what was written meanwhile
    }
    send(
        transport::ChangesPiece{outgoing_->batch, outgoing_at_, bytes.substr(outgoing_at_, piece)});
    outgoing_at_ += piece;
  }
}

void SyncSession::on_changes(transport::Changes& changes) {
  if (!incoming_.empty()) {  // the last bytes of a changeset that came in pieces
    incoming_ += changes.changeset;
    changes.changeset = std::move(incoming_);
    incoming_.clear();
  }
  try {
    merge_from_relay(decode_from_relay(changes.changeset));
  } catch (const Error& e) {
    return refuse_changeset(e.what());
  }
  set_state(SyncState::kLive);
}

void SyncSession::on_delta(transport::Delta& delta) {
  if (!incoming_.empty())
    return refuse_frame("a delta between the pieces of changeset " +
                        std::to_string(incoming_batch_));
  if (delta.previous != 0 && delta.previous != delta_group_)
    return refuse_frame("a delta following group " + std::to_string(delta.previous) +
                        " where the last delta was " +
                        (delta_group_ == 0 ? std::string("none") : std::to_string(delta_group_)));
  try {
    crdt::Changeset changeset = decode_from_relay(delta.changeset);
    if (delta.previous != 0) {
      // It starts where the last delta ended, and lists only the entries that moved.
      if (!changeset.since.entries().empty())
        throw Error(ErrorCode::kCorrupt, "delta of group " + std::to_string(delta.group) +
                                             ": a delta following another has no since");
      crdt::VersionVector until = delta_until_;
      for (const auto& [site, seq] : changeset.until.entries()) {
        if (seq <= until.get(site))
          throw Error(ErrorCode::kCorrupt, "delta of group " + std::to_string(delta.group) +
                                               ": until[" + site.to_hex() +
                                               "] = " + std::to_string(seq) + " does not move it");
        until.advance(site, seq);
      }
      changeset.since = std::move(delta_until_);  // kept again below, as the new until
      changeset.until = std::move(until);
    }
    delta_until_ = changeset.until;
    delta_group_ = delta.group;
    merge_from_relay(std::move(changeset));
  } catch (const Error& e) {
    return refuse_changeset(e.what());
  }
  set_state(SyncState::kLive);
}

crdt::Changeset SyncSession::decode_from_relay(std::string_view bytes) {
  crdt::DecodeLimits limits;
  limits.max_bytes = std::max(options_.max_transaction_bytes, transport::kDefaultMaxFrameBytes);
  return crdt::decode_changeset(bytes, limits);
}

void SyncSession::merge_from_relay(crdt::Changeset received) {
  // The relay speaks for every site but ours: of our own it may tell us nothing we did not
  // write, so no relay can move our sequence counter (docs/protocol.md).
  const crdt::SiteId& own = replica_.site_id();
  const crdt::Changeset changeset =
      transport::clamp_own_claims(std::move(received), own, replica_.version_vector().get(own));
  replica_.apply(changeset);
  // What the relay holds of our own site id is learnt from its welcome and its
  // acknowledgements only: a changeset's `until` may repeat what we told it we hold.
  for (const auto& [site, seq] : changeset.until.entries())
    if (site != own) relay_held_.advance(site, seq);
}

void SyncSession::refuse_changeset(const std::string& why) {
  send(transport::ErrorFrame{transport::WireError::kBadChangeset, why});
  close("bad changeset from relay: " + why);
}

void SyncSession::refuse_frame(const std::string& why) {
  send(transport::ErrorFrame{transport::WireError::kMalformed, why});
  close("malformed frame from relay: " + why);
}

bool SyncSession::in_sync() {
  if (state_ != SyncState::kLive || !in_flight_.empty()) return false;
  const crdt::VersionVector mine = replica_.version_vector();
  return relay_held_.dominates(mine) && mine.dominates(relay_held_);
}

void SyncSession::acknowledge() {
  try {
    replica_.acknowledge(relay_held_.get(replica_.site_id()));
  } catch (const Error&) {
    // The file was busy past the timeout: the log is pruned at the next acknowledgement
    // instead, and nothing else depends on it.
  }
}

std::uint64_t SyncSession::pending() { return replica_.local_changes_after(relay_held_); }

void SyncSession::on_frame(std::string_view bytes) {
  transport::Frame frame;
  try {
    frame = transport::decode_frame(bytes);
  } catch (const Error& e) {
    return refuse_frame(e.what());
  }
  if (auto* welcome = std::get_if<transport::Welcome>(&frame)) {
    const crdt::SiteId& own = replica_.site_id();
    const std::uint64_t own_head = replica_.version_vector().get(own);
    protocol_ = welcome->protocol_version;
    relay_held_ = crdt::VersionVector();
    for (const auto& [site, seq] : welcome->held.entries())
      relay_held_.advance(site, site == own ? std::min(seq, own_head) : seq);
    // The relay checked our history against its own before welcoming us (no rekey), so what
    // it holds of our site id is ours.
    acknowledge();
    set_state(SyncState::kSyncing);
    push_local_changes();
  } else if (auto* piece = std::get_if<transport::ChangesPiece>(&frame)) {
    if (incoming_.empty()) incoming_batch_ = piece->batch;
    if (piece->batch != incoming_batch_)
      return refuse_frame("a piece of changeset " + std::to_string(piece->batch) +
                          " where changeset " + std::to_string(incoming_batch_) +
                          " was unfinished");
    if (piece->offset != incoming_.size())
      return refuse_frame("a piece at offset " + std::to_string(piece->offset) + " where " +
                          std::to_string(incoming_.size()) + " was next");
    if (incoming_.size() + piece->piece.size() > options_.max_transaction_bytes) {
      const std::string why = "a changeset in pieces over the limit of " +
                              std::to_string(options_.max_transaction_bytes) + " bytes";
      send(transport::ErrorFrame{transport::WireError::kBatchTooLarge, why});
      return close(why);
    }
    incoming_ += piece->piece;
  } else if (auto* delta = std::get_if<transport::Delta>(&frame)) {
    on_delta(*delta);
  } else if (auto* changes = std::get_if<transport::Changes>(&frame)) {
    // The last bytes of a changeset in pieces name it: joined to another's pieces, they could
    // decode into rows neither changeset holds.
    if (!incoming_.empty() && changes->batch != incoming_batch_)
      return refuse_frame("a changes frame of changeset " + std::to_string(changes->batch) +
                          " where changeset " + std::to_string(incoming_batch_) +
                          " was unfinished");
    on_changes(*changes);
  } else if (auto* ack = std::get_if<transport::Ack>(&frame)) {
    // The relay's vector counts our site id's transactions that another copy of this file
    // may have sent; only those of the acknowledged batch are known to be ours.
    auto batch = in_flight_.find(ack->batch);
    if (batch != in_flight_.end()) {
      const crdt::SiteId& own = replica_.site_id();
      crdt::VersionVector held;
      for (const auto& [site, seq] : ack->held.entries())
        held.advance(site, site == own ? std::min(seq, batch->second.get(own)) : seq);
      relay_held_.merge(held);
      in_flight_.erase(batch);
      if (ack->group != 0) {  // the group this batch was all of: the next delta may follow it
        delta_group_ = ack->group;
        delta_until_ = std::move(ack->held);
      }
    }
    acknowledge();
    // Changes written while the batch was in flight go now.
    push_local_changes();
  } else if (auto* error = std::get_if<transport::ErrorFrame>(&frame)) {
    if (events_.on_error) events_.on_error(*error);
    close(std::string("relay error: ") + error->message);
  } else if (auto* rekey = std::get_if<transport::Rekey>(&frame)) {
    try {
      replica_.rekey(rekey->keep_through);
    } catch (const Error& e) {
      return close(std::string("rekey failed: ") + e.what());
    }
    if (events_.on_rekey) events_.on_rekey(*rekey);
    close("rekeyed: " + rekey->reason);
  } else if (auto* ping = std::get_if<transport::Ping>(&frame)) {
    send(transport::Pong{ping->nonce});
  } else if (auto* digest = std::get_if<transport::Digest>(&frame)) {
    auto waiter = digest_waiters_.find(digest->nonce);
    if (waiter == digest_waiters_.end()) return;
    auto on_digest = std::move(waiter->second);
    digest_waiters_.erase(waiter);
    on_digest(digest->summary);
  }
}

}  // namespace lattice::engine
