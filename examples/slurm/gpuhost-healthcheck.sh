#!/usr/bin/env bash
# A Slurm node health check: run pytest-gpuhost's quick tier on this node and, when a finding's
# action is strong enough, drain the node with the action as the reason (docs/fleets.md).
#
# slurm.conf, on every node:
#   HealthCheckProgram=/usr/local/sbin/gpuhost-healthcheck.sh
#   HealthCheckInterval=300
#   HealthCheckNodeState=IDLE          # or ANY; the quick tier takes seconds and starts no container
# or as a prolog (Prolog=...): then set GPUHOST_PROLOG_EXIT=1 so that a drained node also fails
# the prolog and Slurm requeues the job.
#
# The drain looks like:
#   scontrol update nodename=gpu03 state=drain reason="gpuhost: replace-gpu GPU 5: row remapping failed on GPU 5 ..."
#
# Settings (environment; slurmd passes its own, so set them here or in a wrapper):
#   GPUHOST_PYTHON    the Python that has pytest-gpuhost (default python3)
#   GPUHOST_ARGS      more pytest arguments, e.g. "--gpuhost-expect-gpus 8 --gpuhost-profile /etc/gpuhost.toml"
#   GPUHOST_DRAIN_AT  the weakest action that drains: reconfigure (default), reset-gpu, reboot,
#                     drain-and-investigate or replace-gpu
#   GPUHOST_TIMEOUT   seconds the check may take (default 120); a check that does not finish drains
#   GPUHOST_REPORTS   keep each run's JSON report and log in this directory (default: a temporary one)
#   SCONTROL          the scontrol command (default scontrol)
set -uo pipefail

node="${SLURMD_NODENAME:-$(hostname -s)}"
python="${GPUHOST_PYTHON:-python3}"
drain_at="${GPUHOST_DRAIN_AT:-reconfigure}"
scontrol="${SCONTROL:-scontrol}"
ranks=(none reconfigure reset-gpu reboot drain-and-investigate replace-gpu)

rank() {
  local i
  for i in "${!ranks[@]}"; do [ "${ranks[$i]}" = "$1" ] && { echo "$i"; return; }; done
  echo 4  # an action this script does not know: treat it as drain-and-investigate
}

if [ -n "${GPUHOST_REPORTS:-}" ]; then
  out="$GPUHOST_REPORTS"; mkdir -p "$out"
else
  out="$(mktemp -d -t gpuhost-healthcheck.XXXXXX)"; trap 'rm -rf "$out"' EXIT
fi
report="$out/gpuhost-$node.json"
rm -f "$report"

# The quick tier: facts and files only, no container and no load. A run of its own directory
# keeps the node's conftest files and pytest.ini out of it.
# shellcheck disable=SC2086  # GPUHOST_ARGS is a list of words
(cd "$out" && timeout -k 10 "${GPUHOST_TIMEOUT:-120}" "$python" -m pytest --gpuhost --gpuhost-tier quick \
  -p no:cacheprovider -q --gpuhost-json "$report" ${GPUHOST_ARGS:-} >"$out/gpuhost-$node.log" 2>&1)
rc=$?

if [ -s "$report" ]; then
  IFS=$'\t' read -r _ action reason < <("$python" -m pytest_gpuhost.reporting.host_actions "$report" | head -n 1)
else
  action=drain-and-investigate
  reason="drain-and-investigate: the health check did not finish (exit $rc): see gpuhost-$node.log"
fi
action="${action:-none}"

if [ "$(rank "$action")" -ge "$(rank "$drain_at")" ] && [ "$action" != none ]; then
  "$scontrol" update nodename="$node" state=drain reason="gpuhost: ${reason:-$action}"
  echo "gpuhost: drained $node: ${reason:-$action}" >&2
  [ "${GPUHOST_PROLOG_EXIT:-0}" = 1 ] && exit 1
fi
exit 0
