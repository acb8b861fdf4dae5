// The encrypting VFS (encrypted_vfs.hpp): what it does to each kind of file SQLite opens.
//
// - The database file: pages of kEncryptedPageSize bytes. Bytes [0, P-28) of a page are its
//   AES-256-GCM ciphertext, then the 12-byte nonce and the 16-byte tag, in the area SQLite leaves
//   free when the file's "reserved bytes" say 28. The associated data is the page number, so a
//   page copied over another fails. The first 100 bytes (SQLite's header) are encrypted too, so
//   nothing tells the file's page size: it is fixed.
// - The write-ahead log: a 32-byte header and frames of a 24-byte header and a page. Headers hold
//   page numbers, sizes, salts and checksums, no content, and stay as they are; a frame's page is
//   encrypted as in the database file, under its page number. SQLite checksums frames over what it
//   hands the VFS (the plaintext), so recovery after a crash sees a torn frame, whose tag fails,
//   as the end of the log: when a read spans a frame's header, a page that fails is returned as
//   zeros and SQLite's checksum drops it. A page read alone (a committed frame) that fails is an
//   error, as in the database file.
// - Rollback journals would hold plaintext page images: an encrypted database stays in WAL mode,
//   and opening its rollback journal fails.
// - Temporary files (statement journals, sorts, VACUUM's copy) have no page structure and live
//   only while open: AES-256-CTR under a random key per file, the counter from the offset.
// - Anything else (a file attached without a key) goes through unchanged.
// - Key rotation (rotate_file_key) rewrites every page of the database file in place, after a
//   journal of the pages as they were ("<file>-rotate"); opening the file puts that journal back
//   while it exists, so a rotation cut short leaves the file under its old key.

#include "storage/encrypted_vfs.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <thread>
#include <vector>

#include "crdt/error.hpp"
#include "crdt/hex.hpp"

namespace lattice::storage {

namespace {

constexpr int kPage = kEncryptedPageSize;
constexpr int kBody = kPage - kReservedBytes;  // the encrypted part of a page
constexpr int kNonce = 12;
constexpr int kTag = 16;
constexpr int kWalHeader = 32;
constexpr int kFrameHeader = 24;
constexpr int kFrame = kFrameHeader + kPage;

using PageKey = std::array<std::uint8_t, 32>;

// The page key: HKDF-SHA256 of the application's key, so that the same key material can serve
// another purpose (a later format, end-to-end keys) without two uses of one AES key.
PageKey derive_page_key(const FileKey& key) {
  PageKey out{};
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr);
  static constexpr unsigned char kInfo[] = "lattice replica pages v1";
  std::size_t length = out.size();
  const bool ok = ctx && EVP_PKEY_derive_init(ctx) > 0 &&
                  EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) > 0 &&
                  EVP_PKEY_CTX_set1_hkdf_key(ctx, key.data(), static_cast<int>(key.size())) > 0 &&
                  EVP_PKEY_CTX_add1_hkdf_info(ctx, kInfo, sizeof kInfo - 1) > 0 &&
                  EVP_PKEY_derive(ctx, out.data(), &length) > 0 && length == out.size();
  EVP_PKEY_CTX_free(ctx);
  if (!ok) throw Error(ErrorCode::kInternal, "cannot derive the page key (OpenSSL HKDF failed)");
  return out;
}

// --- The keys of registered files, by the name SQLite gives them.

struct Registered {
  PageKey key;
  int count = 0;
};

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, Registered>& registry() {
  static std::map<std::string, Registered> r;
  return r;
}

bool registered_key(const char* name, PageKey& out) {
  if (!name) return false;
  std::lock_guard lock(registry_mutex());
  auto it = registry().find(name);
  if (it == registry().end()) return false;
  out = it->second.key;
  return true;
}

// --- Files.

enum class Kind { kPlain, kDatabase, kWal, kTemp };

struct File {
  sqlite3_file base;  // must come first: SQLite sees a File as a sqlite3_file
  sqlite3_file* real;
  Kind kind;
  EVP_CIPHER_CTX* encrypt;
  EVP_CIPHER_CTX* decrypt;
  std::uint8_t temp_key[32];
  // Nonces: 96 random bits drawn when the file opens, plus the number of pages sealed since in
  // the low 64 bits. Two opens of one file collide only if their random bases fall within as
  // many writes of each other, so this is as safe as a random nonce per page, at half the cost
  // of sealing a page (RAND_bytes takes about as long as encrypting it).
  std::uint8_t nonce_base[12];
  std::uint64_t sealed;
  // The WAL frame header written last: the page that follows it is encrypted under its number.
  sqlite3_int64 header_offset;
  std::uint32_t header_page;
};

File* as_file(sqlite3_file* f) { return reinterpret_cast<File*>(f); }

sqlite3_vfs* real_vfs() {
  static sqlite3_vfs* vfs = sqlite3_vfs_find(nullptr);
  return vfs;
}

std::uint32_t read_be32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// What a page's tag authenticates besides its bytes: its number, big-endian.
std::array<unsigned char, 4> page_aad(std::uint32_t page) {
  return {static_cast<unsigned char>(page >> 24), static_cast<unsigned char>(page >> 16),
          static_cast<unsigned char>(page >> 8), static_cast<unsigned char>(page)};
}

// The page number in the WAL frame header at `header`, read from the file.
int read_frame_page(File* f, sqlite3_int64 header, std::uint32_t& page) {
  unsigned char bytes[4];
  const int rc = f->real->pMethods->xRead(f->real, bytes, 4, header);
  if (rc == SQLITE_OK) page = read_be32(bytes);
  return rc;
}

// Encrypts the page `plain` (kPage bytes; its reserved area is ignored) into `out`.
bool seal_page(File* f, std::uint32_t page, const unsigned char* plain, unsigned char* out) {
  unsigned char* nonce = out + kBody;
  unsigned char* tag = nonce + kNonce;
  std::memcpy(nonce, f->nonce_base, kNonce);
  std::uint64_t low = 0;
  for (int i = 4; i < kNonce; ++i) low = (low << 8) | nonce[i];
  low += f->sealed++;
  for (int i = kNonce - 1; i >= 4; --i, low >>= 8) nonce[i] = static_cast<unsigned char>(low);
  const auto aad = page_aad(page);
  int n = 0;
  return EVP_EncryptInit_ex(f->encrypt, nullptr, nullptr, nullptr, nonce) == 1 &&
         EVP_EncryptUpdate(f->encrypt, nullptr, &n, aad.data(), aad.size()) == 1 &&
         EVP_EncryptUpdate(f->encrypt, out, &n, plain, kBody) == 1 && n == kBody &&
         EVP_EncryptFinal_ex(f->encrypt, out + n, &n) == 1 &&
         EVP_CIPHER_CTX_ctrl(f->encrypt, EVP_CTRL_GCM_GET_TAG, kTag, tag) == 1;
}

// Decrypts the page at `p` in place, zeroing its reserved area; false when it fails to
// authenticate. A page of zeros fails too: SQLite writes every page inside its file, so zeros
// there were put by someone else (and would otherwise cut a long value short unseen).
bool open_page(File* f, std::uint32_t page, unsigned char* p) {
  unsigned char nonce[kNonce], tag[kTag];
  std::memcpy(nonce, p + kBody, kNonce);
  std::memcpy(tag, p + kBody + kNonce, kTag);
  const auto aad = page_aad(page);
  int n = 0;
  const bool ok = EVP_DecryptInit_ex(f->decrypt, nullptr, nullptr, nullptr, nonce) == 1 &&
                  EVP_DecryptUpdate(f->decrypt, nullptr, &n, aad.data(), aad.size()) == 1 &&
                  EVP_DecryptUpdate(f->decrypt, p, &n, p, kBody) == 1 &&
                  EVP_CIPHER_CTX_ctrl(f->decrypt, EVP_CTRL_GCM_SET_TAG, kTag, tag) == 1 &&
                  EVP_DecryptFinal_ex(f->decrypt, p + kBody, &n) == 1;
  std::memset(p + kBody, 0, kReservedBytes);
  if (!ok) std::memset(p, 0, kPage);
  return ok;
}

// XORs `n` bytes at `p`, which sit at `offset` in a temporary file, with its key stream.
bool temp_crypt(File* f, unsigned char* p, int n, sqlite3_int64 offset) {
  const sqlite3_int64 first = offset / 16, skip = offset % 16;
  unsigned char counter[16] = {};
  for (int i = 0; i < 8; ++i) counter[15 - i] = static_cast<unsigned char>(first >> (8 * i));
  std::vector<unsigned char> stream(static_cast<std::size_t>(skip + n));
  int out = 0;
  if (EVP_EncryptInit_ex(f->encrypt, nullptr, nullptr, nullptr, counter) != 1 ||
      EVP_EncryptUpdate(f->encrypt, stream.data(), &out, stream.data(),
                        static_cast<int>(stream.size())) != 1)
    return false;
  for (int i = 0; i < n; ++i) p[i] ^= stream[static_cast<std::size_t>(skip + i)];
  return true;
}

// --- The database file.

int database_read(File* f, unsigned char* out, int amount, sqlite3_int64 offset) {
  // SQLite reads whole pages, except the first 100 bytes of the file before it knows anything.
  int result = SQLITE_OK;
  unsigned char page[kPage];
  for (sqlite3_int64 at = offset; at < offset + amount;) {
    const sqlite3_int64 index = at / kPage, start = index * kPage;
    const int skip = static_cast<int>(at - start);
    const int take = static_cast<int>(std::min<sqlite3_int64>(kPage - skip, offset + amount - at));
    const bool whole = skip == 0 && take == kPage;
    unsigned char* target = whole ? out + (at - offset) : page;
    const int rc = f->real->pMethods->xRead(f->real, target, kPage, start);
    if (rc == SQLITE_IOERR_SHORT_READ) {
      std::memset(target, 0, kPage);  // past the end, or a torn last page: SQLite sees zeros
      result = rc;
    } else if (rc != SQLITE_OK) {
      return rc;
    } else if (!open_page(f, static_cast<std::uint32_t>(index + 1), target)) {
      return SQLITE_IOERR_AUTH;
    }
    if (!whole) std::memcpy(out + (at - offset), page + skip, static_cast<std::size_t>(take));
    at += take;
  }
  return result;
}

int database_write(File* f, const unsigned char* in, int amount, sqlite3_int64 offset) {
  if (offset % kPage != 0 || amount != kPage) return SQLITE_IOERR_WRITE;
  unsigned char page[kPage];
  if (!seal_page(f, static_cast<std::uint32_t>(offset / kPage + 1), in, page))
    return SQLITE_IOERR_WRITE;
  return f->real->pMethods->xWrite(f->real, page, kPage, offset);
}

// --- The write-ahead log.

int wal_read(File* f, unsigned char* out, int amount, sqlite3_int64 offset) {
  const int rc = f->real->pMethods->xRead(f->real, out, amount, offset);
  if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) return rc;
  const sqlite3_int64 end = offset + amount;
  if (end <= kWalHeader) return rc;
  sqlite3_int64 frame = std::max<sqlite3_int64>(0, (offset - kWalHeader) / kFrame);
  for (;; ++frame) {
    const sqlite3_int64 header = kWalHeader + frame * kFrame, data = header + kFrameHeader;
    if (data >= end) break;
    if (data + kPage <= offset) continue;
    const bool header_read = header >= offset;  // a read of whole frames: recovery
    std::uint32_t page = 0;
    if (header_read) {
      page = read_be32(out + (header - offset));
    } else if (const int prc = read_frame_page(f, header, page); prc != SQLITE_OK) {
      return prc == SQLITE_IOERR_SHORT_READ ? SQLITE_IOERR_READ : prc;
    }
    bool ok;
    if (data >= offset && data + kPage <= end) {
      ok = open_page(f, page, out + (data - offset));
    } else {
      unsigned char buffer[kPage];
      const int prc = f->real->pMethods->xRead(f->real, buffer, kPage, data);
      if (prc == SQLITE_IOERR_SHORT_READ)
        std::memset(buffer, 0, kPage);
      else if (prc != SQLITE_OK)
        return prc;
      ok = open_page(f, page, buffer);
      const sqlite3_int64 from = std::max(offset, data), to = std::min(end, data + kPage);
      std::memcpy(out + (from - offset), buffer + (from - data),
                  static_cast<std::size_t>(to - from));
    }
    if (!ok && !header_read) return SQLITE_IOERR_AUTH;
  }
  return rc;
}

int wal_write(File* f, const unsigned char* in, int amount, sqlite3_int64 offset) {
  if (offset + amount <= kWalHeader) return f->real->pMethods->xWrite(f->real, in, amount, offset);
  if (offset < kWalHeader) return SQLITE_IOERR_WRITE;
  const sqlite3_int64 within = (offset - kWalHeader) % kFrame;
  if (within == 0 && amount == kFrameHeader) {
    f->header_offset = offset;
    f->header_page = read_be32(in);
    return f->real->pMethods->xWrite(f->real, in, amount, offset);
  }
  unsigned char frame[kFrame];
  if (within == 0 && amount == kFrame) {
    std::memcpy(frame, in, kFrameHeader);
    if (!seal_page(f, read_be32(in), in + kFrameHeader, frame + kFrameHeader))
      return SQLITE_IOERR_WRITE;
    return f->real->pMethods->xWrite(f->real, frame, kFrame, offset);
  }
  if (within != kFrameHeader || amount != kPage) return SQLITE_IOERR_WRITE;
  std::uint32_t page = f->header_page;
  if (f->header_offset != offset - kFrameHeader &&
      read_frame_page(f, offset - kFrameHeader, page) != SQLITE_OK)
    return SQLITE_IOERR_WRITE;
  if (!seal_page(f, page, in, frame)) return SQLITE_IOERR_WRITE;
  return f->real->pMethods->xWrite(f->real, frame, kPage, offset);
}

// --- The io methods: reads and writes transformed by kind, the rest forwarded.

int x_close(sqlite3_file* file) {
  File* f = as_file(file);
  const int rc = f->real->pMethods ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
  EVP_CIPHER_CTX_free(f->encrypt);
  EVP_CIPHER_CTX_free(f->decrypt);
  OPENSSL_cleanse(f->temp_key, sizeof f->temp_key);
  return rc;
}

int x_read(sqlite3_file* file, void* out, int amount, sqlite3_int64 offset) {
  File* f = as_file(file);
  auto* bytes = static_cast<unsigned char*>(out);
  switch (f->kind) {
    case Kind::kDatabase:
      return database_read(f, bytes, amount, offset);
    case Kind::kWal:
      return wal_read(f, bytes, amount, offset);
    case Kind::kTemp: {
      const int rc = f->real->pMethods->xRead(f->real, out, amount, offset);
      if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) return rc;
      if (!temp_crypt(f, bytes, amount, offset)) return SQLITE_IOERR_READ;
      if (rc == SQLITE_IOERR_SHORT_READ) {
        // Past the end the caller expects zeros, not key stream: find where the file ends.
        sqlite3_int64 size = 0;
        f->real->pMethods->xFileSize(f->real, &size);
        if (size < offset + amount) {
          const sqlite3_int64 from = std::max(size, offset);
          std::memset(bytes + (from - offset), 0, static_cast<std::size_t>(offset + amount - from));
        }
      }
      return rc;
    }
    case Kind::kPlain:
      break;
  }
  return f->real->pMethods->xRead(f->real, out, amount, offset);
}

int x_write(sqlite3_file* file, const void* in, int amount, sqlite3_int64 offset) {
  File* f = as_file(file);
  const auto* bytes = static_cast<const unsigned char*>(in);
  switch (f->kind) {
    case Kind::kDatabase:
      return database_write(f, bytes, amount, offset);
    case Kind::kWal:
      return wal_write(f, bytes, amount, offset);
    case Kind::kTemp: {
      std::vector<unsigned char> copy(bytes, bytes + amount);
      if (!temp_crypt(f, copy.data(), amount, offset)) return SQLITE_IOERR_WRITE;
      return f->real->pMethods->xWrite(f->real, copy.data(), amount, offset);
    }
    case Kind::kPlain:
      break;
  }
  return f->real->pMethods->xWrite(f->real, in, amount, offset);
}

#define LATTICE_FORWARD(name, params, args)   \
  int x_##name params {                       \
    sqlite3_file* real = as_file(file)->real; \
    return real->pMethods->x##name args;      \
  }
LATTICE_FORWARD(Truncate, (sqlite3_file * file, sqlite3_int64 size), (real, size))
LATTICE_FORWARD(Sync, (sqlite3_file * file, int flags), (real, flags))
LATTICE_FORWARD(FileSize, (sqlite3_file * file, sqlite3_int64* size), (real, size))
LATTICE_FORWARD(Lock, (sqlite3_file * file, int level), (real, level))
LATTICE_FORWARD(Unlock, (sqlite3_file * file, int level), (real, level))
LATTICE_FORWARD(CheckReservedLock, (sqlite3_file * file, int* out), (real, out))
LATTICE_FORWARD(FileControl, (sqlite3_file * file, int op, void* arg), (real, op, arg))
LATTICE_FORWARD(SectorSize, (sqlite3_file * file), (real))
LATTICE_FORWARD(DeviceCharacteristics, (sqlite3_file * file), (real))
LATTICE_FORWARD(ShmMap, (sqlite3_file * file, int region, int size, int extend, void volatile** p),
                (real, region, size, extend, p))
LATTICE_FORWARD(ShmLock, (sqlite3_file * file, int offset, int n, int flags),
                (real, offset, n, flags))
LATTICE_FORWARD(ShmUnmap, (sqlite3_file * file, int remove), (real, remove))
#undef LATTICE_FORWARD

void x_ShmBarrier(sqlite3_file* file) {
  sqlite3_file* real = as_file(file)->real;
  real->pMethods->xShmBarrier(real);
}

// Version 2: shared memory for WAL, but no xFetch, so SQLite never maps the (encrypted) file.
const sqlite3_io_methods kMethods = {2,
                                     x_close,
                                     x_read,
                                     x_write,
                                     x_Truncate,
                                     x_Sync,
                                     x_FileSize,
                                     x_Lock,
                                     x_Unlock,
                                     x_CheckReservedLock,
                                     x_FileControl,
                                     x_SectorSize,
                                     x_DeviceCharacteristics,
                                     x_ShmMap,
                                     x_ShmLock,
                                     x_ShmBarrier,
                                     x_ShmUnmap,
                                     nullptr,
                                     nullptr};

EVP_CIPHER_CTX* cipher(const EVP_CIPHER* type, const unsigned char* key, bool encrypt) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (!ctx) return nullptr;
  const int ok = encrypt ? EVP_EncryptInit_ex(ctx, type, nullptr, key, nullptr)
                         : EVP_DecryptInit_ex(ctx, type, nullptr, key, nullptr);
  if (ok != 1) {
    EVP_CIPHER_CTX_free(ctx);
    return nullptr;
  }
  return ctx;
}

// --- Key rotation's journal: "<file>-rotate", a header (magic, page count) and the file's pages as
// they were, bytes unchanged.

constexpr char kRotateMagic[16] = "lattice-rotate1";
constexpr int kRotateHeader = 32;

std::string rotate_journal(const std::string& name) { return name + "-rotate"; }

bool pwrite_all(int fd, const unsigned char* p, std::size_t n, off_t at) {
  while (n > 0) {
    const ssize_t done = ::pwrite(fd, p, n, at);
    if (done <= 0) return false;
    p += done, n -= static_cast<std::size_t>(done), at += done;
  }
  return true;
}

bool pread_all(int fd, unsigned char* p, std::size_t n, off_t at) {
  while (n > 0) {
    const ssize_t done = ::pread(fd, p, n, at);
    if (done <= 0) return false;
    p += done, n -= static_cast<std::size_t>(done), at += done;
  }
  return true;
}

// Makes a rename or an unlink in the directory of `path` durable.
bool sync_directory_of(const std::string& path) {
  const auto slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : path.substr(0, std::max<std::size_t>(slash, 1));
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

// Takes the exclusive lock on the database file `real` as SQLite's locking protocol has it,
// waiting up to five seconds for other connections; SQLITE_BUSY after that.
int lock_exclusive(sqlite3_file* real) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    int rc = real->pMethods->xLock(real, SQLITE_LOCK_SHARED);
    if (rc == SQLITE_OK) rc = real->pMethods->xLock(real, SQLITE_LOCK_RESERVED);
    if (rc == SQLITE_OK) rc = real->pMethods->xLock(real, SQLITE_LOCK_EXCLUSIVE);
    if (rc == SQLITE_OK) return rc;
    real->pMethods->xUnlock(real, SQLITE_LOCK_NONE);
    if ((rc & 0xff) != SQLITE_BUSY || std::chrono::steady_clock::now() > deadline) return rc;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// Copies the pages of a rotation's journal back into the database file `real` and removes the
// journal. The caller holds the file's exclusive lock.
int put_back_rotation(sqlite3_file* real, const std::string& journal) {
  const int fd = ::open(journal.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? SQLITE_OK : SQLITE_IOERR_READ;  // another put it back
  unsigned char header[kRotateHeader];
  struct stat st {};
  std::uint64_t pages = 0;
  bool ok = pread_all(fd, header, sizeof header, 0) && ::fstat(fd, &st) == 0 &&
            std::memcmp(header, kRotateMagic, sizeof kRotateMagic) == 0;
  for (int i = 16; ok && i < 24; ++i) pages = (pages << 8) | header[i];
  ok = ok && pages < (std::uint64_t{1} << 31) &&
       static_cast<std::uint64_t>(st.st_size) == kRotateHeader + pages * kPage;
  if (!ok) {
    ::close(fd);
    return SQLITE_CORRUPT;  // not a journal this VFS wrote whole: leave everything as it is
  }
  unsigned char page[kPage];
  int rc = SQLITE_OK;
  for (std::uint64_t i = 0; rc == SQLITE_OK && i < pages; ++i) {
    const auto at = static_cast<sqlite3_int64>(i * kPage);
    rc = pread_all(fd, page, kPage, kRotateHeader + at)
             ? real->pMethods->xWrite(real, page, kPage, at)
             : SQLITE_IOERR_READ;
  }
  ::close(fd);
  if (rc == SQLITE_OK)
    rc = real->pMethods->xTruncate(real, static_cast<sqlite3_int64>(pages * kPage));
  if (rc == SQLITE_OK) rc = real->pMethods->xSync(real, SQLITE_SYNC_FULL);
  if (rc == SQLITE_OK && (::unlink(journal.c_str()) != 0 || !sync_directory_of(journal)))
    rc = SQLITE_IOERR_DELETE;
  return rc;
}

// When a rotation of the database file `real` named `name` was cut short, puts its pages back.
int recover_rotation(sqlite3_file* real, const std::string& name) {
  const std::string journal = rotate_journal(name);
  if (::access(journal.c_str(), F_OK) != 0) return SQLITE_OK;
  int rc = lock_exclusive(real);
  if (rc == SQLITE_OK) rc = put_back_rotation(real, journal);
  real->pMethods->xUnlock(real, SQLITE_LOCK_NONE);
  return rc;
}

constexpr int kTempFlags = SQLITE_OPEN_TEMP_DB | SQLITE_OPEN_TEMP_JOURNAL | SQLITE_OPEN_SUBJOURNAL |
                           SQLITE_OPEN_TRANSIENT_DB;

int x_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* file, int flags, int* out_flags) {
  File* f = as_file(file);
  f->base.pMethods = nullptr;
  f->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(f) + sizeof(File));
  f->real->pMethods = nullptr;
  f->kind = Kind::kPlain;
  f->encrypt = f->decrypt = nullptr;
  f->header_offset = -1;
  f->header_page = 0;
  f->sealed = 0;
  PageKey key{};
  if ((flags & SQLITE_OPEN_MAIN_DB) && registered_key(name, key)) {
    f->kind = Kind::kDatabase;
  } else if ((flags & (SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_JOURNAL)) && name &&
             registered_key(sqlite3_filename_database(name), key)) {
    if (flags & SQLITE_OPEN_MAIN_JOURNAL) return SQLITE_CANTOPEN;  // plaintext page images
    f->kind = Kind::kWal;
  } else if (flags & kTempFlags) {
    f->kind = Kind::kTemp;
  }
  if (f->kind == Kind::kTemp) {
    if (RAND_bytes(f->temp_key, sizeof f->temp_key) != 1) return SQLITE_CANTOPEN;
    f->encrypt = cipher(EVP_aes_256_ctr(), f->temp_key, true);
    if (!f->encrypt) return SQLITE_CANTOPEN;
  } else if (f->kind != Kind::kPlain) {
    if (RAND_bytes(f->nonce_base, sizeof f->nonce_base) != 1) return SQLITE_CANTOPEN;
    f->encrypt = cipher(EVP_aes_256_gcm(), key.data(), true);
    f->decrypt = cipher(EVP_aes_256_gcm(), key.data(), false);
    OPENSSL_cleanse(key.data(), key.size());
    if (!f->encrypt || !f->decrypt) {
      EVP_CIPHER_CTX_free(f->encrypt);
      EVP_CIPHER_CTX_free(f->decrypt);
      return SQLITE_CANTOPEN;
    }
  }
  int rc = real_vfs()->xOpen(real_vfs(), name, f->real, flags, out_flags);
  if (rc == SQLITE_OK && (flags & SQLITE_OPEN_MAIN_DB) && name) {
    rc = recover_rotation(f->real, name);
    if (rc != SQLITE_OK) f->real->pMethods->xClose(f->real);
  }
  if (rc != SQLITE_OK) {
    EVP_CIPHER_CTX_free(f->encrypt);
    EVP_CIPHER_CTX_free(f->decrypt);
    return rc;
  }
  f->base.pMethods = &kMethods;
  return SQLITE_OK;
}

sqlite3_vfs* encrypted_vfs() {
  static sqlite3_vfs vfs = [] {
    sqlite3_vfs copy = *real_vfs();
    copy.iVersion = std::min(copy.iVersion, 3);
    copy.zName = "lattice-encrypted";
    copy.szOsFile = static_cast<int>(sizeof(File)) + real_vfs()->szOsFile;
    copy.pAppData = nullptr;
    copy.pNext = nullptr;
    copy.xOpen = x_open;
    // The other methods (delete, access, full path names, randomness, time) are the real VFS's;
    // they are called with this struct, which none of the unix VFS's methods read.
    return copy;
  }();
  static const int registered = sqlite3_vfs_register(&vfs, 0);
  (void)registered;
  return &vfs;
}

std::string full_name(const std::string& path) {
  sqlite3_vfs* vfs = real_vfs();
  std::vector<char> buffer(static_cast<std::size_t>(vfs->mxPathname) + 1);
  if (vfs->xFullPathname(vfs, path.c_str(), static_cast<int>(buffer.size()), buffer.data()) !=
      SQLITE_OK)
    throw Error(ErrorCode::kIo, "cannot resolve the path of '" + path + "'");
  return buffer.data();
}

// A page cipher of a database file or WAL: contexts for `key` and a fresh nonce base.
struct PageCipher {
  EVP_CIPHER_CTX* encrypt = nullptr;
  EVP_CIPHER_CTX* decrypt = nullptr;
  std::uint8_t nonce_base[12] = {};
  std::uint64_t sealed = 0;

  explicit PageCipher(const PageKey& key)
      : encrypt(cipher(EVP_aes_256_gcm(), key.data(), true)),
        decrypt(cipher(EVP_aes_256_gcm(), key.data(), false)) {
    if (!encrypt || !decrypt || RAND_bytes(nonce_base, sizeof nonce_base) != 1)
      throw Error(ErrorCode::kInternal, "cannot set up AES-256-GCM (OpenSSL failed)");
  }
  ~PageCipher() {
    EVP_CIPHER_CTX_free(encrypt);
    EVP_CIPHER_CTX_free(decrypt);
  }
  PageCipher(const PageCipher&) = delete;
  PageCipher& operator=(const PageCipher&) = delete;

  // Exchanges this cipher with the one `f` uses.
  void swap_with(File* f) {
    std::swap(encrypt, f->encrypt);
    std::swap(decrypt, f->decrypt);
    std::swap_ranges(nonce_base, nonce_base + sizeof nonce_base, f->nonce_base);
    std::swap(sealed, f->sealed);
  }
};

// The file of `db`'s main database (SQLITE_FCNTL_FILE_POINTER) or of its WAL
// (SQLITE_FCNTL_JOURNAL_POINTER), when this VFS encrypts it.
File* encrypted_file(sqlite3* db, int op, Kind kind) {
  sqlite3_file* file = nullptr;
  if (sqlite3_file_control(db, "main", op, &file) != SQLITE_OK || !file ||
      file->pMethods != &kMethods)
    return nullptr;
  File* f = as_file(file);
  return f->kind == kind ? f : nullptr;
}

}  // namespace

constexpr const char* kNotAKey = " does not hold a key: 64 hexadecimal digits (256 bits) expected";

FileKey parse_file_key(std::string_view hex, const std::string& what) {
  while (!hex.empty() && std::isspace(static_cast<unsigned char>(hex.front())))
    hex.remove_prefix(1);
  while (!hex.empty() && std::isspace(static_cast<unsigned char>(hex.back()))) hex.remove_suffix(1);
  FileKey key{};
  bool ok = hex.size() == 2 * key.size();
  for (std::size_t i = 0; ok && i < key.size(); ++i) {
    const int high = crdt::hex_digit(hex[2 * i]), low = crdt::hex_digit(hex[2 * i + 1]);
    ok = high >= 0 && low >= 0;
    key[i] = static_cast<std::uint8_t>(high * 16 + low);
  }
  if (!ok) {
    OPENSSL_cleanse(key.data(), key.size());
    throw Error(ErrorCode::kInvalidArgument, what + kNotAKey);
  }
  return key;
}

FileKey read_file_key(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, "cannot read the key file '" + path + "'");
  std::string text(128, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  const std::string what = "key file '" + path + "'";
  if (in.peek() != std::char_traits<char>::eof()) {  // more than a key and white space
    OPENSSL_cleanse(text.data(), text.size());
    throw Error(ErrorCode::kInvalidArgument, what + kNotAKey);
  }
  try {
    FileKey key = parse_file_key(text, what);
    OPENSSL_cleanse(text.data(), text.size());
    return key;
  } catch (...) {
    OPENSSL_cleanse(text.data(), text.size());
    throw;
  }
}

const char* encrypted_vfs_name() { return encrypted_vfs()->zName; }

FileKeyRegistration::FileKeyRegistration(const std::string& path, const FileKey& key)
    : name_(full_name(path)) {
  encrypted_vfs();
  const PageKey page_key = derive_page_key(key);
  std::lock_guard lock(registry_mutex());
  Registered& entry = registry()[name_];
  if (entry.count > 0 && entry.key != page_key)
    throw Error(ErrorCode::kKey, "'" + path + "' is open in this process under another key");
  entry.key = page_key;
  ++entry.count;
}

void rotate_file_key(sqlite3* db, FileKeyRegistration& registration, const FileKey& new_key) {
  const std::string& name = registration.name_;
  File* f = encrypted_file(db, SQLITE_FCNTL_FILE_POINTER, Kind::kDatabase);
  if (!f) throw Error(ErrorCode::kState, "'" + name + "' is not open as an encrypted file");
  sqlite3_file* real = f->real;
  sqlite3_int64 size = 0;
  if (real->pMethods->xFileSize(real, &size) != SQLITE_OK || size % kPage != 0)
    throw Error(ErrorCode::kCorrupt,
                "'" + name + "' is not whole pages of " + std::to_string(kPage) + " bytes");
  const auto pages = static_cast<std::uint64_t>(size / kPage);

  // 1. The journal: every page as it is, each checked under the current key first.
  const std::string journal = rotate_journal(name), temporary = journal + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw Error(ErrorCode::kIo, "cannot create '" + temporary + "'");
  unsigned char header[kRotateHeader] = {};
  std::memcpy(header, kRotateMagic, sizeof kRotateMagic);
  for (int i = 0; i < 8; ++i) header[23 - i] = static_cast<unsigned char>(pages >> (8 * i));
  bool ok = pwrite_all(fd, header, sizeof header, 0);
  unsigned char page[kPage], plain[kPage];
  for (std::uint64_t i = 0; ok && i < pages; ++i) {
    const auto at = static_cast<sqlite3_int64>(i * kPage);
    if (real->pMethods->xRead(real, page, kPage, at) != SQLITE_OK) {
      ok = false;
      break;
    }
    std::memcpy(plain, page, kPage);
    if (!open_page(f, static_cast<std::uint32_t>(i + 1), plain)) {
      ::close(fd);
      ::unlink(temporary.c_str());
      throw Error(ErrorCode::kCorrupt, "page " + std::to_string(i + 1) + " of '" + name +
                                           "' fails to authenticate; its key was not rotated");
    }
    ok = pwrite_all(fd, page, kPage, kRotateHeader + at);
  }
  ok = ok && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(temporary.c_str(), journal.c_str()) != 0 || !sync_directory_of(journal)) {
    ::unlink(temporary.c_str());
    ::unlink(journal.c_str());
    throw Error(ErrorCode::kIo, "cannot write the journal '" + journal + "'");
  }

  // 2. Every page opened under the old key and sealed under the new one, in place.
  const PageKey page_key = derive_page_key(new_key);
  PageCipher fresh(page_key);
  int rc = SQLITE_OK;
  for (std::uint64_t i = 0; rc == SQLITE_OK && i < pages; ++i) {
    const auto at = static_cast<sqlite3_int64>(i * kPage);
    const auto number = static_cast<std::uint32_t>(i + 1);
    rc = real->pMethods->xRead(real, page, kPage, at);
    if (rc != SQLITE_OK) break;
    const bool opened = open_page(f, number, page);
    fresh.swap_with(f);
    const bool sealed = opened && seal_page(f, number, page, plain);
    fresh.swap_with(f);
    rc = sealed ? real->pMethods->xWrite(real, plain, kPage, at) : SQLITE_IOERR_WRITE;
  }
  if (rc == SQLITE_OK) rc = real->pMethods->xSync(real, SQLITE_SYNC_FULL);
  if (rc != SQLITE_OK) {
    put_back_rotation(real, journal);  // or the next open does
    throw Error(ErrorCode::kIo, "cannot rewrite '" + name +
                                    "' under the new key (SQLite I/O error " + std::to_string(rc) +
                                    "); it keeps its old key");
  }

  // 3. The new key for every handle and the registration, then the journal goes: done.
  fresh.swap_with(f);
  if (File* wal = encrypted_file(db, SQLITE_FCNTL_JOURNAL_POINTER, Kind::kWal)) {
    PageCipher for_wal(page_key);
    for_wal.swap_with(wal);
    wal->header_offset = -1;
  }
  {
    std::lock_guard lock(registry_mutex());
    registry()[name].key = page_key;
  }
  if (::unlink(journal.c_str()) != 0 || !sync_directory_of(journal))
    throw Error(ErrorCode::kIo, "cannot remove the journal '" + journal +
                                    "'; the file opens under its old key until it is gone");
}

EncryptedFileReader::EncryptedFileReader(const std::string& path, const FileKey& key)
    : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)), page_key_(derive_page_key(key)) {
  struct stat st {};
  if (fd_ < 0 || ::fstat(fd_, &st) != 0) {
    if (fd_ >= 0) ::close(fd_);
    OPENSSL_cleanse(page_key_.data(), page_key_.size());
    throw Error(ErrorCode::kIo, "cannot read '" + path + "'");
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
}

EncryptedFileReader::~EncryptedFileReader() {
  ::close(fd_);
  OPENSSL_cleanse(page_key_.data(), page_key_.size());
}

bool EncryptedFileReader::read(std::uint64_t offset, unsigned char* out, std::size_t n) {
  if (offset > size_ || n > size_ - offset) return false;
  EVP_CIPHER_CTX* decrypt = cipher(EVP_aes_256_gcm(), page_key_.data(), false);
  if (!decrypt) return false;
  File scratch{};
  scratch.decrypt = decrypt;
  unsigned char page[kPage];
  bool ok = true;
  for (std::uint64_t at = offset; ok && at < offset + n;) {
    const std::uint64_t index = at / kPage, start = index * kPage;
    const std::size_t skip = at - start;
    const std::size_t take = std::min<std::uint64_t>(kPage - skip, offset + n - at);
    ok = pread_all(fd_, page, kPage, static_cast<off_t>(start)) &&
         open_page(&scratch, static_cast<std::uint32_t>(index + 1), page);
    if (ok) std::memcpy(out + (at - offset), page + skip, take);
    at += take;
  }
  EVP_CIPHER_CTX_free(decrypt);
  OPENSSL_cleanse(page, sizeof page);
  return ok;
}

bool file_opens_under(const std::string& path, const FileKey& key) {
  EncryptedFileReader reader(path, key);
  unsigned char page[kPage];
  const bool ok = reader.size() >= kPage && reader.read(0, page, kPage);
  OPENSSL_cleanse(page, sizeof page);
  return ok;
}

FileKeyRegistration::~FileKeyRegistration() {
  std::lock_guard lock(registry_mutex());
  auto it = registry().find(name_);
  if (it != registry().end() && --it->second.count <= 0) {
    OPENSSL_cleanse(it->second.key.data(), it->second.key.size());
    registry().erase(it);
  }
}

}  // namespace lattice::storage
