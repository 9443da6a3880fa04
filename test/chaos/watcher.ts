/**
 * A resuming WebSocket client, written for the chaos run rather than taken from the SDK so that it records every
 * raw frame: each notification as it came off the wire, each resync, each resume and whether the server
 * recovered it. It reconnects by itself (to a random live instance) and resubscribes every entity with `since`,
 * the last position it received for it, when it has one.
 *
 * What counts as a resync (the client would refetch the entity): a `resync` frame for the entity or for all, a
 * `subscribed` with `recovered: false`, and a resubscribe after a reconnect without a position to resume from.
 *
 * Between a resume (`since`) on an open socket and its `subscribed` reply, the entity's notifications are dropped:
 * the server wrote them before it read the replay, so each of them was already numbered and comes again in the
 * replay, in order. Taken as they come, one newer than a change the replay is about to bring would be applied
 * before it (e.g. after a bus gap: n=45 live, then 42, 43, 44 replayed). They are still recorded (`wire`), so the
 * report can say what a client that kept them would have seen (`dropDuringResume: false` makes the watchers keep
 * them, and the criteria then judge that client).
 */
import WebSocket from 'ws'

export interface Received { n: number, position: string, at: number }
export interface Arrival extends Received { dropped: boolean }
export interface Resync { at: number, why: string }

export interface WatchedEntity {
  id: string
  /** notifications after dedupe by position, in arrival order */
  received: Received[]
  /** positions seen, for the dedupe */
  positions: Set<string>
  /** the position to resume from: the newest received */
  last: string | null
  resyncs: Resync[]
  /** highest n received */
  maxN: number
  /** when a resume with `since` was answered `recovered: true` */
  recoveredAt: number[]
  /** every notification as it arrived, dropped or not */
  wire: Arrival[]
  /** the request id of the resume awaiting its reply on this socket, if any */
  resuming: string | null
}

export interface WatcherCounts {
  notificationsOnWire: number
  duplicatesOnWire: number
  connects: number
  recovered: number
  notRecovered: number
  resumedWithoutPosition: number
  resyncFrames: number
  subscriptionErrors: number
  droppedWhileResuming: number
}

export type Mode = 'outbox' | 'notify'

export class Watcher {
  readonly entities = new Map<string, WatchedEntity>()
  /** resyncs without an entity: every entity of the socket */
  readonly allResyncs: Resync[] = []
  readonly counts: WatcherCounts = {
    notificationsOnWire: 0, duplicatesOnWire: 0, connects: 0, recovered: 0, notRecovered: 0, resumedWithoutPosition: 0, resyncFrames: 0, subscriptionErrors: 0, droppedWhileResuming: 0
  }

  /** when each connection opened */
  readonly openedAt: number[] = []
  private ws: WebSocket | null = null
  private closed = false
  private requests = 0
  /** subscribes awaiting their reply, by request id */
  private readonly pending = new Map<string, { entityId: string, resumed: boolean }>()
  private timer: NodeJS.Timeout | null = null

  constructor (
    readonly index: number,
    entityIds: string[],
    private readonly mode: Mode,
    /** the ws:// URLs of the live instances, read at every (re)connect */
    private readonly targets: () => string[],
    private readonly log: (line: string) => void,
    /** drop notifications between a resume and its reply (see above); false: take them as they come */
    private readonly dropDuringResume = true
  ) {
    for (const id of entityIds) this.entities.set(id, { id, received: [], positions: new Set(), last: null, resyncs: [], maxN: 0, recoveredAt: [], wire: [], resuming: null })
  }

  /** Connects and subscribes every entity; resolves when every first subscribe is answered. */
  async start (): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.connect(false)
      const deadline = setTimeout(() => {
        clearInterval(check)
        reject(new Error(`watcher ${this.index}: subscriptions not confirmed within 30 s`))
      }, 30_000)
      const check = setInterval(() => {
        if (this.ws?.readyState === WebSocket.OPEN && this.pending.size === 0 && this.counts.connects > 0) {
          clearInterval(check)
          clearTimeout(deadline)
          resolve()
        }
      }, 20)
    })
  }

  close (): void {
    this.closed = true
    if (this.timer !== null) clearTimeout(this.timer)
    this.ws?.terminate()
  }

  private connect (resumed: boolean): void {
    const live = this.targets()
    if (live.length === 0) {
      // every instance is down (a replacement is starting): try again shortly
      this.reconnect()
      return
    }
    const ws = new WebSocket(live[Math.floor(Math.random() * live.length)])
    this.ws = ws
    ws.on('open', () => {
      this.counts.connects++
      this.openedAt.push(Date.now())
      this.pending.clear()
      // a new socket: nothing in flight from before
      for (const entity of this.entities.values()) entity.resuming = null
      for (const entity of this.entities.values()) this.subscribe(entity, resumed)
    })
    ws.on('message', (data) => this.onFrame(data.toString()))
    ws.on('error', () => {})
    ws.on('close', () => {
      if (this.ws !== ws || this.closed) return
      this.ws = null
      this.reconnect()
    })
  }

  private reconnect (): void {
    if (this.closed) return
    // 100–500 ms: the instances that are up are picked from afresh at each attempt
    this.timer = setTimeout(() => {
      this.timer = null
      if (!this.closed) this.connect(true)
    }, 100 + Math.random() * 400)
  }

  /** `resumed`: a resubscribe (after a reconnect or a resync), not the first subscribe of the entity. */
  private subscribe (entity: WatchedEntity, resumed: boolean): void {
    const id = `r${++this.requests}`
    const data: Record<string, string> = { entityType: 'Item', entityId: entity.id }
    if (entity.last !== null) data.since = entity.last
    this.pending.set(id, { entityId: entity.id, resumed })
    if (entity.last !== null) entity.resuming = id
    this.send({ type: 'subscribe', id, data })
  }

  private send (message: object): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message))
  }

  private onFrame (text: string): void {
    const now = Date.now()
    const frame = JSON.parse(text) as { type: string, id?: string, data?: any }
    switch (frame.type) {
      case 'notification': return this.onNotification(frame.data, now)
      case 'subscribed': return this.onSubscribed(frame.id, frame.data, now)
      // a refused subscribe: subscription_error, or error (rate_limited) when the request was not even taken
      case 'subscription_error':
      case 'error': return this.onSubscriptionError(frame.id, frame.data)
      case 'resync': return this.onResync(frame.data, now)
      default:
    }
  }

  private onNotification (data: { entityId: string, position?: string, payload?: { n?: number } }, now: number): void {
    this.counts.notificationsOnWire++
    const entity = this.entities.get(data.entityId)
    if (entity === undefined) return
    const position = data.position ?? ''
    const n = Number(data.payload?.n)
    const dropped = this.dropDuringResume && entity.resuming !== null
    entity.wire.push({ n, position, at: now, dropped })
    if (dropped) {
      this.counts.droppedWhileResuming++
      return
    }
    if (entity.positions.has(position)) {
      this.counts.duplicatesOnWire++
      return
    }
    entity.positions.add(position)
    entity.received.push({ n, position, at: now })
    if (n > entity.maxN) entity.maxN = n
    if (entity.last === null || newer(position, entity.last)) entity.last = position
  }

  private onSubscribed (id: string | undefined, data: { entityId: string, recovered?: boolean }, now: number): void {
    const request = id === undefined ? undefined : this.pending.get(id)
    if (request === undefined) return
    this.pending.delete(id!)
    const entity = this.entities.get(request.entityId)!
    if (entity.resuming === id) entity.resuming = null
    if (data.recovered === true) {
      this.counts.recovered++
      entity.recoveredAt.push(now)
    } else if (data.recovered === false) {
      this.counts.notRecovered++
      entity.resyncs.push({ at: now, why: 'recovered_false' })
    } else if (request.resumed) {
      // nothing to resume from: the client refetches
      this.counts.resumedWithoutPosition++
      entity.resyncs.push({ at: now, why: 'no_position' })
    }
  }

  private onSubscriptionError (id: string | undefined, data: { code: string }): void {
    const request = id === undefined ? undefined : this.pending.get(id)
    this.counts.subscriptionErrors++
    this.log(`watcher ${this.index}: subscribe refused: ${data.code}`)
    if (request === undefined) return
    this.pending.delete(id!)
    const entity = this.entities.get(request.entityId)!
    // rate_limited, internal_error (a bus outage): the SDK sends it again after a short random delay
    setTimeout(() => { if (!this.closed) this.subscribe(entity, request.resumed) }, 100 + Math.random() * 400).unref()
  }

  private onResync (data: { reason: string, entityType?: string, entityId?: string }, now: number): void {
    this.counts.resyncFrames++
    const affected = data.entityId === undefined ? [...this.entities.values()] : [this.entities.get(data.entityId)].filter((e) => e !== undefined)
    if (data.entityId === undefined) this.allResyncs.push({ at: now, why: data.reason })
    else for (const entity of affected) entity.resyncs.push({ at: now, why: data.reason })
    // outbox mode: what was missed can be replayed; resume every affected entity from its last position
    if (this.mode === 'outbox') for (const entity of affected) this.subscribe(entity, true)
  }
}

/** Positions of outbox mode (`<epoch>:<n>`) compare by number within an epoch; anything else: the latest wins. */
function newer (position: string, than: string): boolean {
  const a = /^([0-9a-f]{8}):(\d+)$/.exec(position)
  const b = /^([0-9a-f]{8}):(\d+)$/.exec(than)
  if (a === null || b === null || a[1] !== b[1]) return true
  return Number(a[2]) > Number(b[2])
}
