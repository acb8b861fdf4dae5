#!/usr/bin/env bash
# Fails (exit 1) if any C/C++ file in the repo (tracked, or untracked and not
# ignored) differs from what clang-format would write. Fix with `make format`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v clang-format >/dev/null; then
  echo "format-check: clang-format not found (run scripts/setup.sh)" >&2
  exit 2
fi

bad=()
while IFS= read -r -d '' f; do
  [[ -f "$f" ]] || continue   # tracked but deleted in the work tree
  if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
    bad+=("$f")
  fi
done < <(git ls-files -co --exclude-standard -z -- '*.hpp' '*.cpp' '*.h' '*.c')

if [[ "${#bad[@]}" -gt 0 ]]; then
  echo "format-check: ${#bad[@]} file(s) not clang-formatted (run 'make format'):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "format-check: ok"
