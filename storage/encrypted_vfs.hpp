// Replica files encrypted at rest: a SQLite VFS that encrypts every page of a database file and
// of its write-ahead log with AES-256-GCM (docs/encryption.md).
//
// Each page of 4,096 bytes keeps its last kReservedBytes for SQLite's "reserved" area, where this
// VFS stores the page's nonce (12 bytes, never the same twice) and tag (16 bytes); the page
// number is authenticated with it, so a page moved to another place fails to decrypt like one
// with a flipped bit. Temporary files of an encrypted connection (statement journals, sorts) are
// encrypted under a key made for the process. Files a connection attaches without a key (a
// snapshot) are read and written as they are.
//
// Replica::open uses this when ReplicaOptions::encryption_key is set; nothing else needs to.

#ifndef LATTICE_STORAGE_ENCRYPTED_VFS_HPP
#define LATTICE_STORAGE_ENCRYPTED_VFS_HPP

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace lattice::storage {

// The key an application supplies for a replica file: 256 bits.
using FileKey = std::array<std::uint8_t, 32>;

// Parses 64 hexadecimal digits (surrounding whitespace ignored), as a key file holds them;
// throws Error(kInvalidArgument) naming `what` otherwise.
FileKey parse_file_key(std::string_view hex, const std::string& what);

// Reads a key file: 64 hexadecimal digits. Throws Error(kIo) when it cannot be read and
// Error(kInvalidArgument) when it does not hold a key, naming the file.
FileKey read_file_key(const std::string& path);

// Page size and reserved bytes of an encrypted database file.
inline constexpr int kEncryptedPageSize = 4096;
inline constexpr int kReservedBytes = 28;  // nonce (12) and tag (16)

// The name of the encrypting VFS, registered (not as the default) at the first call.
const char* encrypted_vfs_name();

// While it lives, the database file at `path` (and its write-ahead log) opened through the
// encrypting VFS is encrypted under `key`. Opening a file through that VFS with no key
// registered reads and writes it unencrypted. Registering a file already registered under
// another key throws Error(kKey); under the same key, registrations count.
class FileKeyRegistration {
 public:
  FileKeyRegistration(const std::string& path, const FileKey& key);
  ~FileKeyRegistration();
  FileKeyRegistration(const FileKeyRegistration&) = delete;
  FileKeyRegistration& operator=(const FileKeyRegistration&) = delete;

 private:
  std::string name_;  // the path as SQLite names the file
};

}  // namespace lattice::storage

#endif  // LATTICE_STORAGE_ENCRYPTED_VFS_HPP
