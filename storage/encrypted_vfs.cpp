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

#include "storage/encrypted_vfs.hpp"

#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
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
  const int rc = real_vfs()->xOpen(real_vfs(), name, f->real, flags, out_flags);
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

FileKeyRegistration::~FileKeyRegistration() {
  std::lock_guard lock(registry_mutex());
  auto it = registry().find(name_);
  if (it != registry().end() && --it->second.count <= 0) {
    OPENSSL_cleanse(it->second.key.data(), it->second.key.size());
    registry().erase(it);
  }
}

}  // namespace lattice::storage
