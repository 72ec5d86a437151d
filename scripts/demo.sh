#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian 12 machine (as root):
#   1. set up (scripts/setup.sh) and install ansible-core (the version scripts/ansible-checks.sh pins);
#   2. build the Ansible collection basalt.csi and install it from its own tarball, offline (no Galaxy; the
#      cluster role's kubernetes.core is not needed here),
#      into $BASALT_COLLECTIONS_DIR (default /opt/basalt-ansible/collections);
#   3. run its quickstart playbook through the installed collection: the host's storage side, the agent as a
#      service (systemd where it runs, an init script elsewhere) on the embedded file pool, and a smoke walk
#      through the installed agent's socket;
#   4. walk a volume through its whole life (snapshot, restore, expand, ...) against that installed agent.
# The agent keeps running afterwards; `ansible-playbook basalt.csi.quickstart -e basalt_state=absent` (same
# collections path) removes it again, keeping the pool's data (add -e basalt_purge=true to delete it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

ansible_core=$(sed -n 's/^ANSIBLE_CORE_VERSION=//p' scripts/ansible-checks.sh)
if [[ "$(python3 -c 'import importlib.metadata as m; print(m.version("ansible-core"))' 2>/dev/null)" != "$ansible_core" ]]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "ansible-core==$ansible_core"
  command -v pyenv >/dev/null && pyenv rehash
fi

collections=${BASALT_COLLECTIONS_DIR:-/opt/basalt-ansible/collections}
dist=$(mktemp -d)
trap 'rm -rf "$dist"' EXIT
ansible-galaxy collection build --output-path "$dist" .
ansible-galaxy collection install --offline --no-deps --force --collections-path "$collections" "$dist"/basalt-csi-*.tar.gz

export ANSIBLE_COLLECTIONS_PATH=$collections
ansible-playbook basalt.csi.quickstart
python3 scripts/demo.py --config /etc/basalt/agent.toml "$@"   # the agent role's basalt_agent_config
