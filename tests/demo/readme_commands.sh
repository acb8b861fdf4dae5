#!/usr/bin/env bash
# Runs README.md's "Run a relay" commands exactly as written, in a fresh folder: a key file, a
# certificate, a schema, a relay over TLS, a token, the README's C++ example (built from the
# README by tests/demo/CMakeLists.txt) syncing through it, and `lattice sync --verify`. Only
# the port changes (8443 becomes a free one), so the README cannot rot.
#
#   readme_commands.sh README.md
#   LATTICE_RELAY_BIN, LATTICE_BIN, README_EXAMPLE_BIN: the three programs the commands run
set -euo pipefail

readme="$1"
for bin in LATTICE_RELAY_BIN LATTICE_BIN README_EXAMPLE_BIN; do
  [[ -x "${!bin:-}" ]] || { echo "readme_commands: ${bin} is not an executable" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/lattice-readme.XXXXXX")"
# Stops the relay the commands started; it must exit 0 after SIGTERM (no sanitizer report).
cleanup() {
  local status=$? pid rc
  for pid in $(jobs -p); do
    kill -TERM "${pid}" 2>/dev/null || true
    timeout 10 tail --pid="${pid}" -f /dev/null || kill -KILL "${pid}" 2>/dev/null || true
    rc=0
    wait "${pid}" || rc=$?
    if [[ "${rc}" != 0 ]]; then
      echo "readme_commands: a background command (the relay) exited with status ${rc}:" >&2
      tail -n 40 "${work}/output.txt" >&2 || true
      [[ "${status}" != 0 ]] || status=1
    fi
  done
  rm -rf "${work}"
  exit "${status}"
}
trap cleanup EXIT

mkdir -p "${work}/bin"
ln -s "${LATTICE_RELAY_BIN}" "${work}/bin/lattice-relay"
ln -s "${LATTICE_BIN}" "${work}/bin/lattice"
ln -s "${README_EXAMPLE_BIN}" "${work}/todo_app"
export PATH="${work}/bin:${PATH}"

# The first ```bash block after the "## Run a relay" heading.
block="$(awk '/^## Run a relay/ { section = 1 }
              section && /^```bash$/ { inside = 1; next }
              inside && /^```$/ { exit }
              inside { print }' "${readme}")"
[[ -n "${block}" ]] || { echo "readme_commands: no bash block under '## Run a relay'" >&2; exit 1; }
grep -q 8443 <<<"${block}" || { echo "readme_commands: the block no longer uses port 8443" >&2; exit 1; }
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
block="${block//8443/${port}}"

echo "== running README.md's relay commands in ${work} (port ${port})"
printf '%s\n' "${block}" | sed 's/^/   /'
cd "${work}"
# In this shell (not a pipeline's subshell), so that the relay the block starts in the background
# is one of this shell's jobs, stopped by cleanup.
status=0
{ eval "${block}"; } >"${work}/output.txt" 2>&1 || status=$?
sed 's/^/   | /' "${work}/output.txt"
[[ "${status}" == 0 ]] || { echo "readme_commands: the commands failed (status ${status})" >&2; exit 1; }
grep -q '^buy milk: 1 vote(s), in sync$' "${work}/output.txt" \
  || { echo "readme_commands: the example did not print what the README says" >&2; exit 1; }
grep -q '^verified: ' "${work}/output.txt" \
  || { echo "readme_commands: lattice sync --verify did not verify" >&2; exit 1; }
echo "== the README's commands work"
