#!/usr/bin/env bash
# The Lattice demo: a relay (TLS, a certificate made for the occasion) and two devices, alice and
# bob, each a lattice-todo process with its own replica file, its own sync client and its own
# page on 127.0.0.1. Run by `make demo` (after the build) and by the tests.
#
#   scripts/demo.sh              start everything, print both URLs, stay up until Ctrl-C
#   scripts/demo.sh --scripted   no browser: both devices go offline, edit the same items, come
#                                back; then version 2 of the board ships (the relay first), alice
#                                updates, bob does not, both edit offline, come back, bob updates;
#                                print both boards each time; exit 0 only when they match (and
#                                hold what the merge rules say they must, nothing lost)
#   scripts/demo.sh --exec CMD…  start everything, run CMD with ALICE_URL and BOB_URL set, stop
#                                everything; exit with CMD's status (the browser test)
#
# Environment:
#   LATTICE_BUILD_DIR   build tree holding relay/lattice-relay and demo-app/lattice-todo
#                       (default: build, relative to the current directory)
#   LATTICE_RELAY_BIN, LATTICE_TODO_BIN   the two programs, overriding LATTICE_BUILD_DIR
#   DEMO_RELAY_PORT, DEMO_ALICE_PORT, DEMO_BOB_PORT   fixed ports (default 0: the system picks)
#   DEMO_ALICE_VERSION, DEMO_BOB_VERSION   each device's schema version, 1 or 2 (default 2, the
#                       newest; --scripted plays its own versions)
#   DEMO_CLUSTER=1      a cluster instead of one relay (`make demo CLUSTER=1`, docs/cluster.md):
#                       PostgreSQL (initdb and pg_ctl in a temporary directory), three relays
#                       with --cluster-db, and haproxy in front with deploy/haproxy.cfg; alice
#                       syncs through the first relay and bob through the second, so each change
#                       goes from one relay to the other through PostgreSQL. DEMO_RELAY_PORT is
#                       then haproxy's.
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
cluster="${DEMO_CLUSTER:-0}"
pg_dir="" pg_stop=()  # the cluster's PostgreSQL: its directory, and how to stop it
# Stops every process (SIGTERM, then SIGKILL after 5 s). Each must exit 0 after SIGTERM: a
# non-zero status (a sanitizer's report, say) fails the demo, with the end of its log.
cleanup() {
  local status=$? i n rc
  trap - EXIT INT TERM
  # (haproxy stops gracefully on SIGUSR1; on SIGTERM it exits 143.)
  for ((n = 0; n < ${#pids[@]}; n++)); do
    if [[ "${names[n]}" == haproxy ]]; then
      kill -USR1 "${pids[n]}" 2>/dev/null || true
    else
      kill -TERM "${pids[n]}" 2>/dev/null || true
    fi
  done
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
  if [[ ${#pg_stop[@]} -gt 0 ]]; then "${pg_stop[@]}" >/dev/null 2>&1 || true; fi
  [[ -z "${pg_dir}" ]] || rm -rf "${pg_dir}"
  rm -rf "${work}"
  exit "${status}"
}
# stop_process NAME: stops one of them (SIGTERM, SIGKILL after 5 s); fails unless it exits 0.
stop_process() {
  local name="$1" i n rc=0 keep_pids=() keep_names=()
  for ((n = 0; n < ${#pids[@]}; n++)); do
    if [[ "${names[n]}" != "${name}" ]]; then
      keep_pids+=("${pids[n]}") keep_names+=("${names[n]}")
      continue
    fi
    kill -TERM "${pids[n]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "${pids[n]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[n]}" 2>/dev/null || true
    wait "${pids[n]}" 2>/dev/null || rc=$?
  done
  pids=("${keep_pids[@]}") names=("${keep_names[@]}")
  if [[ "${rc}" != 0 ]]; then
    tail -n 40 "${work}/${name}.err" >&2 || true
    die "${name} exited with status ${rc} when stopped"
  fi
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

# The board's schema as the operator's numbered migrations (--schema-dir DIR/board/<n>-*.sql):
# the same SQL lattice-todo runs at start-up, so the relay has a version before the devices that
# run it connect. The scripted demo starts with version 1 only and ships version 2 later.
mkdir -p "${work}/schema/board"
migration_files=("" 1-board.sql 2-due-assignee-summary.sql)
add_migration() {  # add_migration N
  "${todo_bin}" --print-migration "$1" >"${work}/schema/board/${migration_files[$1]}"
}
add_migration 1
[[ "${mode}" == scripted ]] || add_migration 2

# --- A cluster's PostgreSQL (DEMO_CLUSTER=1) ----------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
cluster_args=()
if [[ "${cluster}" == 1 ]]; then
  pg_bin="$(pg_config --bindir 2>/dev/null || true)"
  [[ -x "${pg_bin}/initdb" ]] || pg_bin=/usr/lib/postgresql/15/bin
  [[ -x "${pg_bin}/initdb" ]] || die "PostgreSQL 15 is not installed; run 'make setup'"
  [[ -x /usr/sbin/haproxy ]] || die "haproxy is not installed; run 'make setup'"
  # Its own directory: as root, PostgreSQL runs as the user postgres, who cannot enter ${work}.
  pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/lattice-demo-pg.XXXXXX")"
  as_postgres=()
  if [[ "$(id -u)" == 0 ]]; then
    chown postgres "${pg_dir}"
    as_postgres=(runuser -u postgres --)
  fi
  "${as_postgres[@]}" "${pg_bin}/initdb" -D "${pg_dir}/data" -U lattice --auth=trust -E UTF8 \
    --no-instructions >"${work}/postgres.err" 2>&1 \
    || die "initdb failed: $(cat "${work}/postgres.err")"
  pg_port="$(free_port)"
  "${as_postgres[@]}" "${pg_bin}/pg_ctl" -D "${pg_dir}/data" -w -l "${pg_dir}/server.log" \
    -o "-p ${pg_port} -k ${pg_dir} -c listen_addresses=127.0.0.1" start \
    >>"${work}/postgres.err" 2>&1 || die "PostgreSQL did not start: $(cat "${work}/postgres.err")"
  pg_stop=("${as_postgres[@]}" "${pg_bin}/pg_ctl" -D "${pg_dir}/data" -w -m fast stop)
  # haproxy reaches the relays from 127.0.0.2 with a PROXY header naming the device; alice and
  # bob, connected to relays directly from 127.0.0.1, send none.
  cluster_args=(--cluster-db "host=127.0.0.1 port=${pg_port} user=lattice dbname=postgres"
    --proxy-protocol-from 127.0.0.2)
  relay_names=(relay1 relay2 relay3)
else
  relay_names=(relay)
fi

# start_relay NAME HOST:PORT: relay NAME over TLS, its migrations run when it opens the
# namespace; its address goes in ${NAME}_addr.
start_relay() {
  local name="$1" addr
  : >"${work}/${name}.out"  # emptied here, not by the background job: a restart must not read
                            # the previous "listening on" line
  "${relay_bin}" serve --listen "$2" --data "${work}/${name}-data" \
    --key-file "${work}/relay.keys" --tls-cert "${work}/relay-cert.pem" \
    --tls-key "${work}/relay-key.pem" --schema-dir "${work}/schema" "${cluster_args[@]}" \
    >"${work}/${name}.out" 2>>"${work}/${name}.err" &
  pids+=($!) names+=("${name}")
  addr="$(wait_listening "${work}/${name}.out" 20)" \
    || die "${name} did not start: $(cat "${work}/${name}.err")"
  printf -v "${name}_addr" '%s' "${addr}"
}
# restart_relays: each relay stopped and started again on its address, one after the other;
# the device syncing through it (alice through the first) notices before it starts again.
restart_relays() {
  local name addr
  for name in "${relay_names[@]}"; do
    addr="${name}_addr"
    addr="${!addr}"
    stop_process "${name}"
    case "${name}" in
      relay | relay1) wait_for 5 is_not_live alice || true ;;
      relay2) wait_for 5 is_not_live bob || true ;;
    esac
    start_relay "${name}" "${addr}"
  done
}
if [[ "${cluster}" == 1 ]]; then
  for name in "${relay_names[@]}"; do start_relay "${name}" 127.0.0.1:0; done
  # haproxy in front, as deploy/haproxy.cfg ships: TLS both ways, a namespace's devices on one
  # relay while it is up. alice and bob connect to relays directly; a third device would come
  # through haproxy.
  cat "${work}/relay-cert.pem" "${work}/relay-key.pem" >"${work}/haproxy.pem"
  haproxy_addr="127.0.0.1:${DEMO_RELAY_PORT:-$(free_port)}"
  env LATTICE_HAPROXY_BIND="${haproxy_addr}" LATTICE_HAPROXY_PEM="${work}/haproxy.pem" \
    LATTICE_HAPROXY_SOURCE=127.0.0.2 LATTICE_RELAY_CA="${work}/relay-cert.pem" LATTICE_RELAY1="${relay1_addr}" \
    LATTICE_RELAY2="${relay2_addr}" LATTICE_RELAY3="${relay3_addr}" \
    /usr/sbin/haproxy -db -f "$(dirname "$0")/../deploy/haproxy.cfg" \
    >"${work}/haproxy.out" 2>>"${work}/haproxy.err" &
  pids+=($!) names+=(haproxy)
  for ((i = 0; i < 100; i++)); do
    curl -fsS --max-time 2 --cacert "${work}/relay-cert.pem" "https://${haproxy_addr}/healthz" \
      >/dev/null 2>&1 && break
    sleep 0.1
  done
  ((i < 100)) || die "haproxy did not answer: $(cat "${work}/haproxy.err")"
  relay_url="wss://${haproxy_addr}/board"
  alice_relay_url="wss://${relay1_addr}/board" bob_relay_url="wss://${relay2_addr}/board"
else
  start_relay relay "127.0.0.1:${DEMO_RELAY_PORT:-0}"
  relay_url="wss://${relay_addr}/board"
  alice_relay_url="${relay_url}" bob_relay_url="${relay_url}"
fi

# --- The devices -------------------------------------------------------------
start_device() {  # start_device WHO PORT SCHEMA_VERSION; again later: the same replica file
  local who="$1" port="$2" version="$3" url relay="$1_relay_url"
  # read,write: no admin right. The relay has each version from its operator, before any device
  # runs it (docs/demo-app.md, "Two versions of the app").
  "${relay_bin}" token --key-file "${work}/relay.keys" --ns board --rights read,write \
    --ttl 12h --subject "${who}" >"${work}/${who}.token"
  : >"${work}/${who}.out"  # so that a restart waits for its own "listening on" line
  "${todo_bin}" --name "${who}" --db "${work}/${who}.db" --relay "${!relay}" \
    --token-file "${work}/${who}.token" --ca-file "${work}/relay-cert.pem" \
    --schema-version "${version}" --listen "127.0.0.1:${port}" \
    >"${work}/${who}.out" 2>>"${work}/${who}.err" &
  pids+=($!) names+=("${who}")
  url="$(wait_listening "${work}/${who}.out" 20)" \
    || die "${who}'s lattice-todo did not start: $(cat "${work}/${who}.err")"
  printf -v "${who}_url" '%s' "${url%/}"
}
if [[ "${mode}" == scripted ]]; then
  start_device alice "${DEMO_ALICE_PORT:-0}" 1
  start_device bob "${DEMO_BOB_PORT:-0}" 1
else
  start_device alice "${DEMO_ALICE_PORT:-0}" "${DEMO_ALICE_VERSION:-2}"
  start_device bob "${DEMO_BOB_PORT:-0}" "${DEMO_BOB_VERSION:-2}"
fi
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
is_not_live() { ! is_live "$1"; }
has_items() { [[ "$(board "$1" | wc -l)" == "$2" ]]; }
is_settled() {  # both live, nothing unsent, the same board
  local a b
  a="$(state alice)" b="$(state bob)"
  [[ "$(field "${a}" state)" == live && "$(field "${b}" state)" == live ]] &&
    [[ "$(field "${a}" pending)" == 0 && "$(field "${b}" pending)" == 0 ]] &&
    [[ "$(board alice)" == "$(board bob)" ]]
}
# The items' fields that schema version 1 has too (id, title, done, votes, position), as JSON.
common_items() {
  state "$1" | python3 -c 'import json, sys
print(json.dumps([[i["id"], i["title"], i["done"], i["votes"], i["position"]]
                  for i in json.load(sys.stdin)["items"]]))'
}
is_settled_across_versions() {  # as is_settled, comparing only what both versions have
  local a b
  a="$(state alice)" b="$(state bob)"
  [[ "$(field "${a}" state)" == live && "$(field "${b}" state)" == live ]] &&
    [[ "$(field "${a}" pending)" == 0 && "$(field "${b}" pending)" == 0 ]] &&
    [[ "$(common_items alice)" == "$(common_items bob)" ]]
}
show_boards() {
  local who
  for who in alice bob; do
    printf '\n   %s'"'"'s board (schema version %s)\n' "${who}" \
      "$(field "$(state "${who}")" schema_version)"
    board "${who}" | sed 's/^/   /'
  done
}

run_interactive() {
  if [[ "${cluster}" == 1 ]]; then
    printf '\nLattice demo: three relays of a cluster (PostgreSQL on 127.0.0.1:%s), haproxy at %s,\n' \
      "${pg_port}" "${relay_url}"
    printf 'and two devices: alice through %s, bob through %s.\n\n' "${alice_relay_url}" \
      "${bob_relay_url}"
  else
    printf '\nLattice demo: a relay at %s and two devices.\n\n' "${relay_url}"
  fi
  printf '   alice   %s/   (schema version %s)\n   bob     %s/   (schema version %s)\n\n' \
    "${ALICE_URL}" "${DEMO_ALICE_VERSION:-2}" "${BOB_URL}" "${DEMO_BOB_VERSION:-2}"
  echo "Open both pages side by side. Add items, vote, tick, reorder: the other page follows."
  echo "Then switch one device (or both) offline, edit the same items on both, switch back, and"
  echo "watch the boards converge. Press Ctrl-C to stop everything."
  # Until Ctrl-C (the trap interrupts the wait), or until one of the processes dies.
  wait -n "${pids[@]}" || true
  tail -n 5 "${work}"/*.err >&2 || true
  die "a demo process stopped unexpectedly"
}

run_scripted() {
  if [[ "${cluster}" == 1 ]]; then
    say "three relays of a cluster behind ${relay_url}; alice at ${ALICE_URL} through relay1, bob at ${BOB_URL} through relay2"
  else
    say "a relay at ${relay_url}; alice at ${ALICE_URL}, bob at ${BOB_URL}"
  fi
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
  run_two_versions "${milk}" "${venue}"
}

# Version 2 ships while bob keeps version 1 (issue 11): both edit offline, then bob updates.
run_two_versions() {
  local milk="$1" venue="$2"
  say "version 2 of the board ships: a due date and an assignee per item, 'title' renamed 'summary'"
  echo "   the relay goes first: its operator adds migration 2 to --schema-dir and restarts it"
  add_migration 2
  restart_relays
  wait_for 30 is_live alice || die "alice did not reconnect to the restarted relay"
  wait_for 30 is_live bob || die "bob did not reconnect to the restarted relay"
  echo "   both devices, still on version 1, reconnected by themselves"

  say "alice updates her app to version 2; bob stays on version 1"
  stop_process alice
  start_device alice "${DEMO_ALICE_PORT:-0}" 2
  wait_for 30 is_live alice || die "alice did not reach the relay on version 2: $(state alice)"
  [[ "$(field "$(state alice)" schema_version)" == 2 ]] || die "alice is not on version 2"
  show_boards

  say "both switch offline and edit, each on their own version"
  post alice offline offline=1
  post bob offline offline=1
  echo "   alice (v2): gives the venue a due date and an assignee, renames the milk 'buy oat milk'"
  echo "               (column summary), adds 'send the invitations', due 2026-12-10, for alice"
  post alice due "id=${venue}" "due=2026-12-20"
  post alice assign "id=${venue}" "assignee=bob"
  post alice rename "id=${milk}" "title=buy oat milk"
  post alice add "title=send the invitations"
  local invitations
  invitations="$(item_id alice "send the invitations")"
  post alice due "id=${invitations}" "due=2026-12-10"
  post alice assign "id=${invitations}" "assignee=alice"
  sleep 0.05  # so that bob's rename of the milk is clearly the later write
  echo "   bob (v1):   renames the milk 'buy soy milk' and the venue 'book the town hall' (column"
  echo "               title, the old name), adds 'bake a cake'"
  post bob rename "id=${milk}" "title=buy soy milk"
  post bob rename "id=${venue}" "title=book the town hall"
  post bob add "title=bake a cake"
  echo "   unsent changes: alice $(field "$(state alice)" pending), bob $(field "$(state bob)" pending)"
  show_boards

  say "both switch back online"
  post alice offline offline=0
  post bob offline offline=0
  wait_for 30 is_settled_across_versions ||
    die "alice (v2) and bob (v1) did not converge on what both versions have after 30 s:
alice: $(state alice)
bob:   $(state bob)"
  show_boards
  echo
  echo "   bob's renames, written to column 'title', are in alice's column 'summary'; the milk's"
  echo "   later rename (bob's) wins on both. bob's board has no place for the due dates and"
  echo "   assignees yet: his replica keeps them aside."
  board alice | grep -qxF '[ ] buy soy milk (0 votes)' &&
    board alice | grep -qxF '[x] book the town hall (3 votes, due 2026-12-20, @bob)' ||
    die "bob's edits through the old column name are not on alice's board: $(board alice)"

  say "bob updates his app to version 2"
  stop_process bob
  start_device bob "${DEMO_BOB_PORT:-0}" 2
  local settled=0
  wait_for 30 is_settled && settled=1
  show_boards
  echo
  echo "   alice's due dates and assignees, kept aside on bob's replica, joined his new columns"
  if [[ "${settled}" != 1 ]]; then
    say "the boards differ after bob's update: the devices did NOT converge" >&2
    echo "alice: $(state alice)" >&2
    echo "bob:   $(state bob)" >&2
    exit 1
  fi
  # Two items were added apart at the same position: their order is by id, so compare sorted.
  local expected=$'[ ] bake a cake (0 votes)\n[ ] buy soy milk (0 votes)
[ ] send the invitations (0 votes, due 2026-12-10, @alice)
[x] book the town hall (3 votes, due 2026-12-20, @bob)'
  if [[ "$(board bob | LC_ALL=C sort)" != "${expected}" ]]; then
    printf 'demo: the boards match but lost something; expected (sorted):\n%s\n' \
      "${expected}" >&2
    exit 1
  fi
  say "the boards match on version 2, and nothing either device wrote was lost"
}

case "${mode}" in
  interactive) run_interactive ;;
  scripted) run_scripted ;;
  exec)
    # A failed command shows what the relay and the devices said meanwhile.
    rc=0
    "$@" || rc=$?
    if [[ "${rc}" != 0 ]]; then
      for name in "${relay_names[@]}" alice bob; do
        echo "demo: the end of ${name}'s log:" >&2
        tail -n 20 "${work}/${name}.err" >&2 || true
      done
    fi
    exit "${rc}"
    ;;
esac
