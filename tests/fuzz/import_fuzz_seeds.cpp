// Writes the seed corpus of import_fuzz into the folder named by the first argument, and creates
// any further folders named (libFuzzer's working corpus): a CSV file, an NDJSON file, a JSON
// array file and a mapping file, each behind the byte that picks its reader.

#include <filesystem>
#include <fstream>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string seeds[] = {
      std::string(1, '\0') +
          "id,title,born,score\na,\"buy \"\"milk\"\"\",2024-02-29,\"1.234,5\"\nb,,31/12/1999 "
          "23:59:59,\\x00ff\r\n",
      std::string(1, '\1') +
          "{\"id\": 1, \"a\": {\"b\": [true, null, 2.5]}, \"d\": \"2024-01-05T10:30:00+02:00\"}\n"
          "{\"id\": \"x\", \"blob\": {\"blob\": \"00ff\"}}\n",
      std::string(1, '\2') + "[\n  {\"id\": 1, \"t\": \"yes\"},\n  {\"id\": 2, \"t\": [1, 2]}\n]\n",
      std::string(1, '\3') +
          "{\"csv\": {\"delimiter\": \";\"}, \"columns\": {\"id\": \"/a/b\", \"d\": {\"source\": "
          "\"D\", \"type\": \"date\", \"format\": \"%d/%m/%Y\", \"default\": \"2000-01-01\"}}}",
  };
  std::filesystem::create_directories(argv[1]);
  int n = 0;
  for (const auto& seed : seeds) {
    std::ofstream out(std::filesystem::path(argv[1]) / ("seed-" + std::to_string(n++)),
                      std::ios::binary);
    out << seed;
  }
  for (int i = 2; i < argc; ++i) std::filesystem::create_directories(argv[i]);
  return 0;
}
