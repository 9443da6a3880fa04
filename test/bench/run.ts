/**
 * Benchmarks: `npm run bench -- <memory|fanout|saturation|storm|cluster|s2|s4|s5|s6|s7|s8|presence|jitter|deploy|report>`. Each scenario starts what it needs on this machine
 * (loopback only), measures, stops every process it started, writes test/bench/results/<scenario>.json and
 * regenerates test/bench/REPORT.md with its charts. Peers run in the same run, one after another, on the same
 * machine, for the same job: receive a change from Redis, deliver it to every watcher.
 */
import { Redis } from 'ioredis'
import pg from 'pg'
import { writeReport } from './report.js'
import {
  MARTEN, REDIS_URL, cleanup, collect, freshDatabase, log, messageFor, metric, publishAt, resultsDir, rssMiB, save, sleep, startChangefeed,
  startLoad, stopLoad, type Target
} from './harness.js'
import { scaleScenarios } from './scale.js'
import { deltaScenarios } from './delta.js'
import { filterScenarios } from './filters.js'
import { presenceScenarios } from './presence.js'
import { jitterScenarios } from './jitter.js'
import { deployScenarios } from './deploy.js'

// ---------------------------------------------------------------- scenarios

const SOCKETS = Number(process.env.BENCH_SOCKETS ?? 10_000)

/** S6: database reads per changed entity per transaction, with 1 and with 10,000 watchers. */
async function s6 (): Promise<void> {
  const url = await freshDatabase('changefeed_bench_s6')
  const db = new pg.Client({ connectionString: url })
  await db.connect()
  await db.query(MARTEN('mt_doc_match'))
  await db.query('INSERT INTO mt_doc_match (id, data) VALUES (\'hot\', \'{}\')')
  // a deep send buffer: this scenario counts database reads, not how fast the load generators read
  const target = await startChangefeed({ server: { port: 0 }, databases: [{ name: 'main', url }], entities: { Match: { access: 'public', payload: 'full' } }, telemetry: { prometheus: true }, limits: { maxConnectionsPerIp: 100_000, maxBufferedBytes: 64 * 1024 * 1024 } })
  const http = target.url.replace('ws', 'http').replace(/\/ws$/, '')
  const rows: object[] = []
  const changes = 10
  for (const watchers of [1, SOCKETS]) {
    const load = await startLoad([target], watchers, watchers === 1 ? 1 : 2, ['hot'], 'Match', 'trigger')
    await sleep(1000)
    await collect(load)
    const readsBefore = await metric(http, 'changefeed_document_reads_total')
    for (let i = 0; i < changes; i++) {
      // 9 KB: too large to ride inline in the NOTIFY (< 8000 bytes), so the document is read from the table
      await db.query('UPDATE mt_doc_match SET data = $1 WHERE id = $2', [JSON.stringify({ i, commentary: 'c'.repeat(8200) }), 'hot'])
      await sleep(1000)
    }
    await sleep(5000)
    const lat = await collect(load)
    const reads = await metric(http, 'changefeed_document_reads_total') - readsBefore
    const row = { watchers: load.connected, changes, documentReads: reads, readsPerChange: reads / changes, deliveries: lat.count, p50: lat.p50, p99: lat.p99 }
    log(JSON.stringify(row))
    rows.push(row)
    await stopLoad(load)
  }
  await target.stop()
  await db.end()
  save('s6', { description: 'full-payload entity with an 8 KB document (too large to ride inline in NOTIFY, so read from the table), one change per second; database reads per change', rows })
}

/** S2: 10K sockets over 1,000 entities, 200 changes/s through real PostgreSQL triggers; commit → client. */
async function s2 (): Promise<void> {
  const url = await freshDatabase('changefeed_bench_s2')
  const pool = new pg.Pool({ connectionString: url, max: 4 })
  await pool.query(MARTEN('mt_doc_match'))
  const entities = Array.from({ length: 1000 }, (_, i) => `m-${i}`)
  await pool.query('INSERT INTO mt_doc_match (id, data) SELECT \'m-\' || g, \'{"homeScore":0}\' FROM generate_series(0, 999) g')
  const target = await startChangefeed({ server: { port: 0 }, databases: [{ name: 'main', url }], entities: { Match: { access: 'public', payload: 'full' } }, limits: { maxConnectionsPerIp: 100_000 } })
  const load = await startLoad([target], SOCKETS, 2, entities, 'Match', 'trigger')
  await sleep(1500)
  await collect(load)
  const rate = 200
  const seconds = 15
  const start = Date.now()
  let writes = 0
  while (Date.now() - start < seconds * 1000) {
    const due = start + (writes * 1000) / rate
    if (due > Date.now()) await sleep(due - Date.now())
    const id = entities[Math.floor(Math.random() * entities.length)]
    void pool.query('UPDATE mt_doc_match SET data = jsonb_set(data, \'{homeScore}\', to_jsonb($1::int)) WHERE id = $2', [writes, id])
    writes++
  }
  await sleep(2000)
  const lat = await collect(load)
  const row = { sockets: load.connected, entities: entities.length, changesPerSecond: rate, seconds, writes, expected: writes * (SOCKETS / entities.length), delivered: lat.count, ...lat }
  log(JSON.stringify(row))
  await stopLoad(load)
  await target.stop()
  await pool.end()
  save('s2', { description: `${SOCKETS} sockets over 1,000 entities (10 each), ${rate} single-row transactions/s on random entities; latency from the trigger's clock to receipt`, rows: [row] })
}

/** S4: capture throughput: single-row transactions at increasing rates, trigger → leader → Redis. */
async function s4 (): Promise<void> {
  const url = await freshDatabase('changefeed_bench_s4')
  const pool = new pg.Pool({ connectionString: url, max: 8 })
  await pool.query(MARTEN('mt_doc_match'))
  await pool.query('INSERT INTO mt_doc_match (id, data) SELECT \'m-\' || g, \'{"n":0}\' FROM generate_series(0, 9999) g')
  const target = await startChangefeed({ server: { port: 0 }, databases: [{ name: 'main', url }], entities: { Match: { access: 'public', payload: 'minimal' } }, bus: { provider: 'redis', url: REDIS_URL, prefix: `bench${Date.now()}` }, telemetry: { prometheus: true } })
  const http = target.url.replace('ws', 'http').replace(/\/ws$/, '')
  const rows: object[] = []
  const seconds = 5
  for (const rate of [500, 1000, 2000, 4000, 8000]) {
    const before = await metric(http, 'changefeed_changes_total')
    const start = Date.now()
    let writes = 0
    const inflight = new Set<Promise<unknown>>()
    while (Date.now() - start < seconds * 1000) {
      const due = start + (writes * 1000) / rate
      if (due > Date.now() + 1) await sleep(due - Date.now())
      if (inflight.size >= 64) await Promise.race(inflight)
      const p = pool.query('UPDATE mt_doc_match SET data = jsonb_set(data, \'{n}\', to_jsonb($1::int)) WHERE id = $2', [writes, `m-${writes % 10_000}`])
      inflight.add(p)
      void p.finally(() => inflight.delete(p))
      writes++
    }
    await Promise.all(inflight)
    const writtenSeconds = (Date.now() - start) / 1000
    const atEnd = await metric(http, 'changefeed_changes_total') - before
    await sleep(2000)
    const drained = await metric(http, 'changefeed_changes_total') - before
    const row = { targetRate: rate, writes, achievedWriteRate: Math.round(writes / writtenSeconds), capturedByEndOfWrites: atEnd, capturedAfterDrain: drained, backlogAtEnd: writes - atEnd, sustained: drained >= writes && writes - atEnd <= Math.max(50, rate * 0.1) }
    log(JSON.stringify(row))
    rows.push(row)
  }
  await target.stop()
  await pool.end()
  save('s4', { description: 'single-row UPDATE transactions at increasing rates from 8 connections; changes routed and published to Redis by the leader', rows })
}

/** S5: 100,000 connections on six instances sharing Redis; one broadcast reaches all. */
async function s5 (): Promise<void> {
  const total = Number(process.env.BENCH_S5_SOCKETS ?? 100_000)
  const instances = 6
  const url = await freshDatabase('changefeed_bench_s5')
  const prefix = `bench${Date.now()}`
  const config = { server: { port: 0 }, databases: [{ name: 'main', url }], entities: { Match: { access: 'public', payload: 'full' } }, bus: { provider: 'redis', url: REDIS_URL, prefix }, limits: { maxConnectionsPerIp: 100_000 } }
  const targets: Target[] = []
  for (let i = 0; i < instances; i++) targets.push(await startChangefeed(config))
  const load = await startLoad(targets, total, instances, ['hot'], 'Match', 'payload')
  log(`s5: ${load.connected} connected in ${load.seconds.toFixed(1)} s (${load.failed} failed)`)
  await sleep(3000)
  await collect(load)
  const redis = new Redis(REDIS_URL)
  // one broadcast to every socket: wait until all have it (at most 30 s)
  const broadcasts = 1
  await publishAt(redis, 1, broadcasts, (t, seq) => messageFor('changefeed', prefix, 'hot', t, seq))
  await sleep(30_000)
  const lat = await collect(load)
  const rss = targets.map((t) => Math.round(rssMiB(t.pid)))
  const row = { instances, sockets: load.connected, connectSeconds: Math.round(load.seconds), broadcasts, expected: broadcasts * load.connected, delivered: lat.count, ...lat, rssMiBPerInstance: rss }
  log(JSON.stringify(row))
  redis.disconnect()
  await stopLoad(load)
  for (const t of targets) await t.stop()
  save('s5', { description: `${total.toLocaleString('en')} connections over ${instances} instances and one Redis; one broadcast of one hot entity to every socket`, rows: [row] })
}

const scenarios: Record<string, () => Promise<void>> = { ...scaleScenarios, s2, s4, s5, s6, ...deltaScenarios, ...filterScenarios, ...presenceScenarios, ...jitterScenarios, ...deployScenarios, report: async () => writeReport(resultsDir) }
const name = process.argv[2] ?? ''
if (!(name in scenarios)) {
  log(`usage: npm run bench -- <${Object.keys(scenarios).join('|')}>`)
  process.exit(2)
}
process.on('exit', cleanup)
process.on('SIGINT', () => { cleanup(); process.exit(130) })
// every run is bounded
setTimeout(() => { log('bench: time limit reached'); cleanup(); process.exit(1) }, 20 * 60_000).unref()
try {
  await scenarios[name]()
} finally {
  cleanup()
}
process.exit(0)
