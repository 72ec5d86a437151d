#!/usr/bin/env bash
# Static checks: ruff everywhere, mypy on the core, the agent, tests, bench and scripts.
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .

# mypy resolves packages by import name; the core's import name (basalt_core)
# differs from its folder (plugins/module_utils), so give it a map of links.
names=$(mktemp -d)
trap 'rm -rf "$names"' EXIT
ln -s "$PWD/plugins/module_utils" "$names/basalt_core"
ln -s "$PWD/agent/basalt_agent" "$names/basalt_agent"
MYPYPATH="$names" mypy --cache-dir "$names/.cache" -p basalt_core -p basalt_agent
mapfile -t loose < <(git ls-files --cached --others --exclude-standard -- 'tests/*.py' 'bench/*.py' 'scripts/*.py' 'plugins/modules/*.py' \
  'plugins/filter/*.py' 'roles/*.py' 'agent/*.py' | grep -v '^agent/basalt_agent/')
MYPYPATH="$names" mypy --cache-dir "$names/.cache" --explicit-package-bases "${loose[@]}"
