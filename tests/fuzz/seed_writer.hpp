#pragma once
// The main() of every seed corpus writer in tests/fuzz: writes `seeds` (encoded inputs) as
// seed-N.<extension> into the folder named by the first argument, and creates any further
// folders named (libFuzzer's working corpus). Exit status 0, 1 when a file cannot be written,
// 2 for a usage error.

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace lattice::fuzz {

inline int write_seeds(int argc, char** argv, const std::vector<std::string>& seeds,
                       const char* extension) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s SEED_DIR [EXTRA_DIR...]\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; ++i) std::filesystem::create_directories(argv[i]);
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    const std::filesystem::path path =
        std::filesystem::path(argv[1]) / ("seed-" + std::to_string(i) + "." + extension);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(seeds[i].data(), static_cast<std::streamsize>(seeds[i].size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace lattice::fuzz
