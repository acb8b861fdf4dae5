#!/usr/bin/env bash
# Scans real lattice-relay processes on 127.0.0.1 with testssl.sh (Debian's `testssl.sh`,
# installed by scripts/setup.sh), once with an ECDSA certificate and once with an RSA one, and
# fails unless: no vulnerability or weakness is reported (every finding OK or INFO); TLS 1.3 is
# offered and nothing older than TLS 1.2; every TLS 1.2 suite is ECDHE with an AEAD cipher
# (AES-GCM or ChaCha20-Poly1305). docs/security.md, "TLS".
#
# Usage: tls_scan.sh LATTICE_RELAY_BINARY
set -euo pipefail

relay_bin="$1"
testssl_bin="$(command -v testssl || command -v testssl.sh || true)"
if [[ -z "${testssl_bin}" ]]; then
  echo "tls_scan: testssl.sh is not installed (scripts/setup.sh installs it)" >&2
  exit 1
fi

work="$(mktemp -d)"
relay_pid=""
cleanup() {
  if [[ -n "${relay_pid}" ]]; then kill -9 "${relay_pid}" 2>/dev/null || true; fi
  rm -rf "${work}"
}
trap cleanup EXIT

printf 'k1 %s\n' "$(openssl rand -hex 32)" >"${work}/keys"
chmod 600 "${work}/keys"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "${work}/ecdsa.key" -out "${work}/ecdsa.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "${work}/rsa.key" -out "${work}/rsa.pem" 2>/dev/null

failed=0
for kind in ecdsa rsa; do
  "${relay_bin}" serve --listen 127.0.0.1:0 --data "${work}/data-${kind}" \
    --key-file "${work}/keys" --tls-cert "${work}/${kind}.pem" --tls-key "${work}/${kind}.key" \
    >"${work}/out-${kind}" 2>"${work}/log-${kind}" &
  relay_pid=$!
  for _ in $(seq 100); do
    grep -q '^listening on ' "${work}/out-${kind}" 2>/dev/null && break
    sleep 0.1
  done
  port="$(sed -n 's/^listening on 127\.0\.0\.1://p' "${work}/out-${kind}")"
  if [[ -z "${port}" ]]; then
    echo "tls_scan: lattice-relay did not start: $(cat "${work}/log-${kind}")" >&2
    exit 1
  fi
  # Protocols, ciphers per protocol, forward secrecy, vulnerabilities.
  timeout 300 "${testssl_bin}" --quiet --color 0 --warnings off -p -E -f -U \
    --jsonfile "${work}/scan-${kind}.json" "127.0.0.1:${port}" >"${work}/scan-${kind}.txt" 2>&1 ||
    true
  kill "${relay_pid}"
  wait "${relay_pid}" || true
  relay_pid=""
  if ! python3 - "${work}/scan-${kind}.json" "${kind}" <<'PY'; then
import json, sys
findings = json.load(open(sys.argv[1]))
kind = sys.argv[2]
problems = []
by_id = {f["id"]: f for f in findings}
for f in findings:
    if f["severity"] not in ("OK", "INFO"):
        problems.append(f"{f['id']}: {f['severity']}: {f['finding']}")
for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
    if "not offered" not in by_id.get(old, {}).get("finding", ""):
        problems.append(f"{old} is offered (or was not tested)")
if not by_id.get("TLS1_3", {}).get("finding", "").startswith("offered"):
    problems.append("TLS 1.3 is not offered")
tls12 = [f for f in findings if f["id"].startswith("cipher-tls1_2_")]
if not tls12:
    problems.append("no TLS 1.2 cipher suite listed")
for f in tls12:
    text = f["finding"]
    if " ECDH " not in text or not ("AESGCM" in text or "ChaCha20" in text):
        problems.append(f"TLS 1.2 suite without ECDHE and AEAD: {' '.join(text.split())}")
if problems:
    print(f"tls_scan ({kind} certificate): " + "\n  ".join(["problems:"] + problems))
    sys.exit(1)
print(f"tls_scan ({kind} certificate): {len(findings)} findings, all OK or INFO; "
      f"TLS 1.2 suites: {', '.join(f['finding'].split()[3] for f in tls12)}")
PY
    failed=1
    tail -40 "${work}/scan-${kind}.txt"
  fi
done
exit "${failed}"
