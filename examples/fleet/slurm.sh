#!/usr/bin/env bash
# Check every node of a Slurm allocation where it stands, then merge the reports.
#
#   sbatch --nodes=16 --ntasks-per-node=1 --exclusive examples/fleet/slurm.sh
#
# One task per node runs `pytest --gpuhost` with its own Docker daemon; each writes its
# reports to a shared directory under its host name; the batch step merges them.
#SBATCH --job-name=gpuhost
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --time=00:30:00
set -uo pipefail

out="${GPUHOST_REPORTS:-$PWD/gpuhost-$SLURM_JOB_ID}"
mkdir -p "$out"

# Exit 1 only says that checks failed: the reports tell which, so srun goes on.
srun --kill-on-bad-exit=0 bash -c '
  node=$(hostname -s)
  pytest --gpuhost --junitxml="'"$out"'/$node.xml" --gpuhost-json="'"$out"'/$node.json"
  rc=$?
  [ "$rc" -le 1 ] || echo "gpuhost: $node: pytest exited with $rc" >&2
  exit 0
'

python3 -m pytest_gpuhost.reporting.merge "$out/fleet.json" $(ls "$out"/*.json | grep -v '/fleet.json$')
python3 -m pytest_gpuhost.reporting.merge "$out/fleet.xml" $(ls "$out"/*.xml | grep -v '/fleet.xml$')
# A failed check anywhere fails the job, like a single node's run.
python3 - "$out/fleet.json" <<'PY'
import json, sys
outcomes = json.load(open(sys.argv[1]))["summary"]["outcomes"]
sys.exit(1 if outcomes["failed"] or outcomes["error"] else 0)
PY
