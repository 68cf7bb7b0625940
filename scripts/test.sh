#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up (idempotent), lint, build, vitest.
# Prints vitest's own summary and then one plain "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== lint (biome)"
npx --no-install biome check src test bench scripts
echo "== tests (vitest)"
mkdir -p .cache
# A results file left by an earlier run must not stand in for this one's.
rm -f .cache/vitest-results.json
status=0
# setup.sh has just built dist/ with the same incremental tsc (a type error stops it there),
# so vitest's global set-up (test/support/global-setup.ts) skips its own run.
VHOST_RT_SKIP_TSC=1 npx --no-install vitest run --reporter=default --reporter=json \
  --outputFile=.cache/vitest-results.json "$@" || status=$?
node -e '
  const fs = require("fs");
  if (!fs.existsSync(".cache/vitest-results.json")) {
    console.log("vitest: no results file: the runner itself died before writing it (see above)");
    process.exit(0);
  }
  const r = JSON.parse(fs.readFileSync(".cache/vitest-results.json", "utf8"));
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`vitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
' || true
exit "$status"
