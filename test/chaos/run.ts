/**
 * The chaos run from the command line (`npm run chaos -- [--mode outbox|notify|both] [--changes 100000]
 * [--entities 500] [--watchers 40] [--entities-per-watcher 25] [--instances 3] [--rate N]`):
 * prints progress, writes test/chaos/results/<mode>.json, regenerates test/chaos/REPORT.md, exits 1 when a
 * criterion fails.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { packageRoot } from '../../lib/package.js'
import { runChaos, type ChaosReport, type Mode } from './chaos.js'
import { writeReport } from './report.js'

const { values } = parseArgs({
  options: {
    mode: { type: 'string', default: 'both' },
    changes: { type: 'string', default: '100000' },
    entities: { type: 'string', default: '500' },
    watchers: { type: 'string', default: '40' },
    'entities-per-watcher': { type: 'string', default: '25' },
    instances: { type: 'string', default: '3' },
    rate: { type: 'string' }
  }
})

const number = (name: keyof typeof values): number => {
  const n = Number(values[name])
  if (!Number.isInteger(n) || n < 0) {
    process.stderr.write(`--${name} must be a whole number, got "${String(values[name])}"\n`)
    process.exit(2)
  }
  return n
}
const modes: Mode[] | null = values.mode === 'both' ? ['outbox', 'notify'] : values.mode === 'outbox' || values.mode === 'notify' ? [values.mode] : null
if (modes === null) {
  process.stderr.write(`--mode must be outbox, notify or both, got "${values.mode}"\n`)
  process.exit(2)
}

const resultsDir = join(packageRoot, 'test', 'chaos', 'results')
mkdirSync(resultsDir, { recursive: true })
const log = (line: string): void => { process.stdout.write(line + '\n') }

/** What runChaos registers to clean up, run in reverse once the mode is done (or the run is interrupted). */
const cleanups: Array<() => unknown> = []
const cleanUp = async (): Promise<void> => {
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()!()
    } catch (err) {
      process.stderr.write(`cleanup failed: ${(err as Error).message}\n`)
    }
  }
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => { void cleanUp().finally(() => process.exit(130)) })
}

const command = process.argv.length > 2 ? ['npm run chaos --', ...process.argv.slice(2)].join(' ') : 'npm run chaos'
let failed = false
for (const mode of modes) {
  log(`== ${mode} mode ==`)
  let report: ChaosReport
  try {
    report = await runChaos({
      mode,
      changes: number('changes'),
      entities: number('entities'),
      watchers: number('watchers'),
      entitiesPerWatcher: number('entities-per-watcher'),
      instances: number('instances'),
      ratePerSecond: values.rate === undefined ? undefined : number('rate'),
      log: (line) => log(`[${mode}] ${line}`)
    }, { teardown: (fn) => cleanups.push(fn) })
  } finally {
    await cleanUp()
  }
  writeFileSync(join(resultsDir, `${mode}.json`), JSON.stringify({ ...report, command, date: new Date().toISOString() }, null, 2) + '\n')
  log(`${mode}: ${report.passed ? 'passed' : 'FAILED: ' + report.failures.join('; ')}`)
  log(JSON.stringify({ notificationsOnWire: report.notificationsOnWire, duplicatesOnWire: report.duplicatesOnWire, afterDedupe: report.afterDedupe, resyncs: report.resyncs, lostCoveredByResync: report.lostCoveredByResync, lostNotCovered: report.lostNotCovered }))
  if (!report.passed) failed = true
}
writeReport(resultsDir, join(packageRoot, 'test', 'chaos', 'REPORT.md'))
log('wrote test/chaos/REPORT.md')
process.exit(failed ? 1 : 0)
