/**
 * Presence (`npm run bench -- presence`), on three standalone instances sharing one Redis:
 *
 * - room: BENCH_PRESENCE_MEMBERS members (10,000) in one room, spread over the instances, each its own user; then
 *   100 leaves and 100 joins per second (a member's socket leaves with `"presence": false` and joins again) for
 *   BENCH_PRESENCE_SECONDS. Measured: presence frames per socket per second, the instances' CPU over the churn
 *   (less the same instances' idle CPU), and Redis memory per member (the room's hash). A plain broadcast of the same
 *   events would send each join and leave to every socket: 200 frames per socket per second.
 * - signals: 50 editors in one room (over the instances), each sending 20 signals per second; latency from the
 *   sender's clock to receipt at every other editor, and frames per socket per second; side by side, in interleaved
 *   rounds, with a plain `ws` server that broadcasts the same signals from Redis to 50 sockets.
 */
import { createHmac } from 'node:crypto'
import { loadavg } from 'node:os'
import WebSocket from 'ws'
import { Redis } from 'ioredis'
import hdr from 'hdr-histogram-js'
import { REDIS_URL, cpuMs, freshDatabase, log, save, sleep, startChangefeed, startPeer, type Target } from './harness.js'

const MEMBERS = Number(process.env.BENCH_PRESENCE_MEMBERS ?? 10_000)
const SECONDS = Number(process.env.BENCH_PRESENCE_SECONDS ?? 20)
const CHURN = 100
const EDITORS = 50
const SIGNAL_RATE = 20
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const SECRET = 'bench-secret-of-enough-length-0123456789'

function token (sub: string): string {
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`
  return `${unsigned}.${createHmac('sha256', SECRET).update(unsigned).digest('base64url')}`
}

/** A socket that counts its presence frames and records signal latency. */
interface Client { ws: WebSocket, presence: number, replies: Map<string, () => void> }

async function connect (url: string, user: string | null, onSignal?: (sentAt: number) => void): Promise<Client> {
  const ws = new WebSocket(user === null ? url : `${url}?token=${token(user)}`, { perMessageDeflate: false })
  const client: Client = { ws, presence: 0, replies: new Map() }
  ws.on('message', (data) => {
    const text = data.toString()
    if (text.startsWith('{"type":"presence"')) client.presence++
    else if (text.startsWith('{"type":"signal"')) onSignal?.((JSON.parse(text) as { data: { data: { t: number } } }).data.data.t)
    else if (text.includes('"id":')) {
      const id = (JSON.parse(text) as { id?: string }).id
      if (id !== undefined) client.replies.get(id)?.()
    }
  })
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  return client
}

let n = 0
/** Sends a request and waits for its reply. */
async function request (client: Client, type: string, data: object): Promise<void> {
  const id = `b${++n}`
  const replied = new Promise<void>((resolve) => client.replies.set(id, () => { client.replies.delete(id); resolve() }))
  client.ws.send(JSON.stringify({ type, id, data }))
  await replied
}

const now = (): number => performance.timeOrigin + performance.now()

async function inBatches<T> (items: T[], size: number, work: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(work))
}

async function startInstances (prefix: string): Promise<Target[]> {
  const url = await freshDatabase('changefeed_bench_presence')
  const config = {
    server: { port: 0 },
    databases: [{ name: 'main', url }],
    entities: { Team: { access: 'public', presence: true, signals: true } },
    auth: { jwt: { secret: SECRET } },
    bus: { provider: 'redis', url: REDIS_URL, prefix },
    limits: { maxConnectionsPerIp: 100_000, subscribeRatePerSecond: 1000 }
  }
  const targets: Target[] = []
  for (let i = 0; i < 3; i++) targets.push(await startChangefeed(config))
  return targets
}

/** The room: many members, steady churn. */
async function room (targets: Target[], redis: Redis, prefix: string): Promise<object> {
  const team = { entityType: 'Team', entityId: 'big-room' }
  const clients: Client[] = []
  const t0 = Date.now()
  await inBatches(Array.from({ length: MEMBERS }, (_, i) => i), 200, async (i) => {
    const c = await connect(targets[i % 3].url, `u${i}`)
    clients.push(c)
    await request(c, 'subscribe', { ...team, presence: { info: { editing: 'lineup', n: i } } })
  })
  log(`presence room: ${clients.length} members joined in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
  await sleep(3000)
  const idleStart = targets.map((t) => cpuMs(t.pid))
  await sleep(5000)
  const idleCpu = targets.map((t, i) => (cpuMs(t.pid) - idleStart[i]) / 5000)
  for (const c of clients) c.presence = 0
  const cpuStart = targets.map((t) => cpuMs(t.pid))
  const started = Date.now()
  let next = 0
  const out: Client[] = []
  let ops = 0
  // each tick: 10 leave, 10 of those out join again
  for (let tick = 0; Date.now() - started < SECONDS * 1000; tick++) {
    const due = started + tick * 100
    if (due > Date.now()) await sleep(due - Date.now())
    for (let k = 0; k < CHURN / 10; k++) {
      const leaving = clients[next++ % clients.length]
      out.push(leaving)
      void request(leaving, 'subscribe', { ...team, presence: false })
      if (out.length > CHURN) void request(out.shift()!, 'subscribe', { ...team, presence: { info: { editing: 'bench', tick } } })
      ops++
    }
  }
  const seconds = (Date.now() - started) / 1000
  await sleep(1500)
  const cpu = targets.map((t, i) => (cpuMs(t.pid) - cpuStart[i]) / ((Date.now() - started)) - idleCpu[i])
  const frames = clients.reduce((a, c) => a + c.presence, 0)
  const key = `{${prefix}}:presence:${prefix}:Team:big-room`
  const bytes = Number(await redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0'))
  const stored = await redis.hlen(key)
  for (const c of clients) c.ws.terminate()
  const row = {
    members: clients.length,
    instances: targets.length,
    joinsPerSecond: Math.round(ops / seconds),
    leavesPerSecond: Math.round(ops / seconds),
    seconds: Math.round(seconds),
    framesPerSocketPerSecond: Math.round((frames / clients.length / seconds) * 100) / 100,
    plainBroadcastFramesPerSocketPerSecond: 2 * Math.round(ops / seconds),
    serverCpuPercentOfCorePerInstance: cpu.map((c) => Math.round(c * 1000) / 10),
    idleCpuPercentOfCorePerInstance: idleCpu.map((c) => Math.round(c * 1000) / 10),
    redisBytesPerMember: Math.round(bytes / Math.max(1, stored)),
    redisEntries: stored
  }
  log(JSON.stringify(row))
  return row
}

/** 50 editors, 20 signals/s each: ours over three instances, or a plain ws broadcast from Redis. */
async function signals (kind: 'changefeed' | 'ws', targets: Target[], raw: Target, redis: Redis, round: number): Promise<object> {
  const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 })
  const onSignal = (sentAt: number): void => { histogram.recordValue(Math.max(1, Math.round((now() - sentAt) * 1000))) }
  const team = { entityType: 'Team', entityId: `editing-${round}` }
  const editors: Client[] = []
  let received = 0
  for (let i = 0; i < EDITORS; i++) {
    const c = kind === 'changefeed'
      ? await connect(targets[i % 3].url, `editor-${i}`, (t) => { received++; onSignal(t) })
      : await connect(raw.url, null, (t) => { received++; onSignal(t) })
    if (kind === 'changefeed') await request(c, 'subscribe', { ...team, presence: { info: { editing: i } } })
    else c.ws.send(team.entityId)
    editors.push(c)
  }
  await sleep(500)
  const seconds = 8
  const servers = kind === 'changefeed' ? targets : [raw]
  const cpuStart = servers.map((t) => cpuMs(t.pid))
  const started = now()
  let sent = 0
  for (let tick = 0; now() - started < seconds * 1000; tick++) {
    const due = started + (tick * 1000) / SIGNAL_RATE
    const wait = due - now()
    if (wait > 1) await sleep(wait)
    for (const [i, c] of editors.entries()) {
      const data = { t: due, x: tick, y: i }
      if (kind === 'changefeed') c.ws.send(JSON.stringify({ type: 'signal', data: { ...team, data } }))
      else {
        // the same frame our server writes, broadcast to every socket (the sender's too: a plain broadcast has no sender)
        const frame = JSON.stringify({ type: 'signal', data: { ...team, from: { userId: `editor-${i}` }, data } })
        void redis.publish('bench:raw', JSON.stringify({ entityId: team.entityId, frame }))
      }
      sent++
    }
  }
  await sleep(1500)
  const cpu = servers.reduce((sum, t, i) => sum + cpuMs(t.pid) - cpuStart[i], 0) / (now() - started)
  for (const c of editors) c.ws.terminate()
  const ms = (micros: number): number => Math.round(micros / 10) / 100
  const row = {
    target: kind,
    round,
    editors: EDITORS,
    signalsPerSecond: Math.round(sent / seconds),
    received,
    framesPerSocketPerSecond: Math.round(received / EDITORS / seconds),
    p50: ms(histogram.getValueAtPercentile(50)),
    p99: ms(histogram.getValueAtPercentile(99)),
    max: ms(histogram.maxValue),
    serverCpuPercentOfCore: Math.round(cpu * 1000) / 10
  }
  log(JSON.stringify(row))
  return row
}

export const presenceScenarios = {
  presence: async (): Promise<void> => {
    // the machine's load before the run (other work on it shows in the numbers)
    const load = loadavg()[0]
    const prefix = `benchp${Date.now()}`
    const targets = await startInstances(prefix)
    const raw = await startPeer('ws', 'bench:raw')
    const redis = new Redis(REDIS_URL)
    const signalRows: object[] = []
    for (let round = 0; round < ROUNDS; round++) {
      for (const kind of round % 2 === 0 ? ['changefeed', 'ws'] as const : ['ws', 'changefeed'] as const) signalRows.push(await signals(kind, targets, raw, redis, round))
    }
    const roomRow = await room(targets, redis, prefix)
    redis.disconnect()
    await raw.stop()
    for (const t of targets) await t.stop()
    save('presence', {
      description: `presence on 3 instances and one Redis: ${MEMBERS.toLocaleString('en')} members in one room with ${CHURN} joins/s and ${CHURN} leaves/s; and ${EDITORS} editors sending ${SIGNAL_RATE} signals/s each, against a plain ws broadcast of the same signals`,
      loadAverageAtStart: Math.round(load * 10) / 10,
      room: roomRow,
      signals: signalRows
    })
  }
}
