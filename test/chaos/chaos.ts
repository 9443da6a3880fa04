/**
 * The chaos run: changes over many entities through a cluster of standalone instances while, by progress of the
 * committed changes, the listener backend is terminated (15 %), PostgreSQL is restarted (35 %), the leader
 * instance is killed and replaced (55 %) and Redis is restarted (75 %). Every service is the run's own (its own
 * PostgreSQL cluster and Redis on free ports), so nothing else on the machine is disturbed.
 *
 * Outbox mode passes when every watcher ends with every change of its entities, in order, none twice after
 * dedupe by position. Notify mode passes when every change a watcher lost is covered by a resync it received.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { ownBroker } from '../helpers/brokers.js'
import { martenTableSql } from '../helpers/services.js'
import { ownPostgres, type OwnPostgres } from './postgres.js'
import { startInstance, type Instance } from './instances.js'
import { Receiver } from './watcher.js'
import { write, type WriteProgress } from './writers.js'
import { analyse, type Delivery } from './analyse.js'

/** outbox: positions are resumable (`since` replays what was missed); notify: a gap can only be refetched */
export type Mode = 'outbox' | 'notify'

export interface ChaosOptions {
  mode: Mode
  /** changes committed in all */
  changes: number
  entities: number
  watchers: number
  entitiesPerWatcher: number
  instances: number
  /**
   * changes per second across the writers (0: as fast as they go). Default: enough to take about 20 s, so the
   * four events land apart, each on a system that recovered from the one before.
   */
  ratePerSecond?: number
  log?: (line: string) => void
}

export interface ChaosEvent {
  /** ms since the first change was written */
  at: number
  what: string
}

export interface ChaosReport extends Omit<Delivery, 'watcherCounts' | 'uncovered' | 'disorder' | 'missingBySecond' | 'missingSamples'> {
  mode: Mode
  changes: number
  entities: number
  watchers: number
  instances: number
  ratePerSecond: number
  events: ChaosEvent[]
  /** from the first change written to the end of the wait for the last deliveries */
  durationMs: number
  /** from the first change written to the last commit */
  writeMs: number
  writer: { retries: number, unknownOutcome: number }
  client: Delivery['watcherCounts']
  uncovered: Delivery['uncovered']
  disorder: Delivery['disorder']
  missingBySecond: Delivery['missingBySecond']
  missingSamples: Delivery['missingSamples']
  passed: boolean
  failures: string[]
}

interface Teardown { teardown(fn: () => unknown): void }

const DATABASE = 'chaos'
const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

async function until (check: () => boolean | Promise<boolean>, ms: number, pause = 50): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!await check()) {
    if (Date.now() > deadline) return false
    await sleep(pause)
  }
  return true
}

/** The criteria of a mode, as the failures they find (none: it passed). */
export function failuresOf (report: Pick<ChaosReport, 'mode' | 'expected' | 'afterDedupe' | 'lostNotCovered' | 'events'>): string[] {
  const failures: string[] = []
  if (report.events.length !== 4) failures.push(`${report.events.length} of the 4 chaos events happened`)
  if (report.mode === 'outbox') {
    const { missing, outOfOrder, duplicates, delivered } = report.afterDedupe
    if (missing !== 0) failures.push(`${missing} changes missing`)
    if (outOfOrder !== 0) failures.push(`${outOfOrder} changes out of order`)
    if (duplicates !== 0) failures.push(`${duplicates} changes twice under different positions`)
    if (delivered !== report.expected) failures.push(`${delivered} of ${report.expected} changes delivered`)
  } else if (report.lostNotCovered !== 0) {
    failures.push(`${report.lostNotCovered} lost changes not covered by a resync`)
  }
  return failures
}

/** Picks `k` distinct random indexes of `n`. */
function pick (n: number, k: number): number[] {
  const all = Array.from({ length: n }, (_, i) => i)
  for (let i = 0; i < Math.min(k, n); i++) {
    const j = i + Math.floor(Math.random() * (n - i))
    ;[all[i], all[j]] = [all[j], all[i]]
  }
  return all.slice(0, Math.min(k, n))
}

/** The pid of the instance holding the listener's advisory lock (application_name changefeed-listener:<db>:<pid>). */
async function leaderPid (pg: OwnPostgres): Promise<number | null> {
  const rows = await pg.query<{ name: string }>(DATABASE, `SELECT a.application_name AS name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted`).catch(() => [])
  const names = rows.map((r) => r.name).filter((name) => name.startsWith('changefeed-listener:'))
  return names.length === 1 ? Number(names[0].split(':').pop()) : null
}

export async function runChaos (options: ChaosOptions, t: Teardown): Promise<ChaosReport> {
  const log = options.log ?? (() => {})
  const { mode, changes } = options
  const ratePerSecond = options.ratePerSecond ?? Math.max(100, Math.round(changes / 20))

  // services of the run's own
  const pg = await ownPostgres(t)
  await pg.query('postgres', `CREATE DATABASE ${DATABASE} TEMPLATE template0`)
  await pg.query(DATABASE, martenTableSql('mt_doc_item'))
  const redis = await ownBroker(t, 'redis')
  log(`postgres ${pg.url(DATABASE)}, redis ${redis.url}`)

  const dir = mkdtempSync(join(tmpdir(), 'changefeed-chaos-'))
  t.teardown(() => { if (process.env.CHAOS_KEEP === undefined) rmSync(dir, { recursive: true, force: true }) })
  const config = join(dir, 'changefeed.json')
  writeFileSync(config, JSON.stringify({
    server: { port: 0 },
    databases: [{ name: 'main', url: pg.url(DATABASE) }],
    capture: {
      mode,
      channel: 'chaos',
      leaderRetryMs: 200,
      reconnectMaxDelayMs: 500,
      probeIntervalSeconds: 1,
      ...(mode === 'outbox' ? { outbox: { pollIntervalMs: 200 } } : {})
    },
    entities: { Item: { access: 'public', payload: 'full' } },
    bus: { provider: 'redis', url: redis.url, prefix: `chaos-${randomUUID().slice(0, 8)}`, instanceTtlSeconds: 3 },
    limits: { maxSubscriptionsPerConnection: 1000, maxConnectionsPerIp: 100_000, subscribeRatePerSecond: 1000 }
  }, null, 2))
  let started = 0
  const live: Instance[] = []
  // as an orchestrator does: an instance that cannot start (its broker is down: CHANGEFEED_BUS_UNAVAILABLE) is
  // started again, a few times
  const launch = async (attempts = 5): Promise<Instance> => {
    try {
      const instance = await startInstance(t, config, join(dir, `instance-${++started}.log`))
      live.push(instance)
      return instance
    } catch (err) {
      if (attempts <= 1 || !String(err).includes('CHANGEFEED_BUS_UNAVAILABLE')) throw err
      log('an instance could not start (its broker was down); starting it again')
      return await launch(attempts - 1)
    }
  }
  // the first one alone, so the trigger SQL is applied once before the others start
  await launch()
  await Promise.all(Array.from({ length: options.instances - 1 }, async () => await launch()))
  if (!await until(async () => await leaderPid(pg) !== null, 10_000)) throw new Error('no instance became the listener within 10 s')
  log(`${live.length} instances: ${live.map((i) => `${i.pid} ${i.url}`).join(', ')}; logs in ${dir}`)

  // the entities, at n = 0, before anyone watches
  const entityIds = Array.from({ length: options.entities }, (_, i) => `item-${i}`)
  await pg.query(DATABASE, 'INSERT INTO mt_doc_item (id, data) SELECT id, jsonb_build_object(\'id\', id, \'n\', 0) FROM unnest($1::text[]) AS id', [entityIds])

  const watchers = Array.from({ length: options.watchers }, (_, i) =>
    new Receiver(i, pick(options.entities, options.entitiesPerWatcher).map((e) => entityIds[e]), () => live.filter((l) => !l.exited).map((l) => l.url), log))
  t.teardown(() => { for (const w of watchers) w.close() })
  await Promise.all(watchers.map(async (w) => await w.start()))
  log(`${watchers.length} watchers subscribed to ${watchers.reduce((s, w) => s + w.entities.size, 0)} entities`)

  const progress: WriteProgress = { committed: 0, commitAt: new Map(), finalN: new Map(), retries: 0, unknownOutcome: 0, lastCommitAt: 0 }
  const events: ChaosEvent[] = []
  const start = Date.now()
  const since = (): string => `${((Date.now() - start) / 1000).toFixed(1)} s`
  let writing = true
  const writes = write({ url: pg.url(DATABASE), entityIds, changes, ratePerSecond, log }, progress).finally(() => { writing = false })
  const ticker = setInterval(() => {
    const wire = watchers.reduce((s, w) => s + w.counts.notificationsOnWire, 0)
    const connected = watchers.reduce((s, w) => s + w.counts.connects, 0)
    log(`${since()}: ${progress.committed} of ${changes} committed, ${wire} notifications on the wire, ${connected - watchers.length} reconnects`)
  }, 5000)
  t.teardown(() => clearInterval(ticker))

  let replacing: Promise<void> = Promise.resolve()
  const schedule: Array<[number, string, () => Promise<string>]> = [
    [0.15, 'terminate the listener backend', async () => {
      let terminated = 0
      await until(async () => {
        const rows = await pg.query(DATABASE, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'changefeed-listener:%'")
        terminated = rows.length
        return terminated > 0
      }, 5000)
      if (terminated === 0) throw new Error('no listener backend to terminate')
      return `${terminated} listener backends terminated`
    }],
    [0.35, 'restart PostgreSQL', async () => {
      const begun = Date.now()
      await pg.restart()
      return `pg_ctl restart -m fast took ${Date.now() - begun} ms`
    }],
    [0.55, 'kill -9 the leader instance', async () => {
      let pid: number | null = null
      if (!await until(async () => (pid = await leaderPid(pg)) !== null, 15_000)) throw new Error('no leader to kill within 15 s')
      const leader = live.find((i) => i.pid === pid)
      if (leader === undefined) throw new Error(`the leader (pid ${String(pid)}) is none of the instances`)
      await leader.stop('SIGKILL')
      live.splice(live.indexOf(leader), 1)
      // the replacement starts meanwhile (seconds under load); the schedule goes on
      replacing = launch().then((i) => log(`${since()}: replacement instance ${i.pid} listening`))
      return `killed leader pid ${leader.pid}, a replacement is starting`
    }],
    [0.75, 'restart Redis', async () => {
      await redis.stop()
      await sleep(1000)
      await redis.start()
      return 'stopped, 1 s down, started'
    }]
  ]
  const chaos = (async () => {
    for (const [fraction, what, act] of schedule) {
      await until(() => progress.committed >= fraction * changes || !writing, Infinity, 10)
      if (!writing) break
      const at = Date.now() - start
      log(`${since()}: ${what} (${progress.committed} committed)`)
      const detail = await act()
      events.push({ at, what: `${what}: ${detail}` })
      log(`${since()}: ${what}: ${detail}`)
    }
  })()
  await Promise.all([writes, chaos])
  await replacing
  const writeMs = progress.lastCommitAt - start
  log(`${since()}: all ${progress.committed} changes committed (${progress.retries} retried statements, ${progress.unknownOutcome} unknown outcomes)`)

  // the last deliveries
  const total = (): number => watchers.reduce((s, w) => s + w.counts.notificationsOnWire, 0)
  const complete = (): boolean => watchers.every((w) => [...w.entities.values()].every((e) => e.maxN === progress.finalN.get(e.id)))
  let seen = total()
  let movedAt = Date.now()
  const stalled = (quietMs: number): boolean => {
    const now = total()
    if (now !== seen) {
      seen = now
      movedAt = Date.now()
    }
    return Date.now() - movedAt > quietMs
  }
  if (mode === 'outbox') {
    await until(() => complete() || stalled(60_000), Infinity, 100)
    // late repeats or reordering would show now
    await sleep(1000)
  } else {
    await until(() => stalled(5000), 60_000, 100)
  }
  clearInterval(ticker)
  const durationMs = Date.now() - start
  for (const w of watchers) w.close()
  log(`${since()}: done`)

  const { watcherCounts, uncovered, disorder, missingBySecond, missingSamples, ...delivery } = analyse(watchers, progress, start)
  const report: ChaosReport = {
    mode,
    changes: progress.committed,
    entities: options.entities,
    watchers: options.watchers,
    instances: options.instances,
    ratePerSecond,
    ...delivery,
    events,
    durationMs,
    writeMs,
    writer: { retries: progress.retries, unknownOutcome: progress.unknownOutcome },
    client: watcherCounts,
    uncovered,
    disorder,
    missingBySecond,
    missingSamples,
    passed: false,
    failures: []
  }
  report.failures = failuresOf(report)
  report.passed = report.failures.length === 0
  return report
}
