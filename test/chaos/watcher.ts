/**
 * A chaos watcher: the SDK's client (lib/client, `ChangefeedClient`) subscribed to its entities, so the SDK's own
 * reconnect, resume (`since`), dedupe by position and resync handling run under the faults. What the application
 * gets is recorded from the SDK's public events: each notification it delivers (`onNotification`), each resync it
 * reports (`onResync`: the application would refetch the entity), each connection (`onState`).
 *
 * The SDK does not report what it decided not to deliver, nor whether a resume was recovered, so the watcher also
 * reads the frames as they arrive, through the `WebSocket` constructor it gives the client. That constructor is
 * the load balancer too: each connection goes to a random live instance. It only reads: the client alone answers.
 */
import WebSocket from 'ws'
import { ChangefeedClient, type Notification } from '../../lib/client/index.js'

export interface Received { n: number, position: string, at: number }
/** `dropped`: a position not delivered before, and the SDK did not deliver it (it came during a resume, or stale) */
export interface Arrival extends Received { dropped: boolean, repeat: boolean }
export interface Resync { at: number, why: string }

export interface WatchedEntity {
  id: string
  /** what the SDK delivered, in order */
  received: Received[]
  /** the resyncs the SDK reported for the entity, with their reason */
  resyncs: Resync[]
  /** highest n delivered */
  maxN: number
  /** when a resume with `since` was answered `recovered: true` */
  recoveredAt: number[]
  /** every notification as it came off the wire, delivered or not */
  wire: Arrival[]
  /** positions delivered: an arrival of one again is a repeat */
  delivered: Set<string>
}

export interface WatcherCounts {
  notificationsOnWire: number
  /** a position the SDK had delivered, on the wire again (it drops them) */
  duplicatesOnWire: number
  /** a new position the SDK did not deliver: it came between a resume and its reply, so the replay brings it */
  droppedWhileResuming: number
  connects: number
  recovered: number
  notRecovered: number
  resyncFrames: number
  /** resyncs the SDK reported to the application (after merging bursts and answering with `since`) */
  resyncsReported: number
  subscriptionErrors: number
}

const TYPE = 'Item'

export class Receiver {
  readonly entities = new Map<string, WatchedEntity>()
  readonly counts: WatcherCounts = {
    notificationsOnWire: 0, duplicatesOnWire: 0, droppedWhileResuming: 0, connects: 0, recovered: 0, notRecovered: 0, resyncFrames: 0, resyncsReported: 0, subscriptionErrors: 0
  }

  /** when each connection opened */
  readonly openedAt: number[] = []
  private readonly client: ChangefeedClient

  constructor (
    readonly index: number,
    entityIds: string[],
    /** the ws:// URLs of the live instances, read at every (re)connect */
    targets: () => string[],
    private readonly log: (line: string) => void
  ) {
    for (const id of entityIds) this.entities.set(id, { id, received: [], resyncs: [], maxN: 0, recoveredAt: [], wire: [], delivered: new Set() })
    const watcher = this
    let last = ''
    class Balanced extends WebSocket {
      constructor () {
        const live = targets()
        // every instance is down (a replacement is starting): this attempt fails and the client retries
        last = live.length === 0 ? last : live[Math.floor(Math.random() * live.length)]
        super(last === '' ? 'ws://127.0.0.1:1' : last)
        // registered before the client's handler, so a frame is read here first, then handled by the client
        this.on('message', (data) => watcher.onFrame(data.toString()))
      }
    }
    this.client = new ChangefeedClient({
      url: 'ws://load-balanced',
      WebSocket: Balanced as never,
      // retries a little sooner than a browser would: the run's faults come seconds apart
      backoff: { initialMs: 200, maxMs: 2000 },
      autoConnect: false
    })
    this.client.onState((change) => {
      if (change.to !== 'open') return
      this.counts.connects++
      this.openedAt.push(Date.now())
    })
    for (const entity of this.entities.values()) {
      this.client.subscribe(TYPE, entity.id, {
        onNotification: (n) => this.onNotification(entity, n),
        onResync: (reason) => {
          this.counts.resyncsReported++
          entity.resyncs.push({ at: Date.now(), why: reason })
        },
        onError: (code) => this.log(`watcher ${this.index}: ${entity.id} refused: ${code}`)
      })
    }
  }

  /** Connects and subscribes every entity; resolves when every subscription is confirmed. */
  async start (): Promise<void> {
    this.client.connect()
    const deadline = Date.now() + 30_000
    while (![...this.entities.keys()].every((id) => this.client.peek(TYPE, id).status === 'subscribed')) {
      if (Date.now() > deadline) throw new Error(`watcher ${this.index}: subscriptions not confirmed within 30 s`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }

  close (): void {
    this.client.destroy()
  }

  private onNotification (entity: WatchedEntity, notification: Notification): void {
    const position = notification.position ?? ''
    const n = Number((notification.payload as { n?: number } | null | undefined)?.n)
    // the frame was read just now (onFrame), and the client delivers it as it handles it
    const arrival = entity.wire.at(-1)
    if (arrival !== undefined && arrival.position === position && arrival.dropped) {
      arrival.dropped = false
      this.counts.droppedWhileResuming--
    }
    entity.delivered.add(position)
    entity.received.push({ n, position, at: Date.now() })
    if (n > entity.maxN) entity.maxN = n
  }

  /** A frame as it arrived, before the client handles it. */
  private onFrame (text: string): void {
    const now = Date.now()
    let frame: { type?: string, data?: any }
    try {
      frame = JSON.parse(text)
    } catch {
      return
    }
    const data = frame.data
    switch (frame.type) {
      case 'notification': {
        this.counts.notificationsOnWire++
        const entity = this.entities.get(data.entityId)
        if (entity === undefined) return
        const position = String(data.position ?? '')
        const repeat = entity.delivered.has(position)
        if (repeat) this.counts.duplicatesOnWire++
        // not delivered until the client says so (onNotification, at once)
        else this.counts.droppedWhileResuming++
        entity.wire.push({ n: Number(data.payload?.n), position, at: now, dropped: !repeat, repeat })
        return
      }
      case 'subscribed': {
        const entity = this.entities.get(data?.entityId)
        if (data?.recovered === true) {
          this.counts.recovered++
          entity?.recoveredAt.push(now)
        } else if (data?.recovered === false) {
          this.counts.notRecovered++
        }
        return
      }
      case 'subscription_error':
      case 'error':
        // refused (rate_limited, internal_error during a bus outage: the client sends it again)
        this.counts.subscriptionErrors++
        this.log(`watcher ${this.index}: ${frame.type} ${String(data?.code)}`)
        return
      case 'resync':
        this.counts.resyncFrames++
    }
  }
}
