/**
 * The coverage gates. After tap has run the tests, fails when the line coverage of lib/ is below `--lines
 * <percent>`, or the branch coverage of the files the tests loaded below `--branches <percent>` (either, or both).
 * tap measures (V8 coverage, lib/ only: test/coverage-gate/map.mjs) and writes a JSON summary (.taprc
 * `coverage-report: json-summary`); this reads it, says the numbers and the files that pull the lines down, and
 * exits 1 below a threshold. (tap 21's own `lines`, `branches`, … options default to 100 each, and fail the run
 * without saying why while the text report is on.) `npm test` gates both over every tier; `npm run test:unit` gates
 * the branches of what the unit tier loads: the pure pieces it tests with fakes must be tested branch by branch
 * there, not only by the integration tests.
 *
 * Only what tests run in their own process counts: the standalone servers the tests start as child processes
 * (bin/serve) are not measured. For the line gate, a file of lib/ that no test loaded counts with all its lines
 * uncovered, as V8 coverage counts lines (every line of the file), so that a test that stops loading it lowers the
 * number. A file of types alone (nothing left once TypeScript erases the types) has no code to run, and does not
 * count.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import ts from 'typescript'

const root = fileURLToPath(new URL('../..', import.meta.url))
const summaryFile = join(root, '.tap', 'report', 'coverage-summary.json')
const coverageDir = join(root, '.tap', 'coverage')
const LOW = 80

const { values } = parseArgs({ options: { lines: { type: 'string' }, branches: { type: 'string' } } })
const percent = (value) => value === undefined ? null : Number(value) >= 0 && Number(value) <= 100 ? Number(value) : NaN
const threshold = percent(values.lines)
const branchThreshold = percent(values.branches)
if (Number.isNaN(threshold) || Number.isNaN(branchThreshold) || (threshold === null && branchThreshold === null)) {
  console.error('coverage gate: give the thresholds as --lines <percent> and/or --branches <percent>')
  process.exit(2)
}
/** where a threshold is set, to say where to change it */
const script = threshold === null ? 'test:unit' : 'coverage:check'
// the summary must be the one tap wrote from the last run's coverage (a run without coverage leaves an old one)
const raw = existsSync(coverageDir) ? readdirSync(coverageDir).map((f) => statSync(join(coverageDir, f)).mtimeMs) : []
if (!existsSync(summaryFile) || raw.length === 0 || Math.max(...raw) > statSync(summaryFile).mtimeMs) {
  console.error(`coverage gate: FAILED: no coverage summary of the last test run (${relative(root, summaryFile)}); run the tests with coverage first (npm test)`)
  process.exit(1)
}

const summary = JSON.parse(readFileSync(summaryFile, 'utf8'))
const files = Object.entries(summary).filter(([file]) => file !== 'total').map(([file, s]) => ({ file: relative(root, file), ...s.lines }))

/** lib/'s TypeScript that runs (declaration files have no code) */
const sources = (dir) => readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
  const path = join(dir, entry.name)
  return entry.isDirectory() ? sources(path) : entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [relative(root, path)] : []
})
const measured = new Set(files.map((f) => f.file))
const linesOf = (file) => {
  const text = readFileSync(join(root, file), 'utf8')
  return text.split('\n').length - (text.endsWith('\n') ? 1 : 0)
}
/** true when the file is types only: its JavaScript is empty, or only `export {}` */
const typesOnly = (file) => {
  const js = ts.transpileModule(readFileSync(join(root, file), 'utf8'), { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, removeComments: true } }).outputText
  return js.replace(/export\s*\{\s*\};?/g, '').trim() === ''
}
const unloaded = sources(join(root, 'lib')).filter((file) => !measured.has(file) && !typesOnly(file)).map((file) => ({ file, covered: 0, total: linesOf(file), pct: 0, unloaded: true }))
files.push(...unloaded)

const covered = summary.total.lines.covered
const total = summary.total.lines.total + unloaded.reduce((n, f) => n + f.total, 0)
const pct = total === 0 ? 0 : Math.floor((covered / total) * 10_000) / 100
const low = files.filter((f) => f.pct < LOW).sort((a, b) => a.pct - b.pct)

const lines = []
const linesPassed = threshold === null || pct >= threshold
if (threshold !== null) {
  lines.push(`coverage gate: lib/ lines ${pct}% (${covered} of ${total}), threshold ${threshold}%`)
  if (low.length > 0) {
    lines.push(`  files below ${LOW}% of lines (uncovered lines):`)
    for (const f of low) lines.push(`    ${f.file.padEnd(32)} ${String(f.pct).padStart(6)}%  (${f.total - f.covered})${f.unloaded === true ? '  never loaded by a test' : ''}`)
  }
  if (!linesPassed) lines.push(`coverage gate: FAILED: lib/ line coverage ${pct}% is below ${threshold}% (the threshold is in package.json, script "${script}")`)
}
// branches, of the files the tests loaded (a file never loaded counts by its lines above)
const branchPct = summary.total.branches.pct
const branchesPassed = branchThreshold === null || branchPct >= branchThreshold
if (branchThreshold !== null) {
  lines.push(`coverage gate: branches of the lib/ files loaded ${branchPct}% (${summary.total.branches.covered} of ${summary.total.branches.total}), threshold ${branchThreshold}%`)
  if (!branchesPassed) lines.push(`coverage gate: FAILED: branch coverage ${branchPct}% is below ${branchThreshold}% (the threshold is in package.json, script "${script}")`)
}
const passed = linesPassed && branchesPassed
lines.push(passed ? 'coverage gate: passed' : 'coverage gate: FAILED')
console.log(lines.join('\n'))
process.exit(passed ? 0 : 1)
