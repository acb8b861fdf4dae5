#!/usr/bin/env bash
# The demo_scripted test: runs the scripted demo (scripts/demo.sh --scripted, as `make demo
# SCRIPTED=1` does) and, beyond its exit status, checks its output on its own: every act was
# played, and the two boards printed last are on schema version 2, the same, and hold what
# alice (version 2) and bob (version 1, then 2) wrote apart. A change to the script that stopped
# early, or printed boards that differ, fails here even if the script exited 0.
#
#   scripted_demo_check.sh DEMO_SH   (LATTICE_RELAY_BIN and LATTICE_TODO_BIN as for demo.sh)
set -uo pipefail

out="$(bash "$1" --scripted 2>&1)"
status=$?
printf '%s\n' "${out}"
fail() { printf '\ndemo_scripted: FAILED: %s\n' "$*" >&2; exit 1; }
[[ "${status}" == 0 ]] || fail "the scripted demo exited with status ${status}"

# require WHERE TEXT LINE...: each LINE is a whole line of TEXT.
require() {
  local where="$1" text="$2" line
  shift 2
  for line in "$@"; do
    grep -qxF -- "${line}" <<<"${text}" || fail "${where} lacks the line '${line}'"
  done
}
require "the output" "${out}" \
  "== the boards match: the devices converged" \
  "== alice updates her app to version 2; bob stays on version 1" \
  "== bob updates his app to version 2" \
  "== the boards match on version 2, and nothing either device wrote was lost"

# The last board the output prints for WHO: the lines after its heading, up to a blank line.
last_board() {
  awk -v heading="   $1's board (schema version 2)" '
    $0 == heading { board = ""; inside = 1; next }
    inside && $0 == "" { inside = 0; next }
    inside { board = board $0 "\n" }
    END { printf "%s", board }' <<<"${out}"
}
alice="$(last_board alice)" bob="$(last_board bob)"
[[ -n "${alice}" && "${alice}" == "${bob}" ]] ||
  fail "the last boards printed differ: alice's:
${alice}
bob's:
${bob}"
require "bob's last board" "${bob}" \
  "   [ ] buy soy milk (0 votes)" \
  "   [x] book the town hall (3 votes, due 2026-12-20, @bob)" \
  "   [ ] send the invitations (0 votes, due 2026-12-10, @alice)" \
  "   [ ] bake a cake (0 votes)"
[[ "$(wc -l <<<"${bob}")" == 4 ]] || fail "bob's last board has items it should not:
${bob}"
echo "demo_scripted: passed"
