/**
 * A load generator of whole clients: `count` of our SDK's clients (or Socket.IO's, with connection-state recovery)
 * in one process, each watching one entity and keeping every change it is handed, so the parent can count what each
 * client lost, got twice, and how long it took to come back. Driven over IPC by sdkload.ts.
 *
 * - `jitter`: on `cut`, every client's TCP connection is destroyed (no close frame) about every `dropEveryMs`, at a
 *   random phase, and its reconnects are refused for `offlineMs`; replay latency is reopened socket → the last
 *   change missed while offline handed to the application.
 * - `deploy`: nothing is cut here; the servers drain (1012). Measured: close → the `subscribed` reply of the resume.
 */
import WebSocket from 'ws'
import { io as ioClient, type Socket } from 'socket.io-client'
import hdr from 'hdr-histogram-js'
import { ChangefeedClient } from '../../lib/client/index.js'

export interface SdkJob {
  target: 'changefeed' | 'socketio'
  urls: string[]
  count: number
  /** entity ids, assigned round-robin from `first` */
  entities: string[]
  first: number
  dropEveryMs: number
  offlineMs: number
}

/** What one process reports at the end. */
export interface SdkReport {
  clients: number
  subscribed: number
  /** distinct changes handed to the application, of 1..written per entity */
  delivered: number
  expected: number
  missed: number
  /** missed by clients the SDK never told to refetch, and not away: a silent gap */
  missedSilently: number
  /** missed by clients still away at the end (closed, resume not answered) */
  missedWhileAway: number
  away: number
  /** missed changes numbered at most `middleUpTo` (not the last, which a client still coming back may lack) */
  missedInMiddle: number
  duplicates: number
  resyncs: number
  recovered: number
  notRecovered: number
  /** subscribed again without a position */
  fresh: number
  closes: Record<string, number>
  resyncFrames: Record<string, number>
  errorFrames: Record<string, number>
  /** the connection state of the clients whose resume is not answered at the end */
  awayStates: Record<string, number>
  /** reopened socket → last missed change (jitter), in ms */
  replay: string
  /** socket closed → resume answered (`subscribed`, or Socket.IO's `connect`), in ms; of the recovered ones */
  resumed: string
  resumedRecovered: string
  /** the SDK's reasons for reconnecting */
  drops: Record<string, number>
}

const job = JSON.parse(process.env.BENCH_JOB ?? '{}') as SdkJob
const histogram = (): hdr.Histogram => hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000, numberOfSignificantValueDigits: 3 })
const replay = histogram()
const resumed = histogram()
/** the same, of the resumes the server recovered */
const resumedRecovered = histogram()
/** why a client's socket went: the SDK's own reasons (a pong not in time…) and the close codes */
const reconnectReasons: Record<string, number> = {}
const closes: Record<string, number> = {}
/** the server's `resync` frames, by reason; its error replies, by code */
const resyncFrames: Record<string, number> = {}
const errorFrames: Record<string, number> = {}
let published = 0
let subscribed = 0
let recovered = 0
let notRecovered = 0
let fresh = 0

interface Watcher {
  entity: string
  seqs: number[]
  /** the highest change handed over */
  top: number
  resyncs: number
  everSubscribed: boolean
  offlineUntil: number
  /** a drop under way: when its socket opened again, and the last change published before its offline window ended */
  reopenedAt: number | null
  owedUpTo: number
  closedAt: number | null
  cut: () => void
  destroy: () => void
  state: () => string
}

const now = (): number => performance.now()
const watchers: Watcher[] = []

function received (w: Watcher, seq: number): void {
  w.seqs.push(seq)
  if (seq > w.top) w.top = seq
  if (w.reopenedAt !== null && seq >= w.owedUpTo) {
    replay.recordValue(Math.max(1, Math.round(now() - w.reopenedAt)))
    w.reopenedAt = null
    w.owedUpTo = 0
  }
}

/** A socket opened again after a cut: a replay is owed only if the client lacks a change published while it was off. */
function reopened (w: Watcher): void {
  if (w.owedUpTo > 0 && w.owedUpTo !== Infinity && w.reopenedAt === null) {
    if (w.top >= w.owedUpTo) w.owedUpTo = 0
    else w.reopenedAt = now()
  }
}

function answered (w: Watcher, wasRecovered: boolean | undefined): void {
  if (!w.everSubscribed) {
    w.everSubscribed = true
    subscribed++
    if (subscribed === job.count) process.send?.({ ready: true, subscribed })
    return
  }
  if (wasRecovered === true) recovered++
  else if (wasRecovered === false) notRecovered++
  // a subscribe without `since`: the client had no position yet (or it resubscribed after a refetch)
  else fresh++
  if (w.closedAt !== null) {
    const ms = Math.max(1, Math.round(now() - w.closedAt))
    resumed.recordValue(ms)
    if (wasRecovered === true) resumedRecovered.recordValue(ms)
  }
  w.closedAt = null
}

function closed (w: Watcher, code: number | string): void {
  closes[code] = (closes[code] ?? 0) + 1
  w.closedAt ??= now()
}

function watcher (entity: string): Watcher {
  return { entity, seqs: [], top: 0, resyncs: 0, everSubscribed: false, offlineUntil: 0, reopenedAt: null, owedUpTo: 0, closedAt: null, cut: () => {}, destroy: () => {}, state: () => '' }
}

/** Our SDK, its sockets refused while offline (a port nobody listens on), each socket's frames read on the side. */
function ours (entity: string): Watcher {
  const w = watcher(entity)
  let socket: WebSocket | null = null
  class Jittery extends WebSocket {
    constructor (address: string) {
      const offline = Date.now() < w.offlineUntil
      super(offline ? 'ws://127.0.0.1:9/ws' : address, { perMessageDeflate: false })
      if (offline) return
      socket = this
      this.on('open', () => reopened(w))
      this.on('close', (code) => closed(w, code))
      this.on('message', (data) => {
        const text = String(data)
        if (text.startsWith('{"type":"error"') || text.startsWith('{"type":"subscription_error"')) {
          const code = (JSON.parse(text) as { data?: { code?: string } }).data?.code ?? '?'
          errorFrames[code] = (errorFrames[code] ?? 0) + 1
        }
        if (text.startsWith('{"type":"resync"')) {
          const reason = (JSON.parse(text) as { data: { reason: string } }).data.reason
          resyncFrames[reason] = (resyncFrames[reason] ?? 0) + 1
        }
        if (!text.startsWith('{"type":"subscribed"')) return
        answered(w, (JSON.parse(text) as { data: { recovered?: boolean } }).data.recovered)
      })
    }
  }
  const client = new ChangefeedClient({ url: job.urls, WebSocket: Jittery as never, backoff: { initialMs: 200, maxMs: 1000 } })
  client.onState(({ to, reason }) => { if (to === 'reconnecting') reconnectReasons[reason] = (reconnectReasons[reason] ?? 0) + 1 })
  client.subscribe('Match', entity, {
    onResync: () => { w.resyncs++ },
    onNotification: (n) => received(w, (n.payload as { seq: number }).seq)
  })
  w.cut = () => { (socket as unknown as { _socket?: { destroy(): void } } | null)?._socket?.destroy() }
  w.destroy = () => client.destroy()
  w.state = () => client.state
  return w
}

/**
 * Socket.IO with connection-state recovery: reconnects (200 ms–1 s, as ours), refused while offline; a connection it
 * did not recover joins the room again (the application's refetch).
 */
function socketio (entity: string): Watcher {
  const w = watcher(entity)
  const url = job.urls[0]
  const socket: Socket = ioClient(url, { forceNew: true, transports: ['websocket'], reconnectionDelay: 200, reconnectionDelayMax: 1000 })
  const manager = socket.io as unknown as { uri: string, engine: { transport?: { ws?: { _socket?: { destroy(): void } } } }, on(event: string, f: () => void): void }
  manager.on('open', () => reopened(w))
  socket.on('connect', () => {
    const first = !w.everSubscribed
    answered(w, first ? undefined : socket.recovered)
    if (first || !socket.recovered) {
      if (!first) w.resyncs++
      socket.emit('subscribe', entity)
    }
  })
  socket.on('disconnect', (reason) => closed(w, reason))
  socket.on('notification', (payload: { seq: number }) => received(w, payload.seq))
  w.cut = () => {
    manager.uri = 'http://127.0.0.1:9'
    setTimeout(() => { manager.uri = url }, job.offlineMs)
    manager.engine.transport?.ws?._socket?.destroy()
  }
  w.destroy = () => socket.disconnect()
  w.state = () => socket.connected ? 'open' : 'reconnecting'
  return w
}

const drops: NodeJS.Timeout[] = []

function startCuts (): void {
  watchers.forEach((w, i) => {
    const cut = (): void => {
      w.offlineUntil = Date.now() + job.offlineMs
      w.owedUpTo = Infinity
      w.reopenedAt = null
      w.cut()
      setTimeout(() => { w.owedUpTo = published }, job.offlineMs)
    }
    const again = (): void => { cut(); drops[i] = setTimeout(again, job.dropEveryMs - 2000 + Math.random() * 4000) }
    drops[i] = setTimeout(again, Math.random() * job.dropEveryMs)
  })
}

function finish (written: Record<string, number>, middleUpTo: number): SdkReport {
  let delivered = 0
  let expected = 0
  let missedSilently = 0
  let missedInMiddle = 0
  let duplicates = 0
  let missedWhileAway = 0
  for (const w of watchers) {
    const total = written[w.entity] ?? 0
    const got = new Set(w.seqs.filter((s) => s >= 1 && s <= total))
    expected += total
    delivered += got.size
    duplicates += w.seqs.length - new Set(w.seqs).size
    // a client still away has not been answered yet: what it lacks is neither resumed nor refetched
    if (w.closedAt !== null) missedWhileAway += total - got.size
    else if (w.resyncs === 0) missedSilently += total - got.size
    for (let s = 1; s <= Math.min(total, middleUpTo); s++) if (!got.has(s)) missedInMiddle++
  }
  return {
    clients: watchers.length,
    subscribed,
    delivered,
    expected,
    missed: expected - delivered,
    missedSilently,
    missedInMiddle,
    missedWhileAway,
    away: watchers.filter((w) => w.closedAt !== null).length,
    duplicates,
    resyncs: watchers.reduce((n, w) => n + w.resyncs, 0),
    recovered,
    notRecovered,
    fresh,
    closes,
    resyncFrames,
    errorFrames,
    awayStates: watchers.filter((w) => w.closedAt !== null).reduce<Record<string, number>>((a, w) => { const st = w.state(); a[st] = (a[st] ?? 0) + 1; return a }, {}),
    replay: hdr.encodeIntoCompressedBase64(replay),
    resumed: hdr.encodeIntoCompressedBase64(resumed),
    resumedRecovered: hdr.encodeIntoCompressedBase64(resumedRecovered),
    drops: reconnectReasons
  }
}

type Command = 'cut' | 'stop' | 'close' | 'status' | { published: number } | { finish: Record<string, number>, middleUpTo: number }

process.on('message', (command: Command) => {
  if (command === 'cut') startCuts()
  else if (command === 'status') process.send?.({ subscribed, pending: watchers.filter((w) => w.closedAt !== null).length })
  else if (command === 'stop') {
    for (const d of drops) clearTimeout(d)
    process.send?.({ stopped: true })
  } else if (command === 'close') {
    for (const w of watchers) w.destroy()
    setTimeout(() => process.exit(0), 200)
  } else if ('published' in command) published = command.published
  else process.send?.(finish(command.finish, command.middleUpTo))
})

for (let i = 0; i < job.count; i++) {
  const entity = job.entities[(job.first + i) % job.entities.length]
  watchers.push(job.target === 'socketio' ? socketio(entity) : ours(entity))
  // connections open a hundred at a time
  if (i % 100 === 99) await new Promise((resolve) => setTimeout(resolve, 50))
}
