/**
 * A load generator process: opens `count` WebSocket connections to one server (ours, a raw ws broadcast server, or
 * Socket.IO) from one source address, subscribes each to its entity, and records latency from the time the change
 * was *scheduled* (the publisher's intended send time, or the trigger's clock) to receipt, in an HDR histogram,
 * so a slow server cannot hide its delays (no coordinated omission). Driven over IPC by run.ts.
 */
import WebSocket from 'ws'
import { io as ioClient, type Socket } from 'socket.io-client'
import hdr from 'hdr-histogram-js'

interface Job {
  target: 'changefeed' | 'host' | 'ws' | 'socketio'
  /** sockets opening at once */
  concurrency: number
  url: string
  count: number
  /** entity ids, assigned round-robin */
  entities: string[]
  entityType: string
  localAddress: string
  /** latency from payload.t (publisher's schedule, ms) or from data.timestamp (trigger clock) */
  clock: 'payload' | 'trigger'
}

const job = JSON.parse(process.env.BENCH_JOB ?? '{}') as Job
const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 })
let received = 0
/** bytes of the notification frames received (what a change costs on the wire) */
let bytes = 0
let connected = 0
let failed = 0
const sockets: Array<WebSocket | Socket> = []

function record (sentMs: number): void {
  received++
  const micros = Math.max(1, Math.round((performance.timeOrigin + performance.now() - sentMs) * 1000))
  histogram.recordValue(Math.min(micros, 120_000_000))
}

const NOTIFICATION = '{"type":"notification"'
const SENT = '"t":'

/**
 * A notification's scheduled time. With the publisher's clock it is read without parsing the frame (the first
 * `"t":` of a notification is its payload's: no other key of the frame is "t"), so the load generators spend
 * as little as they can per frame, the same for every ws target; the trigger's clock needs the parse.
 */
function onFrame (data: Buffer): void {
  const text = data.toString()
  if (!text.startsWith(NOTIFICATION)) return
  bytes += data.length
  if (job.clock === 'payload') {
    const at = text.indexOf(SENT)
    const sent = at === -1 ? NaN : parseFloat(text.slice(at + SENT.length, at + SENT.length + 24))
    if (!Number.isNaN(sent)) return record(sent)
  }
  const message = JSON.parse(text) as { data?: { payload?: { t?: number }, timestamp?: string } }
  const sent = job.clock === 'payload' ? message.data?.payload?.t : Date.parse(message.data?.timestamp ?? '')
  if (typeof sent === 'number' && !Number.isNaN(sent)) record(sent)
}

async function connectOne (i: number): Promise<void> {
  const entityId = job.entities[i % job.entities.length]
  if (job.target === 'socketio') {
    const socket = ioClient(job.url, { transports: ['websocket'], reconnection: false, localAddress: job.localAddress } as never)
    sockets.push(socket)
    await new Promise<void>((resolve) => {
      socket.once('connect', () => { connected++; socket.emit('subscribe', entityId); resolve() })
      socket.once('connect_error', () => { failed++; resolve() })
    })
    socket.on('notification', (payload: { t: number }) => record(payload.t))
    return
  }
  // the load generators share the server's cores: they spend as little as they can per frame (no UTF-8 check)
  const ws = new WebSocket(job.url, { localAddress: job.localAddress, perMessageDeflate: false, skipUTF8Validation: true })
  sockets.push(ws)
  const ours = job.target === 'changefeed' || job.target === 'host'
  await new Promise<void>((resolve) => {
    ws.once('open', () => {
      if (!ours) {
        ws.send(entityId)
        connected++
        return resolve()
      }
      // ours: connected once the subscription is confirmed
      ws.send(JSON.stringify({ type: 'subscribe', id: 's', data: { entityType: job.entityType, entityId } }))
      ws.once('message', (data) => {
        if ((JSON.parse(data.toString()) as { type: string }).type === 'subscribed') connected++
        else failed++
        resolve()
      })
    })
    ws.once('error', () => { failed++; resolve() })
  })
  ws.on('message', (data) => onFrame(data as Buffer))
}

async function connectAll (): Promise<void> {
  const concurrency = job.concurrency
  let next = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < job.count) await connectOne(next++)
  }))
}

process.on('message', (command: string) => {
  if (command === 'report') {
    process.send?.({ received, bytes, connected, failed, histogram: hdr.encodeIntoCompressedBase64(histogram) })
  } else if (command === 'reset') {
    received = 0
    bytes = 0
    histogram.reset()
    process.send?.({ reset: true })
  } else if (command === 'close') {
    for (const s of sockets) (s as { close(): void }).close()
    setTimeout(() => process.exit(0), 200)
  }
})

await connectAll()
process.send?.({ ready: true, connected, failed })
