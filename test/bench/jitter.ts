/**
 * `npm run bench -- jitter`: delivery under jitter, the shape of AnyCable's Node WebSocket benchmark, scaled to this
 * machine. N SDK clients (BENCH_JITTER_CLIENTS, default 1,000, in this process) watch one entity; a writer makes 120
 * changes at 2/s through PostgreSQL triggers; every client's TCP connection is cut (no close frame) about every 15 s,
 * at a random phase, and kept offline 2 s; the SDK reconnects (to the next of its URLs) and resumes with `since`.
 * Measured per target, in one run: delivered % (each client should hand the application all 120 changes), duplicates,
 * replay latency (reopened socket → the last change missed while offline handed to the application), resumes by
 * outcome, and PostgreSQL transactions beyond the writer's and the idle baseline.
 */
import pg from 'pg'
import WebSocket from 'ws'
import { build } from 'hdr-histogram-js'
import { ChangefeedClient } from '../../lib/client/index.js'
import { MARTEN, REDIS_URL, freshDatabase, log, metric, save, sleep, startChangefeed, type Target } from './harness.js'

const CLIENTS = Number(process.env.BENCH_JITTER_CLIENTS ?? 1000)
const CHANGES = Number(process.env.BENCH_JITTER_CHANGES ?? 120)
const RATE = 2
const DROP_EVERY_MS = 15_000
const OFFLINE_MS = 2000
const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222'

interface Watcher {
  seqs: number[]
  offlineUntil: number
  /** a drop under way: when its socket opened again, and the last change published before that */
  reopenedAt: number | null
  owedUpTo: number
  socket: WebSocket | null
  /** refetches the SDK asked the application for (a resume not recovered, a resync) */
  resyncs: number
}

async function transactions (sql: pg.Client, database: string): Promise<number> {
  const { rows: [row] } = await sql.query('SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = $1', [database])
  return Number(row.n)
}

async function scenario (label: string, instances: number, bus: object): Promise<object> {
  const database = `changefeed_bench_jitter_${label.replace(/\W/g, '_')}`
  const url = await freshDatabase(database)
  const sql = new pg.Client({ connectionString: url })
  await sql.connect()
  await sql.query(MARTEN('mt_doc_match'))
  await sql.query('INSERT INTO mt_doc_match (id, data) VALUES (\'hot\', \'{"seq":0}\')')
  const config = {
    server: { port: 0 },
    databases: [{ name: 'main', url }],
    entities: { Match: { access: 'public', payload: 'full' } },
    bus,
    telemetry: { prometheus: { public: true } },
    limits: { maxConnectionsPerIp: 100_000, subscribeRatePerSecond: 1000 }
  }
  const targets: Target[] = []
  for (let i = 0; i < instances; i++) targets.push(await startChangefeed(config))
  const urls = targets.map((t) => t.url)
  const https = urls.map((u) => u.replace('ws', 'http').replace(/\/ws$/, ''))

  let published = 0
  const replay = build()
  const watchers: Watcher[] = []
  const clients: ChangefeedClient[] = []
  for (let i = 0; i < CLIENTS; i++) {
    const w: Watcher = { seqs: [], offlineUntil: 0, reopenedAt: null, owedUpTo: 0, socket: null, resyncs: 0 }
    class Jittery extends WebSocket {
      constructor (address: string) {
        // offline: the connection is refused until the window ends
        super(Date.now() < w.offlineUntil ? 'ws://127.0.0.1:9/ws' : address)
        if (Date.now() >= w.offlineUntil) w.socket = this
        this.on('open', () => { if (w.owedUpTo > 0 && w.reopenedAt === null) w.reopenedAt = performance.now() })
      }
    }
    const client = new ChangefeedClient({ url: urls, WebSocket: Jittery as never, backoff: { initialMs: 200, maxMs: 1000 } })
    client.subscribe('Match', 'hot', {
      onResync: () => { w.resyncs++ },
      onNotification: (n) => {
        const seq = (n.payload as { seq: number }).seq
        w.seqs.push(seq)
        if (w.reopenedAt !== null && seq >= w.owedUpTo) {
          replay.recordValue(Math.max(1, Math.round(performance.now() - w.reopenedAt)))
          w.reopenedAt = null
          w.owedUpTo = 0
        }
      }
    })
    watchers.push(w)
    clients.push(client)
    if (i % 100 === 99) await sleep(50)
  }
  const subscribed = async (): Promise<number> => (await Promise.all(https.map(async (h) => await metric(h, 'changefeed_subscriptions_active')))).reduce((a, b) => a + b, 0)
  for (let i = 0; i < 300 && await subscribed() < CLIENTS; i++) await sleep(100)
  log(`${label}: ${await subscribed()} subscribed`)

  // the idle baseline: what the instances ask of PostgreSQL by themselves (probes, leader retries) over 10 s
  const idle0 = await transactions(sql, database)
  await sleep(10_000)
  const idlePerSecond = (await transactions(sql, database) - idle0 - 1) / 10

  const start = Date.now()
  const drops = watchers.map((w, i) => {
    const cut = (): void => {
      // offline for 2 s: the TCP connection ends without a close frame, and reconnects are refused meanwhile
      w.offlineUntil = Date.now() + OFFLINE_MS
      w.owedUpTo = Infinity
      w.reopenedAt = null
      ;(w.socket as unknown as { _socket?: { destroy(): void } } | null)?._socket?.destroy()
      setTimeout(() => { w.owedUpTo = published }, OFFLINE_MS)
    }
    const phase = Math.random() * DROP_EVERY_MS
    return setTimeout(function again () { cut(); drops[i] = setTimeout(again, DROP_EVERY_MS - 2000 + Math.random() * 4000) }, phase)
  })
  const xact0 = await transactions(sql, database)
  for (let seq = 1; seq <= CHANGES; seq++) {
    await sql.query('UPDATE mt_doc_match SET data = $1 WHERE id = \'hot\'', [JSON.stringify({ seq })])
    published = seq
    const next = start + (seq * 1000) / RATE
    await sleep(Math.max(0, next - Date.now()))
  }
  for (const d of drops) clearTimeout(d)
  // the last drops come back and resume
  for (let i = 0; i < 100 && watchers.some((w) => new Set(w.seqs).size < CHANGES); i++) await sleep(100)
  const seconds = (Date.now() - start) / 1000
  const resumes: Record<string, number> = {}
  for (const outcome of ['recovered', 'not_recovered', 'failed', 'foreign']) {
    resumes[outcome] = (await Promise.all(https.map(async (h) => await metric(h, 'changefeed_resumes_total', `changefeed_outcome="${outcome}"`)))).reduce((a, b) => a + b, 0)
  }
  const sum = async (name: string): Promise<number> => (await Promise.all(https.map(async (h) => await metric(h, name)))).reduce((a, b) => a + b, 0)
  const documentReads = await sum('changefeed_document_reads_total')
  // a socket read slowly (the clients share this process): its notifications are conflated to the latest state
  const conflated = await sum('changefeed_notifications_conflated_total')
  const delivered = watchers.reduce((n, w) => n + new Set(w.seqs.filter((s) => s >= 1)).size, 0)
  const duplicates = watchers.reduce((n, w) => n + w.seqs.length - new Set(w.seqs).size, 0)
  // what was missed: the last changes (a client still coming back at the end), or changes in the middle
  const missed = watchers.flatMap((w) => { const got = new Set(w.seqs); return Array.from({ length: CHANGES }, (_, i) => i + 1).filter((s) => !got.has(s)) })
  const missedInMiddle = missed.filter((s) => s <= CHANGES - 2 * RATE * OFFLINE_MS / 1000).length
  // a client told to refetch has the state by other means; a miss without one is a silent gap
  const missedSilently = watchers.filter((w) => w.resyncs === 0).reduce((n, w) => n + CHANGES - new Set(w.seqs.filter((s) => s >= 1)).size, 0)
  const resyncs = watchers.reduce((n, w) => n + w.resyncs, 0)
  for (const c of clients) c.destroy()
  // a backend's counts reach pg_stat_database when it ends (or idles): the instances are stopped first
  for (const t of targets) await t.stop()
  await sleep(1000)
  const xact = await transactions(sql, database) - xact0 - 1
  const row = {
    target: label,
    instances,
    clients: CLIENTS,
    changes: CHANGES,
    deliveredPercent: Math.round((delivered / (CLIENTS * CHANGES)) * 100_000) / 1000,
    duplicates,
    missed: missed.length,
    missedInMiddle,
    missedSilently,
    resyncs,
    conflated,
    replays: replay.totalCount,
    replayP50: replay.getValueAtPercentile(50),
    replayP99: replay.getValueAtPercentile(99),
    replayMax: replay.maxValue,
    resumesRecovered: resumes.recovered,
    resumesNotRecovered: resumes.not_recovered + resumes.failed + resumes.foreign,
    documentReads,
    pgTransactions: xact,
    pgTransactionsBeyondWriterAndIdle: Math.max(0, Math.round(xact - CHANGES - idlePerSecond * seconds))
  }
  log(JSON.stringify(row))
  await sql.end()
  return row
}

async function jitter (): Promise<void> {
  const rows: object[] = []
  const prefix = `jitter${Date.now().toString(36)}`
  const only = process.env.BENCH_JITTER_TARGETS?.split(',')
  const run = (name: string): boolean => only === undefined || only.includes(name)
  if (run('redis')) rows.push(await scenario('redis ×3', 3, { provider: 'redis', url: REDIS_URL, prefix: prefix + 'r' }))
  if (run('memory')) rows.push(await scenario('memory ×1', 1, { provider: 'memory' }))
  if (run('nats')) rows.push(await scenario('nats ×3', 3, { provider: 'nats', url: NATS_URL, prefix: prefix + 'n' }))
  save('jitter', {
    description: `${CLIENTS.toLocaleString('en')} SDK clients watching one entity; ${CHANGES} changes at ${RATE}/s through PostgreSQL triggers; every client's TCP connection cut (no close frame) about every 15 s at a random phase and kept offline 2 s; the SDK reconnects to the next instance and resumes with since. Delivered: distinct changes handed to the application over clients × changes; replay: reopened socket → the last change missed while offline, in ms; PostgreSQL transactions beyond the writer's ${CHANGES} and the idle baseline (probes, leader retries) are what resumes cost`,
    rows
  })
}

export const jitterScenarios: Record<string, () => Promise<void>> = { jitter }
