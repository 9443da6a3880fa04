/**
 * Benchmarks: `npm run bench -- <s1|s2|s3|s4|s5|s6|report>`. Each scenario starts what it needs on this machine
 * (loopback only), measures, stops every process it started, writes test/bench/results/<scenario>.json and
 * regenerates test/bench/REPORT.md with its charts. Peers run in the same run, one after another, on the same
 * machine, for the same job: receive a change from Redis, deliver it to every watcher.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process'
import { readFileSync, writeFileSync, mkdirSync, mkdtempSync } from 'node:fs'
import { cpus, totalmem, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import pg from 'pg'
import hdr from 'hdr-histogram-js'
import { wrap } from '../../lib/bus/envelope.js'
import { encodeNotification } from '../../lib/ws/protocol.js'
import { writeReport } from './report.js'

const here = fileURLToPath(new URL('.', import.meta.url))
const root = join(here, '..', '..', '..')
export const resultsDir = join(root, 'test', 'bench', 'results')
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const PG_ADMIN = process.env.PG_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const started: ChildProcess[] = []

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))
const log = (...args: unknown[]): void => { process.stderr.write(args.join(' ') + '\n') }

function rssMiB (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024
}

async function freePort (): Promise<number> {
  const { createServer } = await import('node:net')
  return await new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)) })
  })
}

interface Target { kind: 'changefeed' | 'ws' | 'socketio', url: string, pid: number, stop: () => Promise<void> }

async function stopChild (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
  await exited
  clearTimeout(timer)
}

/** Our standalone server from a config, on a free port; resolves when it answers /health/live. */
async function startChangefeed (config: object, env: NodeJS.ProcessEnv = {}): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'changefeed-bench-'))
  const file = join(dir, 'changefeed.json')
  writeFileSync(file, JSON.stringify(config))
  const port = await freePort()
  const child = spawn(process.execPath, [join(root, 'bin', 'serve'), '--config', file, '--port', String(port)], {
    env: { ...process.env, LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'ignore', 'inherit']
  })
  started.push(child)
  const deadline = Date.now() + 30_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`)
    if (Date.now() > deadline) throw new Error('server did not start within 30 s')
    if (await fetch(`http://127.0.0.1:${port}/health/live`).then((r) => r.ok, () => false)) break
    await sleep(100)
  }
  return { kind: 'changefeed', url: `ws://127.0.0.1:${port}/ws`, pid: child.pid!, stop: async () => await stopChild(child) }
}

async function startPeer (kind: 'ws' | 'socketio', channel: string): Promise<Target> {
  const port = await freePort()
  const child = fork(join(here, 'peers', kind === 'ws' ? 'raw-ws.js' : 'socketio.js'), [], {
    env: { ...process.env, PORT: String(port), BENCH_CHANNEL: channel, REDIS_URL }, stdio: ['ignore', 'ignore', 'inherit', 'ipc']
  })
  started.push(child)
  await new Promise((resolve) => child.once('message', resolve))
  return { kind, url: kind === 'ws' ? `ws://127.0.0.1:${port}` : `http://127.0.0.1:${port}`, pid: child.pid!, stop: async () => await stopChild(child) }
}

interface LoadReport { received: number, connected: number, failed: number, histogram: string }
interface Load { children: ChildProcess[], connected: number, failed: number, seconds: number }

/** Spreads `count` connections over `processes` load generators, each from its own 127.0.0.x address. */
async function startLoad (targets: Target[], count: number, processes: number, entities: string[], entityType: string, clock: 'payload' | 'trigger'): Promise<Load> {
  const t0 = Date.now()
  const children: ChildProcess[] = []
  const readies: Array<Promise<{ connected: number, failed: number }>> = []
  for (let i = 0; i < processes; i++) {
    const target = targets[i % targets.length]
    const share = Math.floor(count / processes) + (i < count % processes ? 1 : 0)
    const job = { target: target.kind, url: target.url, count: share, entities, entityType, localAddress: `127.0.0.${2 + i}`, clock }
    const child = fork(join(here, 'loadgen.js'), [], { env: { ...process.env, BENCH_JOB: JSON.stringify(job) }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
    started.push(child)
    children.push(child)
    readies.push(new Promise((resolve) => child.once('message', (m) => resolve(m as { connected: number, failed: number }))))
  }
  const ready = await Promise.all(readies)
  return { children, connected: ready.reduce((a, r) => a + r.connected, 0), failed: ready.reduce((a, r) => a + r.failed, 0), seconds: (Date.now() - t0) / 1000 }
}

async function ask<T> (children: ChildProcess[], command: string): Promise<T[]> {
  return await Promise.all(children.map(async (c) => await new Promise<T>((resolve) => { c.once('message', (m) => resolve(m as T)); c.send(command) })))
}

interface Latency { count: number, p50: number, p90: number, p99: number, max: number }

/** Received count and merged latency (ms) of every load generator; resets them for the next step. */
async function collect (load: Load): Promise<Latency> {
  const reports = await ask<LoadReport>(load.children, 'report')
  const merged = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 })
  for (const r of reports) merged.add(hdr.decodeFromCompressedBase64(r.histogram))
  await ask(load.children, 'reset')
  const ms = (micros: number): number => Math.round(micros / 10) / 100
  return { count: reports.reduce((a, r) => a + r.received, 0), p50: ms(merged.getValueAtPercentile(50)), p90: ms(merged.getValueAtPercentile(90)), p99: ms(merged.getValueAtPercentile(99)), max: ms(merged.maxValue) }
}

async function stopLoad (load: Load): Promise<void> {
  for (const c of load.children) c.send('close')
  await Promise.all(load.children.map(async (c) => await new Promise((resolve) => { if (c.exitCode !== null) resolve(null); else c.once('exit', resolve) })))
}

/** The same change for each target, in the form each expects on Redis. */
function messageFor (target: Target['kind'], prefix: string, entityId: string, t: number, seq: number): [string, string] {
  const payload = { t, seq, homeScore: seq % 50, awayScore: 7, period: 'Second Half' }
  const frame = encodeNotification({ entityType: 'Match', entityId, changeType: 'updated', payloadType: 'full', ts: Math.floor(t), payload })
  if (target === 'changefeed') return [`${prefix}:Match:${entityId}`, wrap({ ts: Math.floor(t), payloadType: 'full', frame })]
  if (target === 'ws') return ['bench:raw', JSON.stringify({ entityId, frame })]
  return ['bench:socketio', JSON.stringify({ entityId, payload })]
}

/** Publishes at `rate` per second for `seconds`, each message stamped with its scheduled time (not its send time). */
async function publishAt (redis: Redis, rate: number, seconds: number, make: (t: number, seq: number) => [string, string]): Promise<number> {
  const start = performance.timeOrigin + performance.now() + 50
  const total = Math.round(rate * seconds)
  for (let seq = 0; seq < total; seq++) {
    const due = start + (seq * 1000) / rate
    const wait = due - (performance.timeOrigin + performance.now())
    if (wait > 1) await sleep(wait)
    const [channel, message] = make(due, seq)
    void redis.publish(channel, message)
  }
  return total
}

const machine = (): object => ({ cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, date: new Date().toISOString() })

function save (name: string, result: object): void {
  mkdirSync(resultsDir, { recursive: true })
  writeFileSync(join(resultsDir, `${name}.json`), JSON.stringify({ scenario: name, machine: machine(), ...result }, null, 2) + '\n')
  writeReport(resultsDir)
  log(`wrote test/bench/results/${name}.json and test/bench/REPORT.md`)
}

async function freshDatabase (name: string): Promise<string> {
  const admin = new pg.Client({ connectionString: PG_ADMIN })
  await admin.connect()
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  return PG_ADMIN.replace(/\/[^/]*$/, `/${name}`)
}

const MARTEN = (table: string): string => `CREATE TABLE ${table} (id varchar PRIMARY KEY, data jsonb NOT NULL, mt_last_modified timestamptz DEFAULT now(),
  mt_version uuid NOT NULL DEFAULT gen_random_uuid(), mt_dotnet_type varchar, mt_deleted boolean DEFAULT false)`

async function metric (httpBase: string, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(httpBase + '/metrics')).text()
  return text.split('\n').filter((l) => l.startsWith(name) && l.includes(labels)).reduce((a, l) => a + Number(l.split(' ').pop()), 0)
}

// ---------------------------------------------------------------- scenarios

const SOCKETS = Number(process.env.BENCH_SOCKETS ?? 10_000)
/** a small database for targets that capture nothing, so no embedded PGlite weighs on the measurements */
let quietDatabase: string | null = null
async function quiet (): Promise<Array<{ name: string, url: string }>> {
  quietDatabase ??= await freshDatabase('changefeed_bench_quiet')
  return [{ name: 'main', url: quietDatabase }]
}

/** S1: one hot entity watched by 10K sockets, changes at increasing rates, per target. */
async function s1 (): Promise<void> {
  const rates = [1, 5, 10, 20]
  const seconds = 5
  const redis = new Redis(REDIS_URL)
  const rows: object[] = []
  for (const kind of ['changefeed', 'ws', 'socketio'] as const) {
    const prefix = `bench${Date.now()}`
    const target = kind === 'changefeed'
      ? await startChangefeed({ server: { port: 0 }, databases: await quiet(), entities: { Match: { access: 'public', payload: 'full' } }, bus: { provider: 'redis', url: REDIS_URL, prefix }, limits: { maxConnectionsPerIp: 100_000 } })
      : await startPeer(kind, kind === 'ws' ? 'bench:raw' : 'bench:socketio')
    const load = await startLoad([target], SOCKETS, 2, ['hot'], 'Match', 'payload')
    log(`s1 ${kind}: ${load.connected} connected in ${load.seconds.toFixed(1)} s (${load.failed} failed)`)
    await sleep(1500)
    await collect(load)
    for (const rate of rates) {
      const sent = await publishAt(redis, rate, seconds, (t, seq) => messageFor(kind, prefix, 'hot', t, seq))
      await sleep(1500)
      const lat = await collect(load)
      const row = { target: kind, rate, sockets: load.connected, expected: sent * load.connected, delivered: lat.count, deliveredPerSecond: Math.round(lat.count / seconds), ...lat }
      log(JSON.stringify(row))
      rows.push(row)
    }
    await stopLoad(load)
    await target.stop()
  }
  redis.disconnect()
  save('s1', { description: `${SOCKETS} sockets on one entity; each target receives every change from Redis and delivers it to every watcher; ${seconds} s per rate`, rows })
}

/** S3: server memory per idle connection at 10K, per target. */
async function s3 (): Promise<void> {
  const rows: object[] = []
  for (const kind of ['changefeed', 'ws', 'socketio'] as const) {
    const target = kind === 'changefeed'
      ? await startChangefeed({ server: { port: 0 }, databases: await quiet(), entities: { Match: { access: 'public', payload: 'full' } }, bus: { provider: 'redis', url: REDIS_URL, prefix: `bench${Date.now()}` }, limits: { maxConnectionsPerIp: 100_000 } })
      : await startPeer(kind, `bench:idle:${kind}`)
    await sleep(2000)
    const before = rssMiB(target.pid)
    const entities = Array.from({ length: 1000 }, (_, i) => `m-${i}`)
    const load = await startLoad([target], SOCKETS, 2, entities, 'Match', 'payload')
    await sleep(5000)
    const after = rssMiB(target.pid)
    const row = { target: kind, sockets: load.connected, rssBeforeMiB: Math.round(before), rssAfterMiB: Math.round(after), kibPerConnection: Math.round(((after - before) * 1024) / load.connected * 10) / 10 }
    log(JSON.stringify(row))
    rows.push(row)
    await stopLoad(load)
    await target.stop()
  }
  save('s3', { description: `${SOCKETS} idle sockets, each subscribed to one of 1,000 entities; server RSS growth per connection`, rows })
}

/** S6: database reads per changed entity per transaction, with 1 and with 10,000 watchers. */
async function s6 (): Promise<void> {
  const url = await freshDatabase('changefeed_bench_s6')
  const db = new pg.Client({ connectionString: url })
  await db.connect()
  await db.query(MARTEN('mt_doc_match'))
  await db.query(`INSERT INTO mt_doc_match (id, data) VALUES ('hot', '{}')`)
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
  await pool.query(`INSERT INTO mt_doc_match (id, data) SELECT 'm-' || g, '{"homeScore":0}' FROM generate_series(0, 999) g`)
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
  await pool.query(`INSERT INTO mt_doc_match (id, data) SELECT 'm-' || g, '{"n":0}' FROM generate_series(0, 9999) g`)
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

const scenarios: Record<string, () => Promise<void>> = { s1, s2, s3, s4, s5, s6, report: async () => writeReport(resultsDir) }
const name = process.argv[2] ?? ''
if (!(name in scenarios)) {
  log(`usage: npm run bench -- <${Object.keys(scenarios).join('|')}>`)
  process.exit(2)
}
const cleanup = (): void => { for (const c of started) if (c.exitCode === null) c.kill('SIGKILL') }
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
