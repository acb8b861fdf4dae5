#!/usr/bin/env bash
# A two-minute tour of Lattice with the `lattice` tool: two replicas of a todo list edit the
# same items while offline, then exchange changesets and converge. Run by `make demo` (after
# the build) and by the `demo_script` test. Exits 0 only when both boards end up identical.
#
#   LATTICE_BIN   the lattice binary (default: build/cli/lattice, relative to the current
#                 directory, which `make demo` sets to the repo root)
set -euo pipefail

bin="${LATTICE_BIN:-build/cli/lattice}"
[[ "${bin}" == /* ]] || bin="${PWD}/${bin}"
if [[ ! -x "${bin}" ]]; then
  echo "demo: ${bin} not found; build it first with 'make build'" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/lattice-demo.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
cd "${work}"

lattice() { "${bin}" "$@"; }
say() { printf '\n== %s\n' "$*"; }

# Sends what `to` lacks from `from`: ask `to` what it holds, extract the rest, merge it.
sync() {
  local from="$1" to="$2"
  lattice vv "${to}.db" >"${to}.vv"
  lattice changes "${from}.db" --since "${to}.vv" --out "${from}-to-${to}.changes" >/dev/null
  printf '   %-5s -> %-5s %s\n' "${from}" "${to}" "$(lattice apply "${to}.db" "${from}-to-${to}.changes")"
}

board() {
  lattice exec "$1.db" "SELECT printf('   %-3s %-22s %-5s %s', id, title,
      CASE done WHEN 0 THEN '' ELSE 'done' END, votes) FROM todo ORDER BY id"
}

show_boards() {
  local who
  for who in alice bob; do
    printf '\n   %s\n   %-3s %-22s %-5s %s\n' "${who}'s board" "id" "title" "done" "votes"
    board "${who}"
  done
}

say "alice and bob each create a replica with the same todo table (votes is a counter)"
for who in alice bob; do
  lattice exec "${who}.db" "
    CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT,
                      done INTEGER NOT NULL DEFAULT 0, votes INTEGER NOT NULL DEFAULT 0);
    SELECT lattice_replicate('todo', '{\"votes\": \"counter\"}');" >/dev/null
done

say "alice adds three items; the replicas exchange changesets"
lattice exec alice.db "INSERT INTO todo(id, title) VALUES
    ('1', 'buy milk'), ('2', 'book the venue'), ('3', 'water the plants')"
sync alice bob
sync bob alice

say "both go offline and edit the same items"
echo "   alice: renames 1 to 'buy oat milk', votes for 2, deletes 3"
lattice exec alice.db "
    UPDATE todo SET title = 'buy oat milk' WHERE id = '1';
    UPDATE todo SET votes = votes + 1 WHERE id = '2';
    DELETE FROM todo WHERE id = '3';"
sleep 0.05  # so that bob's rename is clearly the later write
echo "   bob:   renames 1 to 'buy almond milk', votes twice for 2, renames 3, marks 2 done"
lattice exec bob.db "
    UPDATE todo SET title = 'buy almond milk' WHERE id = '1';
    UPDATE todo SET votes = votes + 2, done = 1 WHERE id = '2';
    UPDATE todo SET title = 'water the cactus' WHERE id = '3';"

say "back online: they exchange changes in both directions (lattice vv, changes --since, apply)"
sync alice bob
sync bob alice

say "the result"
show_boards
echo
echo "   1: both renamed it; the later write (bob's) wins on both replicas"
echo "   2: votes are a counter, so alice's +1 and bob's +2 add up to 3"
echo "   3: alice's delete wins over bob's concurrent rename"

if [[ "$(board alice)" == "$(board bob)" ]]; then
  say "the boards match: the replicas converged"
else
  say "the boards differ: the replicas did NOT converge" >&2
  exit 1
fi
