#!/usr/bin/env bash
# Offline Ansible checks of the basalt.csi collection (Galaxy unreachable; PyPI reachable):
#   1. ansible-core / ansible (bundled collections) / ansible-lint / molecule at pinned versions (PyPI) and
#      the shellcheck package (Debian), installed if missing (molecule: the VM tier's Molecule test, tests/vm)
#   2. the collection built as it ships (galaxy.yml build_ignore) and installed from its tarball
#      (ansible-galaxy collection install --offline) into a temp collections path: steps 3-6 check that tree
#   3. ansible-test sanity --python 3.11 --venv   (get-pip bootstrap served offline, see scripts/ansible/)
#   4. ansible-test units --python 3.11 --venv    (tests/unit/plugins: the modules' data-driven tests and the core's scripted ones)
#   5. ansible-lint --profile production          on the installed collection, then on what of the checkout
#      does not ship (molecule/, galaxy.yml)
#   6. ansible-doc basalt.csi.<module> for every module
#   7. antsibull-changelog lint: the fragments and changelogs/changelog.yaml; CHANGELOG.rst (shipped) must be
#      exactly what `antsibull-changelog generate` makes of changelogs/changelog.yaml (fragments enter it at
#      `antsibull-changelog release`; the ones not released yet are listed)
# Prints one timing line per step and the total. Exits non-zero when any step fails (all steps run).
# Set ANSIBLE_CHECKS_SKIP_INSTALL=1 to use whatever is installed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit
repo=$PWD

ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_VERSION=12.3.0
ANSIBLE_LINT_VERSION=26.10.1
MOLECULE_VERSION=26.10.0
ANTSIBULL_CHANGELOG_VERSION=0.36.0
GET_PIP_CACHE=~/.ansible/test/cache/get_pip_24_2.py   # the pip version ansible-test 2.19 bootstraps

# ansible-test strips PYENV_VERSION and walks PATH for pythonX.Y: put the real interpreter's bin first
# so that a pyenv shim never answers.
python=$(python3 -c 'import sys; print(sys.executable)')
PATH="$(dirname "$python"):$PATH"
export PATH

started=$SECONDS
failed=()
step() {
  local name=$1 begun=$SECONDS
  shift
  echo "== $name"
  if "$@"; then
    echo "-- $name: ok ($((SECONDS - begun))s)"
  else
    echo "-- $name: FAILED ($((SECONDS - begun))s)"
    failed+=("$name")
  fi
}

installed() {  # installed DIST VERSION: is exactly that version installed?
  [[ "$("$python" -c 'import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass' "$1")" == "$2" ]]
}

tools() {
  local wanted=()
  installed ansible-core "$ANSIBLE_CORE_VERSION" || wanted+=("ansible-core==$ANSIBLE_CORE_VERSION")
  installed ansible "$ANSIBLE_VERSION" || wanted+=("ansible==$ANSIBLE_VERSION")
  installed ansible-lint "$ANSIBLE_LINT_VERSION" || wanted+=("ansible-lint==$ANSIBLE_LINT_VERSION")
  installed molecule "$MOLECULE_VERSION" || wanted+=("molecule==$MOLECULE_VERSION")
  installed antsibull-changelog "$ANTSIBULL_CHANGELOG_VERSION" || wanted+=("antsibull-changelog==$ANTSIBULL_CHANGELOG_VERSION")
  if ((${#wanted[@]})) && [[ -z "${ANSIBLE_CHECKS_SKIP_INSTALL:-}" ]]; then
    echo "installing ${wanted[*]}"
    "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${wanted[@]}" || return 1
    command -v pyenv >/dev/null && pyenv rehash
  fi
  if ! command -v shellcheck >/dev/null && [[ -z "${ANSIBLE_CHECKS_SKIP_INSTALL:-}" ]]; then
    # ansible-test's shellcheck sanity test is skipped (with a warning only) without it.
    echo "installing shellcheck"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; } || return 1
  fi
  mkdir -p "$(dirname "$GET_PIP_CACHE")"
  cmp -s scripts/ansible/get_pip_offline.py "$GET_PIP_CACHE" || cp scripts/ansible/get_pip_offline.py "$GET_PIP_CACHE"
  # the first line only; sed reads the rest (head's early exit made ansible print a broken-pipe traceback)
  ansible --version | sed -n 1p
  ansible-lint --version | sed -n 1p
}

work=$(mktemp -d /tmp/basalt-ansible-checks-XXXXXX)
trap 'rm -rf "$work"' EXIT
collections="$work/collections"
tree="$collections/ansible_collections/basalt/csi"

build() {
  ansible-galaxy collection build --output-path "$work/dist" "$repo" || return 1
  ansible-galaxy collection install --offline --no-deps --collections-path "$collections" \
    "$work"/dist/basalt-csi-*.tar.gz
}

sanity() { (cd "$tree" && ansible-test sanity --python 3.11 --venv --color no); }
units() { (cd "$tree" && ansible-test units --python 3.11 --venv --color no tests/unit/plugins/); }
lint() {
  local installed=0
  if [[ -d "$tree" ]]; then
    (cd "$tree" && ANSIBLE_COLLECTIONS_PATH="$collections" ansible-lint --profile production --offline) || installed=1
  else
    echo "no installed collection to lint (the build failed)"
    installed=1
  fi
  # what the tarball leaves out and ansible-lint reads (docs/packaging.md): linted from the checkout
  ANSIBLE_COLLECTIONS_PATH="$collections" ansible-lint --profile production --offline molecule galaxy.yml || return 1
  return "$installed"
}
docs() {
  local module
  for module in "$tree"/plugins/modules/*.py; do
    module=$(basename "$module" .py)
    ANSIBLE_COLLECTIONS_PATH="$collections" ansible-doc "basalt.csi.$module" >/dev/null || return 1
    echo "ansible-doc basalt.csi.$module: ok"
  done
}

changelog() {
  antsibull-changelog lint && antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml || return 1
  local copy="$work/changelog"
  mkdir -p "$copy"
  cp -R galaxy.yml CHANGELOG.rst changelogs "$copy"/
  (cd "$copy" && antsibull-changelog generate) || return 1
  if ! diff -u CHANGELOG.rst "$copy/CHANGELOG.rst"; then
    echo "CHANGELOG.rst is not what antsibull-changelog generate makes of changelogs/changelog.yaml: run it"
    return 1
  fi
  echo "not released yet (enter CHANGELOG.rst at antsibull-changelog release):" \
    "$(find changelogs/fragments -name '*.yml' -printf '%f\n' | sort | tr '\n' ' ')"
}

step "tools" tools
if [[ " ${failed[*]} " != *" tools "* ]]; then
  step "build" build
  if [[ " ${failed[*]} " != *" build "* ]]; then
    step "ansible-test sanity" sanity
    step "ansible-test units" units
    step "ansible-doc" docs
  fi
  step "ansible-lint" lint
  step "changelog" changelog
fi

echo "ansible-checks: $((SECONDS - started))s in total"
if ((${#failed[@]})); then
  echo "ansible-checks: FAILED: ${failed[*]}"
  exit 1
fi
echo "ansible-checks: all passed"
