/**
 * What the watchers' SDK clients delivered, against what was committed. Per watcher and entity, as the SDK
 * delivered them (after its dedupe by position): every n from 1 to the entity's final n is expected once, in
 * increasing order. A missing change is covered when the SDK told the application to refetch the entity (a
 * resync it reported) at or after the change's commit time minus 50 ms: the refetch then returns a state that
 * includes it.
 */
import type { Resync, Receiver } from './watcher.js'
import type { WriteProgress } from './writers.js'

/** clock slack between the writer's commit time and the watcher's arrival time (one process, one clock) */
const SLACK_MS = 50

export interface Delivery {
  subscriptions: number
  expected: number
  notificationsOnWire: number
  duplicatesOnWire: number
  afterDedupe: {
    delivered: number
    missing: number
    /** n going backwards after dedupe */
    outOfOrder: number
    /** the same n under two different positions: one change sent as two (a real bug) */
    duplicates: number
  }
  /**
   * Had the client kept the notifications that arrived between a resume and its reply (first arrival of each
   * position kept): how many would have gone backwards. Approximate: such a client resumes from other positions.
   */
  keptWhileResuming: { dropped: number, outOfOrder: number }
  resyncs: number
  lostCoveredByResync: number
  lostNotCovered: number
  /** the first few uncovered losses, for a diagnosis: watcher, entity, n, commit time */
  uncovered: Array<{ watcher: number, entity: string, n: number, committedAt: number, lastResyncAt: number | null }>
  /** missing changes by the second (since the start) they were committed in */
  missingBySecond: Record<string, number>
  /** the first few missing changes, with the watcher's resyncs and recovered resumes (ms since the start) */
  missingSamples: Array<{ watcher: number, entity: string, n: number, committedAt: number, resyncs: string[], recovered: number[], opened: number[], wire: string[] }>
  /** the first few changes that arrived after a later one: what came before and after, times from the start */
  disorder: Array<{ watcher: number, entity: string, around: string[], resyncs: string[], recovered: number[], opened: number[] }>
  watcherCounts: Record<string, number>
}

export function analyse (watchers: Receiver[], progress: WriteProgress, runStart: number): Delivery {
  const result: Delivery = {
    subscriptions: 0,
    expected: 0,
    notificationsOnWire: 0,
    duplicatesOnWire: 0,
    afterDedupe: { delivered: 0, missing: 0, outOfOrder: 0, duplicates: 0 },
    keptWhileResuming: { dropped: 0, outOfOrder: 0 },
    resyncs: 0,
    lostCoveredByResync: 0,
    lostNotCovered: 0,
    uncovered: [],
    disorder: [],
    missingBySecond: {},
    missingSamples: [],
    watcherCounts: {}
  }
  for (const watcher of watchers) {
    for (const [key, value] of Object.entries(watcher.counts)) result.watcherCounts[key] = (result.watcherCounts[key] ?? 0) + value
    result.notificationsOnWire += watcher.counts.notificationsOnWire
    result.duplicatesOnWire += watcher.counts.duplicatesOnWire
    for (const entity of watcher.entities.values()) {
      result.subscriptions++
      result.resyncs += entity.resyncs.length
      const final = progress.finalN.get(entity.id) ?? 0
      result.expected += final
      const seen = new Set<number>()
      let previous = -Infinity
      for (const [i, { n }] of entity.received.entries()) {
        if (n < previous) {
          result.afterDedupe.outOfOrder++
          if (result.disorder.length < 10) {
            result.disorder.push({
              watcher: watcher.index,
              entity: entity.id,
              around: entity.received.slice(Math.max(0, i - 4), i + 3).map((r) => `n=${r.n} ${r.position} at ${r.at - runStart}`),
              resyncs: entity.resyncs.map((r) => `${r.why} at ${r.at - runStart}`),
              recovered: entity.recoveredAt.map((at) => at - runStart),
              opened: watcher.openedAt.map((at) => at - runStart)
            })
          }
        }
        previous = n
        if (seen.has(n)) result.afterDedupe.duplicates++
        seen.add(n)
      }
      const kept = new Set<string>()
      let last = -Infinity
      for (const { n, position, dropped } of entity.wire) {
        if (dropped) result.keptWhileResuming.dropped++
        if (kept.has(position)) continue
        kept.add(position)
        if (n < last) result.keptWhileResuming.outOfOrder++
        last = n
      }
      const resyncTimes = entity.resyncs.map((r: Resync) => r.at)
      const lastResync = resyncTimes.length === 0 ? null : Math.max(...resyncTimes)
      for (let n = 1; n <= final; n++) {
        if (seen.has(n)) {
          result.afterDedupe.delivered++
          continue
        }
        result.afterDedupe.missing++
        const committedAt = progress.commitAt.get(`${entity.id}#${n}`) ?? 0
        const second = String(Math.floor((committedAt - runStart) / 1000))
        result.missingBySecond[second] = (result.missingBySecond[second] ?? 0) + 1
        if (result.missingSamples.length < 20) {
          result.missingSamples.push({
            watcher: watcher.index,
            entity: entity.id,
            n,
            committedAt: committedAt - runStart,
            resyncs: entity.resyncs.map((r) => `${r.why} at ${r.at - runStart}`),
            recovered: entity.recoveredAt.map((at) => at - runStart),
            opened: watcher.openedAt.map((at) => at - runStart),
            // what came off the wire for the entity around then
            wire: entity.wire.filter((w) => w.at >= committedAt - 1000 && w.at <= committedAt + 5000).slice(0, 40)
              .map((w) => `n=${w.n} ${w.position} at ${w.at - runStart}${w.dropped ? ' dropped' : ''}`)
          })
        }
        if (lastResync !== null && lastResync >= committedAt - SLACK_MS) {
          result.lostCoveredByResync++
        } else {
          result.lostNotCovered++
          if (result.uncovered.length < 20) {
            result.uncovered.push({ watcher: watcher.index, entity: entity.id, n, committedAt: committedAt - runStart, lastResyncAt: lastResync === null ? null : lastResync - runStart })
          }
        }
      }
    }
  }
  return result
}
