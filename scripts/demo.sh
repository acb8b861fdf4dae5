#!/usr/bin/env bash
# The Lattice demo: a relay (TLS, a certificate made for the occasion) and two devices, alice and
# bob, each a lattice-todo process with its own replica file, its own sync client and its own
# page on 127.0.0.1. Run by `make demo` (after the build) and by the tests.
#
#   scripts/demo.sh              start everything, print both URLs, stay up until Ctrl-C
#   scripts/demo.sh --scripted   no browser: both devices go offline, edit the same items, come
#                                back; print both boards; exit 0 only when they match (and hold
#                                what the merge rules say they must)
#   scripts/demo.sh --exec CMD…  start everything, run CMD with ALICE_URL and BOB_URL set, stop
#                                everything; exit with CMD's status (the browser test)
#
# Environment:
#   LATTICE_BUILD_DIR   build tree holding relay/lattice-relay and demo-app/lattice-todo
#                       (default: build, relative to the current directory)
#   LATTICE_RELAY_BIN, LATTICE_TODO_BIN   the two programs, overriding LATTICE_BUILD_DIR
#   DEMO_RELAY_PORT, DEMO_ALICE_PORT, DEMO_BOB_PORT   fixed ports (default 0: the system picks)
#
# Every process it starts is stopped when it exits, however it exits; every wait is bounded.
set -euo pipefail

mode=interactive
case "${1:-}" in
  --scripted) mode=scripted ;;
  --exec)
    mode=exec
    shift
    [[ $# -gt 0 ]] || { echo "demo: --exec needs a command" >&2; exit 2; }
    ;;
  "") ;;
  *) echo "usage: demo.sh [--scripted | --exec CMD...]" >&2; exit 2 ;;
esac

build_dir="${LATTICE_BUILD_DIR:-build}"
relay_bin="${LATTICE_RELAY_BIN:-${build_dir}/relay/lattice-relay}"
todo_bin="${LATTICE_TODO_BIN:-${build_dir}/demo-app/lattice-todo}"
for bin in relay_bin todo_bin; do
  [[ "${!bin}" == /* ]] || printf -v "${bin}" '%s' "${PWD}/${!bin}"
  if [[ ! -x "${!bin}" ]]; then
    echo "demo: ${!bin} not found; build it first with 'make build'" >&2
    exit 1
  fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/lattice-demo.XXXXXX")"
pids=() names=()
# Stops every process (SIGTERM, then SIGKILL after 5 s). Each must exit 0 after SIGTERM: a
# non-zero status (a sanitizer's report, say) fails the demo, with the end of its log.
cleanup() {
  local status=$? i n rc
  trap - EXIT INT TERM
  for ((n = 0; n < ${#pids[@]}; n++)); do kill -TERM "${pids[n]}" 2>/dev/null || true; done
  for ((n = 0; n < ${#pids[@]}; n++)); do
    for ((i = 0; i < 50; i++)); do kill -0 "${pids[n]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[n]}" 2>/dev/null || true
    rc=0
    wait "${pids[n]}" 2>/dev/null || rc=$?
    if [[ "${rc}" != 0 && "${rc}" != 127 ]]; then  # 127: already reaped by wait -n
      echo "demo: ${names[n]} exited with status ${rc} when stopped; the end of its log:" >&2
      tail -n 40 "${work}/${names[n]}.err" >&2 || true
      [[ "${status}" != 0 ]] || status=1
    fi
  done
  rm -rf "${work}"
  exit "${status}"
}
trap cleanup EXIT
trap 'echo; echo "demo: stopping the relay and both devices"; exit 130' INT
trap 'exit 143' TERM

say() { printf '\n== %s\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

# Waits up to $2 seconds for a line of file $1 starting with "listening on "; prints the rest.
wait_listening() {
  local file="$1" seconds="$2" i line
  for ((i = 0; i < seconds * 10; i++)); do
    line="$(grep -m1 '^listening on ' "${file}" 2>/dev/null || true)"
    if [[ -n "${line}" ]]; then
      echo "${line#listening on }"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# --- The relay ---------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -days 1 \
  -keyout "${work}/relay-key.pem" -out "${work}/relay-cert.pem" 2>/dev/null \
  || die "openssl could not make the demo certificate"
(umask 077 && printf 'demo %s\n' "$(openssl rand -hex 32)" >"${work}/relay.keys")
chmod 600 "${work}/relay.keys"
"${todo_bin}" --print-schema >"${work}/schema.sql"

"${relay_bin}" serve --listen "127.0.0.1:${DEMO_RELAY_PORT:-0}" --data "${work}/relay-data" \
  --key-file "${work}/relay.keys" --tls-cert "${work}/relay-cert.pem" \
  --tls-key "${work}/relay-key.pem" --schema "${work}/schema.sql" \
  >"${work}/relay.out" 2>"${work}/relay.err" &
pids+=($!) names+=(relay)
relay_addr="$(wait_listening "${work}/relay.out" 20)" \
  || die "the relay did not start: $(cat "${work}/relay.err")"
relay_url="wss://${relay_addr}/board"

# --- The devices -------------------------------------------------------------
start_device() {
  local who="$1" port="$2" url
  "${relay_bin}" token --key-file "${work}/relay.keys" --ns board --rights read,write \
    --ttl 12h --subject "${who}" >"${work}/${who}.token"
  "${todo_bin}" --name "${who}" --db "${work}/${who}.db" --relay "${relay_url}" \
    --token-file "${work}/${who}.token" --ca-file "${work}/relay-cert.pem" \
    --listen "127.0.0.1:${port}" >"${work}/${who}.out" 2>"${work}/${who}.err" &
  pids+=($!) names+=("${who}")
  url="$(wait_listening "${work}/${who}.out" 20)" \
    || die "${who}'s lattice-todo did not start: $(cat "${work}/${who}.err")"
  printf -v "${who}_url" '%s' "${url%/}"
}
start_device alice "${DEMO_ALICE_PORT:-0}"
start_device bob "${DEMO_BOB_PORT:-0}"
export ALICE_URL="${alice_url}" BOB_URL="${bob_url}"

# --- A device's API, as its page uses it -------------------------------------
api() { curl -fsS --max-time 10 "$@"; }
post() {  # post WHO ACTION [NAME=VALUE...]
  local url="$1_url" action="$2" arg args=()
  shift 2
  for arg in "$@"; do args+=(--data-urlencode "${arg}"); done
  api -X POST "${args[@]}" "${!url}/api/${action}" >/dev/null
}
state() { local url="$1_url"; api "${!url}/api/state"; }
board() { local url="$1_url"; api "${!url}/api/board.txt"; }
# field JSON NAME: a top-level number or string of a state, e.g. field "$(state bob)" pending.
field() { grep -o "\"$2\":[^,]*" <<<"$1" | head -1 | cut -d: -f2 | tr -d '"'; }
item_id() {  # item_id WHO TITLE: the id of the item titled TITLE on WHO's board
  state "$1" | python3 -c 'import json, sys
for item in json.load(sys.stdin)["items"]:
    if item["title"] == sys.argv[1]:
        print(item["id"])
        break' "$2"
}
# wait_for SECONDS CMD...: until CMD succeeds, at most SECONDS.
wait_for() {
  local seconds="$1" i
  shift
  for ((i = 0; i < seconds * 10; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}
is_live() { [[ "$(field "$(state "$1")" state)" == live ]]; }
has_items() { [[ "$(board "$1" | wc -l)" == "$2" ]]; }
is_settled() {  # both live, nothing unsent, the same board
  local a b
  a="$(state alice)" b="$(state bob)"
  [[ "$(field "${a}" state)" == live && "$(field "${b}" state)" == live ]] &&
    [[ "$(field "${a}" pending)" == 0 && "$(field "${b}" pending)" == 0 ]] &&
    [[ "$(board alice)" == "$(board bob)" ]]
}
show_boards() {
  local who
  for who in alice bob; do
    printf '\n   %s'"'"'s board\n' "${who}"
    board "${who}" | sed 's/^/   /'
  done
}

run_interactive() {
  printf '\nLattice demo: a relay at %s and two devices.\n\n' "${relay_url}"
  printf '   alice   %s/\n   bob     %s/\n\n' "${ALICE_URL}" "${BOB_URL}"
  echo "Open both pages side by side. Add items, vote, tick, reorder: the other page follows."
  echo "Then switch one device (or both) offline, edit the same items on both, switch back, and"
  echo "watch the boards converge. Press Ctrl-C to stop everything."
  # Until Ctrl-C (the trap interrupts the wait), or until one of the processes dies.
  wait -n "${pids[@]}" || true
  tail -n 5 "${work}"/*.err >&2 || true
  die "a demo process stopped unexpectedly"
}

run_scripted() {
  say "a relay at ${relay_url}; alice at ${ALICE_URL}, bob at ${BOB_URL}"
  wait_for 30 is_live alice || die "alice did not reach the relay: $(cat "${work}/alice.err")"
  wait_for 30 is_live bob || die "bob did not reach the relay: $(cat "${work}/bob.err")"
  echo "   both devices are live"

  say "alice adds three items; they appear on bob's board"
  post alice add "title=buy milk"
  post alice add "title=book the venue"
  post alice add "title=water the plants"
  wait_for 15 has_items bob 3 || die "bob did not receive alice's items"
  board bob | sed 's/^/   bob: /'
  local milk venue plants
  milk="$(item_id alice "buy milk")"
  venue="$(item_id alice "book the venue")"
  plants="$(item_id alice "water the plants")"

  say "both switch offline and edit the same items"
  post alice offline offline=1
  post bob offline offline=1
  echo "   alice: renames 'buy milk' to 'buy oat milk', votes for the venue, deletes the plants"
  post alice rename "id=${milk}" "title=buy oat milk"
  post alice vote "id=${venue}"
  post alice delete "id=${plants}"
  sleep 0.05  # so that bob's rename is clearly the later write
  echo "   bob:   renames it to 'buy almond milk', votes twice for the venue and ticks it done,"
  echo "          renames the plants to 'water the cactus'"
  post bob rename "id=${milk}" "title=buy almond milk"
  post bob vote "id=${venue}"
  post bob vote "id=${venue}"
  post bob done "id=${venue}" done=1
  post bob rename "id=${plants}" "title=water the cactus"
  echo "   unsent changes: alice $(field "$(state alice)" pending), bob $(field "$(state bob)" pending)"
  show_boards

  say "both switch back online"
  post alice offline offline=0
  post bob offline offline=0
  local settled=0
  wait_for 30 is_settled && settled=1
  show_boards
  echo
  echo "   buy milk: both renamed it; the later write (bob's) wins on both devices"
  echo "   the venue: votes are a counter, so alice's 1 and bob's 2 add up to 3"
  echo "   the plants: alice's delete wins over bob's concurrent rename"

  if [[ "${settled}" != 1 ]]; then
    say "the boards differ after 30 s: the devices did NOT converge" >&2
    echo "alice: $(state alice)" >&2
    echo "bob:   $(state bob)" >&2
    exit 1
  fi
  say "the boards match: the devices converged"
  local expected=$'[ ] buy almond milk (0 votes)\n[x] book the venue (3 votes)'
  if [[ "$(board alice)" != "${expected}" ]]; then
    printf 'demo: ...but not to what the merge rules say; expected:\n%s\n' "${expected}" >&2
    exit 1
  fi
}

case "${mode}" in
  interactive) run_interactive ;;
  scripted) run_scripted ;;
  exec) "$@" ;;
esac
