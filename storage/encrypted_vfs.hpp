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

struct sqlite3;

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
  friend void rotate_file_key(sqlite3* db, FileKeyRegistration& registration,
                              const FileKey& new_key);

  FileKeyRegistration(const std::string& path, const FileKey& key);
  ~FileKeyRegistration();
  FileKeyRegistration(const FileKeyRegistration&) = delete;
  FileKeyRegistration& operator=(const FileKeyRegistration&) = delete;

 private:
  std::string name_;  // the path as SQLite names the file
};

// A database file this VFS encrypted (a relay's snapshot file), read as its plaintext: the bytes
// SQLite reads through the VFS, reserved areas zero. For sending it to a device over TLS.
class EncryptedFileReader {
 public:
  // Opens the file at `path`, encrypted under `key`. Throws Error(kIo) when it cannot.
  EncryptedFileReader(const std::string& path, const FileKey& key);
  ~EncryptedFileReader();
  EncryptedFileReader(const EncryptedFileReader&) = delete;
  EncryptedFileReader& operator=(const EncryptedFileReader&) = delete;

  // The file's size, the same in plaintext.
  std::uint64_t size() const { return size_; }
  // Reads `n` plaintext bytes from `offset` into `out`; false when they are not all in the file
  // or a page they touch fails to authenticate.
  bool read(std::uint64_t offset, unsigned char* out, std::size_t n);

 private:
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::array<std::uint8_t, 32> page_key_{};
};

// Whether the database file at `path` is encrypted under `key`: its first page authenticates.
// False for a plain file or another key; throws Error(kIo) when it cannot be read. Reads one page
// and needs no SQLite connection (a relay checks its files at start).
bool file_opens_under(const std::string& path, const FileKey& key);

// Re-encrypts, in place, the database file `db` has open through the encrypting VFS under
// `registration`, with `new_key`, which the registration (and every handle `db` has on the file)
// then holds. For Replica::rotate_key, which first takes the file's exclusive lock and empties
// its write-ahead log: nothing else reads or writes the file meanwhile. Other registrations of
// the file in this process follow the new key; a connection that opened the file under the old
// one and had not read it yet fails its first read (kKey), writing nothing. Throws
// Error(kCorrupt) when a page fails to authenticate (before anything is written), kIo when the
// disk fails.
//
// Crash-safe: the file's pages as they were are first written to "<file>-rotate" and synced,
// and the next opening of the file through the VFS (by any key, or none) puts them back while
// that journal exists; it is removed once every page is rewritten and synced. So a file is
// wholly under one key or the other, whenever the process stops.
void rotate_file_key(sqlite3* db, FileKeyRegistration& registration, const FileKey& new_key);

}  // namespace lattice::storage

#endif  // LATTICE_STORAGE_ENCRYPTED_VFS_HPP
