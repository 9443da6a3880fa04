/**
 * `npm run bench -- deploy`: a rolling restart under load. Three instances on one Redis bus (BENCH_DEPLOY_BUS=nats: one
 * NATS server, results in deploy-nats); BENCH_DEPLOY_SOCKETS
 * (default 10,000) clients of our SDK, each given the three URLs, over load-generator processes (sdkgen.ts, at most
 * BENCH_DEPLOY_PER_PROCESS each), watching 100 entities; a writer makes 2 changes/s (on random entities) through
 * PostgreSQL triggers. Each instance in turn gets SIGTERM (it closes its sockets with 1012 in slices over
 * `shutdown.drainSeconds`, then exits), a new one starts on its port, and the next goes once it is ready.
 *
 * Measured: notifications lost (each client's distinct changes against what was written to its entity) and
 * duplicated, close → resume answered per socket, resumes recovered or not (the servers' counters, and the clients'
 * `subscribed` replies), new connections per second on the instances not restarting (sampled every second), and
 * PostgreSQL transactions beyond the writer's, the instances' idle rate and their starts (each measured beforehand
 * with no clients).
 */
import { loadavg } from 'node:os'
import pg from 'pg'
import { MARTEN, PG_ADMIN, REDIS_URL, freePort, freshDatabase, log, metric, save, sleep, startChangefeed, transactions, httpOf, type Target } from './harness.js'
import { finishSdkLoad, pending, startSdkLoad } from './sdkload.js'

const SOCKETS = Number(process.env.BENCH_DEPLOY_SOCKETS ?? 10_000)
const PER_PROCESS = Number(process.env.BENCH_DEPLOY_PER_PROCESS ?? 2500)
const DRAIN_SECONDS = Number(process.env.BENCH_DEPLOY_DRAIN_SECONDS ?? 10)
const NATS = process.env.BENCH_DEPLOY_BUS === 'nats'
const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222'
const ENTITIES = 100
const RATE = 2
const INSTANCES = 3
const DATABASE = 'changefeed_bench_deploy'

/** A writer at RATE changes/s on random entities, each entity's changes numbered 1, 2, … in its document. */
function writer (sql: pg.Client, entities: string[]): { written: Record<string, number>, stop: () => Promise<number> } {
  const written: Record<string, number> = Object.fromEntries(entities.map((e) => [e, 0]))
  const state = { running: true }
  let writes = 0
  const done = (async () => {
    const start = Date.now()
    while (state.running) {
      const entity = entities[Math.floor(Math.random() * entities.length)]
      const seq = written[entity] + 1
      await sql.query('UPDATE mt_doc_match SET data = $1 WHERE id = $2', [JSON.stringify({ seq }), entity])
      written[entity] = seq
      writes++
      await sleep(Math.max(0, start + (writes * 1000) / RATE - Date.now()))
    }
  })()
  return { written, stop: async () => { state.running = false; await done; return writes } }
}

/** The servers' counters an instance holds until it stops: read before each stop and at the end. */
interface Counters { recovered: number, notRecovered: number, documentReads: number }

async function counters (t: Target): Promise<Counters> {
  const h = httpOf(t)
  const outcome = async (o: string): Promise<number> => await metric(h, 'changefeed_resumes_total', `changefeed_outcome="${o}"`)
  return {
    recovered: await outcome('recovered'),
    notRecovered: await outcome('not_recovered') + await outcome('failed') + await outcome('foreign'),
    documentReads: await metric(h, 'changefeed_document_reads_total')
  }
}

/**
 * New connections per second on every instance but the one restarting, sampled each second from its
 * `changefeed_connections_opened_total` (a new process counts from 0); each sample tagged with the instance restarting
 * then (-1: none).
 */
function connectionRates (targets: Target[], restarting: { index: number }): { stop: () => Promise<Array<[number, number]>> } {
  /** each process's last count, and when it was read */
  const last = new Map<number, [number, number]>()
  const read = async (t: Target): Promise<[number, number] | null> => {
    const n = await metric(httpOf(t), 'changefeed_connections_opened_total').catch(() => null)
    return n === null ? null : [n, performance.now()]
  }
  const samples: Array<[number, number]> = []
  const state = { running: true }
  const done = (async () => {
    for (const t of targets) last.set(t.pid, await read(t) ?? [0, performance.now()])
    while (state.running) {
      const started = performance.now()
      await sleep(1000)
      const tag = restarting.index
      let rate = 0
      await Promise.all(targets.map(async (t, i) => {
        const now = await read(t)
        if (now === null) return
        // a new process counts from 0 since it started, at most a second ago
        const [n0, t0] = last.get(t.pid) ?? [0, started]
        if (i !== tag) rate += (now[0] - n0) / ((now[1] - t0) / 1000)
        last.set(t.pid, now)
      }))
      samples.push([tag, Math.round(rate)])
    }
  })()
  return { stop: async () => { state.running = false; await done; return samples } }
}

/**
 * What the instances run in PostgreSQL, sampled every 200 ms from pg_stat_activity (read from another database, so
 * that the sampling is not counted among the bench database's transactions).
 */
function queries (): { stop: () => Promise<Record<string, number>> } {
  const seen: Record<string, number> = {}
  const state = { running: true }
  const watcher = new pg.Client({ connectionString: PG_ADMIN })
  const done = (async () => {
    await watcher.connect()
    while (state.running) {
      const { rows } = await watcher.query<{ query: string }>('SELECT query FROM pg_stat_activity WHERE datname = $1 AND state <> \'idle\'', [DATABASE])
      for (const { query } of rows) { const q = query.slice(0, 80); seen[q] = (seen[q] ?? 0) + 1 }
      await sleep(200)
    }
    await watcher.end()
  })()
  return { stop: async () => { state.running = false; await done; return seen } }
}

/**
 * Each instance in turn: its counters and open sockets read, SIGTERM (its drain), a new one on its port, ready. A
 * step's bound is what the issue promises: the survivors see at most (its sockets / drainSeconds) new connections/s.
 */
async function rollingRestart (targets: Target[], ports: number[], config: object, restarting: { index: number }, seen: Counters[]): Promise<Array<{ instance: number, sockets: number, drainedSeconds: number, startSeconds: number }>> {
  const steps = []
  for (let i = 0; i < targets.length; i++) {
    seen.push(await counters(targets[i]))
    const sockets = await metric(httpOf(targets[i]), 'changefeed_connections_active')
    restarting.index = i
    const t0 = Date.now()
    await targets[i].stop((DRAIN_SECONDS + 20) * 1000)
    const t1 = Date.now()
    targets[i] = await startChangefeed(config, {}, ports[i], true)
    const t2 = Date.now()
    restarting.index = -1
    steps.push({ instance: i, sockets, drainedSeconds: (t1 - t0) / 1000, startSeconds: (t2 - t1) / 1000 })
    log(`deploy: instance ${i} (${sockets} sockets) drained in ${((t1 - t0) / 1000).toFixed(1)} s, new one ready in ${((t2 - t1) / 1000).toFixed(1)} s`)
  }
  return steps
}

async function deploy (): Promise<void> {
  // the machine is shared: what else ran shows in the latencies
  const loadAverageAtStart = Math.round(loadavg()[0] * 10) / 10
  const url = await freshDatabase(DATABASE)
  const sql = new pg.Client({ connectionString: url })
  await sql.connect()
  await sql.query(MARTEN('mt_doc_match'))
  const entities = Array.from({ length: ENTITIES }, (_, i) => `m-${i}`)
  await sql.query('INSERT INTO mt_doc_match (id, data) SELECT \'m-\' || g, \'{"seq":0}\' FROM generate_series(0, $1::int - 1) g', [ENTITIES])
  const ports: number[] = []
  for (let i = 0; i < INSTANCES; i++) ports.push(await freePort())
  const config = {
    server: { port: 0 },
    databases: [{ name: 'main', url }],
    entities: { Match: { access: 'public', payload: 'full' } },
    bus: { provider: NATS ? 'nats' : 'redis', url: NATS ? NATS_URL : REDIS_URL, prefix: `deploy${Date.now().toString(36)}` },
    shutdown: { drainSeconds: DRAIN_SECONDS },
    telemetry: { prometheus: { public: true } },
    // every client of the bench comes from one address: the per-address limits would be the bench's, not a deploy's
    limits: { maxConnectionsPerIp: 100_000, subscribeRatePerSecond: 1000, replaysPerIpPerSecond: 100_000 }
  }
  const startAll = async (): Promise<Target[]> => await Promise.all(ports.map(async (p) => await startChangefeed(config, {}, p, true)))
  const stopAll = async (targets: Target[]): Promise<void> => { await Promise.all(targets.map(async (t) => await t.stop((DRAIN_SECONDS + 20) * 1000))) }

  // the baseline, no clients: the instances' idle rate over 10 s, then what three starts cost beyond it
  let targets = await startAll()
  await sleep(3000)
  const idle0 = await transactions(sql, DATABASE)
  await sleep(10_000)
  const idlePerSecond = (await transactions(sql, DATABASE) - idle0 - 1) / 10
  const dry0 = await transactions(sql, DATABASE)
  const dryStart = Date.now()
  await rollingRestart(targets, ports, config, { index: -1 }, [])
  await sleep(2000)
  const dry = await transactions(sql, DATABASE) - dry0 - 1
  const startCost = Math.max(0, (dry - idlePerSecond * (Date.now() - dryStart) / 1000) / INSTANCES)
  await stopAll(targets)
  log(`deploy: baseline ${idlePerSecond.toFixed(1)} transactions/s idle, ${startCost.toFixed(1)} per start`)

  // the run
  targets = await startAll()
  const load = await startSdkLoad({ target: 'changefeed', urls: targets.map((t) => t.url), entities, dropEveryMs: 0, offlineMs: 0 }, SOCKETS, PER_PROCESS)
  await sleep(3000)
  const xact0 = await transactions(sql, DATABASE)
  const start = Date.now()
  const write = writer(sql, entities)
  const restarting = { index: -1 }
  const rates = connectionRates(targets, restarting)
  const activity = queries()
  const seen: Counters[] = []
  await sleep(5000)
  const steps = await rollingRestart(targets, ports, config, restarting, seen)
  // the last drained sockets come back and resume (at most a minute); then a few more changes reach everyone
  const t0 = Date.now()
  while (await pending(load) > 0 && Date.now() - t0 < 60_000) await sleep(500)
  const stragglers = await pending(load)
  const lastResumedSeconds = (Date.now() - t0) / 1000
  log(`deploy: every drained socket resumed ${lastResumedSeconds.toFixed(1)} s after the last restart (${stragglers} still away)`)
  await sleep(3000)
  const writes = await write.stop()
  await sleep(2000)
  const samples = await rates.stop()
  const busy = await activity.stop()
  const perSecond = samples.map(([, n]) => n)
  // each step: the survivors' peak while it drained and restarted, against its bound
  const bySteps = steps.map((step) => ({ ...step, peakNewConnectionsPerSecond: Math.max(0, ...samples.filter(([tag]) => tag === step.instance).map(([, n]) => n)), bound: Math.round(step.sockets / DRAIN_SECONDS) }))
  const seconds = (Date.now() - start) / 1000
  for (const t of targets) seen.push(await counters(t))
  const server = seen.reduce((a, c) => ({ recovered: a.recovered + c.recovered, notRecovered: a.notRecovered + c.notRecovered, documentReads: a.documentReads + c.documentReads }))
  const totals = await finishSdkLoad(load, write.written)
  await stopAll(targets)
  await sleep(1500)
  const xact = await transactions(sql, DATABASE) - xact0 - 1
  await sql.end()
  const row = {
    instances: INSTANCES,
    sockets: SOCKETS,
    loadAverageAtStart,

    subscribed: totals.subscribed,
    processes: load.children.length,
    entities: ENTITIES,
    changesPerSecond: RATE,
    drainSeconds: DRAIN_SECONDS,
    writes,
    expected: totals.expected,
    delivered: totals.delivered,
    lost: totals.missed,
    lostSilently: totals.missedSilently,
    lostWhileAway: totals.missedWhileAway,
    duplicates: totals.duplicates,
    resyncs: totals.resyncs,
    resyncFrames: totals.resyncFrames,
    errorFrames: totals.errorFrames,
    awayStates: totals.awayStates,
    closes: totals.closes,
    resumes: totals.resumed.count,
    stillAwayAtEnd: stragglers,
    lastResumedSecondsAfterLastRestart: lastResumedSeconds,
    closeToResumedP50: totals.resumed.p50,
    closeToResumedP95: totals.resumed.p95,
    closeToResumedP99: totals.resumed.p99,
    closeToResumedMax: totals.resumed.max,
    recoveredCloseToResumedP50: totals.resumedRecovered.p50,
    recoveredCloseToResumedP95: totals.resumedRecovered.p95,
    recoveredCloseToResumedMax: totals.resumedRecovered.max,
    reconnectReasons: totals.drops,
    resumesRecovered: server.recovered,
    resumesNotRecovered: server.notRecovered,
    clientsRecovered: totals.recovered,
    clientsNotRecovered: totals.notRecovered,
    clientsWithoutPosition: totals.fresh,
    newConnectionsPerSecondPeak: Math.max(0, ...perSecond),
    newConnectionsPerSecondBound: Math.max(...bySteps.map((s) => s.bound)),
    documentReads: server.documentReads,
    pgTransactions: xact,
    pgIdlePerSecond: Math.round(idlePerSecond * 10) / 10,
    pgPerStart: Math.round(startCost),
    pgTransactionsBeyondWriterIdleAndStarts: Math.max(0, Math.round(xact - writes - idlePerSecond * seconds - INSTANCES * startCost)),
    queriesSeenRunning: busy,
    steps: bySteps,
    newConnectionsPerSecond: perSecond
  }
  log(JSON.stringify(row))
  save(NATS ? 'deploy-nats' : 'deploy', {
    description: `${INSTANCES} instances on one ${NATS ? 'NATS' : 'Redis'} bus; ${SOCKETS.toLocaleString('en')} clients of our SDK (each given the three URLs, over load-generator processes of at most ${PER_PROCESS.toLocaleString('en')}) watching ${ENTITIES} entities; ${RATE} changes/s on random entities through PostgreSQL triggers; a rolling restart: each instance in turn gets SIGTERM (1012 to its sockets in slices over ${DRAIN_SECONDS} s), a new one starts on its port, the next goes once it is ready`,
    rows: [row]
  })
}

export const deployScenarios: Record<string, () => Promise<void>> = { deploy }
