/**
 * The chaos run (test/chaos/) at a small scale: 1,500 changes over 60 entities, 6 watchers of 10 entities each,
 * two instances, while the listener backend is terminated, PostgreSQL is restarted, the leader is killed and
 * Redis is restarted. Each watcher is the SDK's client. Outbox mode: every watcher ends with every change, in
 * order, none twice after the SDK's dedupe by position. Notify mode: every lost change is covered by a resync the
 * SDK reported. `npm run chaos` runs it at 100,000 changes.
 */
import t from 'tap'
import { runChaos } from '../chaos/chaos.js'

for (const mode of ['outbox', 'notify'] as const) {
  t.test(`${mode} mode survives the chaos`, { timeout: 240_000 }, async (t) => {
    const report = await runChaos({ mode, changes: 1500, entities: 60, watchers: 6, entitiesPerWatcher: 10, instances: 2 }, t)
    const { events, uncovered, disorder, missingSamples } = report
    t.comment(JSON.stringify({ expected: report.expected, notificationsOnWire: report.notificationsOnWire, duplicatesOnWire: report.duplicatesOnWire, afterDedupe: report.afterDedupe, resyncs: report.resyncs, lostCoveredByResync: report.lostCoveredByResync, lostNotCovered: report.lostNotCovered, durationMs: report.durationMs, client: report.client }))
    for (const event of events) t.comment(`${(event.at / 1000).toFixed(1)} s: ${event.what}`)
    t.equal(events.length, 4, 'the four chaos events happened')
    t.equal(report.changes, 1500, 'every change committed')
    if (mode === 'outbox') {
      t.equal(report.afterDedupe.missing, 0, 'no change missing', { missingSamples })
      t.equal(report.afterDedupe.outOfOrder, 0, 'none out of order', { disorder })
      t.equal(report.afterDedupe.duplicates, 0, 'none twice under different positions')
      t.equal(report.afterDedupe.delivered, report.expected, 'every change of every watched entity delivered')
    } else {
      t.equal(report.lostNotCovered, 0, 'every lost change is covered by a resync', { uncovered })
      t.ok(report.resyncs > 0, 'the gaps were signalled')
    }
  })
}
