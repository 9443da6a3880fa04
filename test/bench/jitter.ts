/**
 * `npm run bench -- jitter`: delivery under jitter, the shape of AnyCable's Node WebSocket benchmark, scaled to this
 * machine. N SDK clients (BENCH_JITTER_CLIENTS, default 1,000; 10,000 runs over four load-generator processes,
 * BENCH_JITTER_PER_PROCESS at most in each, sdkgen.ts) watch one entity; a writer makes 120 changes at 2/s through
 * PostgreSQL triggers; every client's TCP connection is cut (no close frame) about every 15 s, at a random phase, and
 * kept offline 2 s; the SDK reconnects (to another of its URLs) and resumes with `since`. Side by side: Socket.IO
 * with connection-state recovery on one node (its documented limit), fed by a trigger on the same table, its clients
 * cut the same way. Measured per target, in one run: delivered % (each client should hand the application all 120
 * changes), duplicates, replay latency (reopened socket → the last change missed while offline handed to the
 * application), resumes by outcome, and PostgreSQL transactions beyond the writer's and the idle baseline.
 * BENCH_JITTER_TARGETS=redis,memory,nats,socketio picks targets.
 */
import { fork } from 'node:child_process'
import { join } from 'node:path'
import { loadavg } from 'node:os'
import pg from 'pg'
import { MARTEN, REDIS_URL, freePort, freshDatabase, here, log, metric, save, sleep, startChangefeed, started, stopChild, transactions, httpOf, type Target } from './harness.js'
import { finishSdkLoad, pending, startSdkLoad, stopCuts, tell } from './sdkload.js'

const CLIENTS = Number(process.env.BENCH_JITTER_CLIENTS ?? 1000)
const CHANGES = Number(process.env.BENCH_JITTER_CHANGES ?? 120)
/** clients per load-generator process */
const PER_PROCESS = Number(process.env.BENCH_JITTER_PER_PROCESS ?? 2500)
const RATE = 2
const DROP_EVERY_MS = 15_000
const OFFLINE_MS = 2000
const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222'

/** Socket.IO with connection-state recovery on one node, fed by a trigger on the same table (peers/socketio-recovery.ts). */
async function startSocketIo (sql: pg.Client, url: string): Promise<Target> {
  await sql.query(`CREATE FUNCTION bench_sio() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    PERFORM pg_notify('bench_sio', json_build_object('id', NEW.id, 'data', NEW.data)::text); RETURN NEW; END $$`)
  await sql.query('CREATE TRIGGER bench_sio AFTER UPDATE ON mt_doc_match FOR EACH ROW EXECUTE FUNCTION bench_sio()')
  const port = await freePort()
  const child = fork(join(here, 'peers', 'socketio-recovery.js'), [], { env: { ...process.env, PORT: String(port), BENCH_DATABASE_URL: url }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  started.push(child)
  await new Promise((resolve) => child.once('message', resolve))
  return { kind: 'socketio', label: 'socketio', url: `http://127.0.0.1:${port}`, pid: child.pid!, stop: async () => await stopChild(child) }
}

/** `bus`: ours on `instances` instances with that bus, or Socket.IO with recovery on one node. */
async function scenario (label: string, instances: number, bus: object | 'socketio'): Promise<object> {
  // the machine is shared: what else ran shows in the latencies
  const loadAverageAtStart = Math.round(loadavg()[0] * 10) / 10
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
    // every client of the bench comes from one address: the per-address limits would be the bench's
    limits: { maxConnectionsPerIp: 100_000, subscribeRatePerSecond: 1000, replaysPerIpPerSecond: 100_000 }
  }
  const targets: Target[] = []
  if (bus === 'socketio') targets.push(await startSocketIo(sql, url))
  else for (let i = 0; i < instances; i++) targets.push(await startChangefeed(config))
  const ours = bus !== 'socketio'
  const https = ours ? targets.map(httpOf) : []
  const load = await startSdkLoad({ target: ours ? 'changefeed' : 'socketio', urls: targets.map((t) => t.url), entities: ['hot'], dropEveryMs: DROP_EVERY_MS, offlineMs: OFFLINE_MS }, CLIENTS, PER_PROCESS)

  // the idle baseline: what the servers ask of PostgreSQL by themselves (probes, leader retries) over 10 s
  const idle0 = await transactions(sql, database)
  await sleep(10_000)
  const idlePerSecond = (await transactions(sql, database) - idle0 - 1) / 10

  const start = Date.now()
  tell(load, 'cut')
  const xact0 = await transactions(sql, database)
  for (let seq = 1; seq <= CHANGES; seq++) {
    await sql.query('UPDATE mt_doc_match SET data = $1 WHERE id = \'hot\'', [JSON.stringify({ seq })])
    tell(load, { published: seq })
    const next = start + (seq * 1000) / RATE
    await sleep(Math.max(0, next - Date.now()))
  }
  await stopCuts(load)
  // the last drops come back and resume (at most a minute)
  await sleep(OFFLINE_MS)
  const t0 = Date.now()
  while (await pending(load) > 0 && Date.now() - t0 < 60_000) await sleep(500)
  await sleep(1000)
  const seconds = (Date.now() - start) / 1000
  const sum = async (name: string, labels = ''): Promise<number> => (await Promise.all(https.map(async (h) => await metric(h, name, labels)))).reduce((a, b) => a + b, 0)
  const resumes: Record<string, number> = {}
  for (const outcome of ['recovered', 'not_recovered', 'failed', 'foreign']) resumes[outcome] = await sum('changefeed_resumes_total', `changefeed_outcome="${outcome}"`)
  const documentReads = await sum('changefeed_document_reads_total')
  // a socket read slowly (the clients share a process): its notifications are conflated to the latest state
  const conflated = await sum('changefeed_notifications_conflated_total')
  const totals = await finishSdkLoad(load, { hot: CHANGES }, CHANGES - 2 * RATE * OFFLINE_MS / 1000)
  // a backend's counts reach pg_stat_database when it ends (or idles): the servers are stopped first
  for (const t of targets) await t.stop()
  await sleep(1500)
  const xact = await transactions(sql, database) - xact0 - 1
  const row = {
    target: label,
    instances,
    loadAverageAtStart,

    clients: CLIENTS,
    processes: load.children.length,
    changes: CHANGES,
    deliveredPercent: Math.round((totals.delivered / (CLIENTS * CHANGES)) * 100_000) / 1000,
    duplicates: totals.duplicates,
    missed: totals.missed,
    missedInMiddle: totals.missedInMiddle,
    missedSilently: totals.missedSilently,
    awayAtEnd: totals.away,
    missedWhileAway: totals.missedWhileAway,
    resyncs: totals.resyncs,
    conflated: ours ? conflated : '–',
    replays: totals.replay.count,
    replayP50: totals.replay.p50,
    replayP99: totals.replay.p99,
    replayMax: totals.replay.max,
    resumesRecovered: ours ? resumes.recovered : totals.recovered,
    resumesNotRecovered: ours ? resumes.not_recovered + resumes.failed + resumes.foreign : totals.notRecovered,
    documentReads: ours ? documentReads : '–',
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
  if (run('socketio')) rows.push(await scenario('socketio ×1', 1, 'socketio'))
  // the second size is kept beside the first
  save(CLIENTS === 1000 ? 'jitter' : `jitter-${CLIENTS}`, {
    description: `${CLIENTS.toLocaleString('en')} clients watching one entity (ours: our SDK; Socket.IO: socket.io-client with connection-state recovery, one node, its documented limit), over load-generator processes of at most ${PER_PROCESS.toLocaleString('en')} clients each; ${CHANGES} changes at ${RATE}/s through PostgreSQL triggers; every client's TCP connection cut (no close frame) about every 15 s at a random phase and kept offline 2 s; the SDK reconnects to another instance and resumes with since (Socket.IO: reconnects and recovers its session). Delivered: distinct changes handed to the application over clients × changes; replay: reopened socket → the last change missed while offline, in ms (drops that missed nothing are not counted); PostgreSQL transactions beyond the writer's ${CHANGES} and the idle baseline (probes, leader retries) are what resumes cost`,
    rows
  })
}

export const jitterScenarios: Record<string, () => Promise<void>> = { jitter }
