/**
 * Deliver, per socket: a consumer that reads slower than its entities change gets each entity's latest state
 * instead of every intermediate one. Frames wait here while the socket's buffer is full; a later notification for
 * the same entity replaces the waiting one (unless a frame that goes as is, such as a reply, waits between them),
 * and a socket that still falls behind is reported as a slow consumer.
 */
import { mergeNotifications } from '../protocol/index.js'

/** The part of a WebSocket the queue writes to (ws's `send(data, { binary: false })` for text frames). */
export interface Sink {
  send(frame: string | Buffer, options: { binary: boolean }): void
  readonly bufferedAmount: number
}

/** A text frame: sent as its bytes, encoded once for every socket, when the caller has them. */
const TEXT = { binary: false } as const

export interface OutboundLimits {
  /** above this many bytes buffered in the socket, frames are held (and conflated) instead of written */
  highWaterBytes: number
  /** held frames are written again once the socket's buffer is below this */
  lowWaterBytes: number
  /** a socket whose buffer exceeds this, or holding more than maxHeldFrames, is a slow consumer: push returns 'overflow' */
  maxBufferedBytes: number
  maxHeldFrames: number
  /** how often a queue with held frames checks whether the socket drained (ms) */
  drainIntervalMs: number
}

/** `overflow`: the frame was not taken and the caller should close the socket as a slow consumer. */
export type PushResult = 'sent' | 'held' | 'overflow'

/** A frame held for a slow socket; `key`: the entity channel a later notification of it may merge into it by. */
interface Held {
  frame: string
  key: string | null
}

export class OutboundQueue {
  /** frames replaced by a later one of the same key and never written; a create and delete that cancel count both */
  conflated = 0
  /** Held frames in the order they go out, by a number each; made when the first is held (most sockets never hold one). */
  private pending: Map<number, Held> | null = null
  /**
   * The held frame of each key that a later notification of the entity may merge into: only those held after the
   * last frame that must be delivered as is. Merging into a frame ahead of such a frame (a `subscribed` reply with
   * a snapshot, a resync) would send the later state before it, and the client would end on the older one.
   */
  private readonly mergeable = new Map<string, number>()
  private nextHeld = 0
  private timer: NodeJS.Timeout | null = null
  private closed = false

  constructor (private readonly sink: Sink, private readonly limits: OutboundLimits) {}

  get held (): number {
    return this.pending?.size ?? 0
  }

  /**
   * Writes `frame` now, or holds it while the socket is backed up. `key` is the entity channel of a notification
   * that a later one may replace, or null for a frame that must be delivered as is (replies, events, batches):
   * a barrier, that no later frame merges across. `bytes`: the frame already encoded, shared by every socket it
   * goes to. `full`: for a patch frame (payload type `delta`), the full frame of the same change: merged with the
   * frame held before it, the patch would apply to a document the client never gets, so the merge is made of the
   * full one. A closed queue takes nothing and answers 'overflow'.
   */
  push (frame: string, key: string | null, bytes?: Buffer, full?: string): PushResult {
    if (this.closed || this.sink.bufferedAmount > this.limits.maxBufferedBytes) return 'overflow'
    if (this.held === 0 && this.sink.bufferedAmount <= this.limits.highWaterBytes) {
      this.sink.send(bytes ?? frame, TEXT)
      return 'sent'
    }
    const pending = this.pending ??= new Map()
    const at = key === null ? undefined : this.mergeable.get(key)
    const earlier = at === undefined ? undefined : pending.get(at)
    if (key !== null && at !== undefined && earlier !== undefined) {
      const merged = mergeNotifications(earlier.frame, full ?? frame)
      if (merged === null) {
        pending.delete(at)
        this.mergeable.delete(key)
        this.conflated += 2
        if (pending.size === 0) this.stopTimer()
      } else {
        earlier.frame = merged
        this.conflated++
      }
      return 'held'
    }
    if (pending.size >= this.limits.maxHeldFrames) return 'overflow'
    const id = this.nextHeld++
    pending.set(id, { frame, key })
    if (key === null) this.mergeable.clear()
    else this.mergeable.set(key, id)
    this.timer ??= setInterval(() => this.drain(), this.limits.drainIntervalMs).unref()
    return 'held'
  }

  /**
   * Drops the held frames of a channel, if any (a replay about to be written covers them): those keyed by the
   * channel, and on a channel of every tenant those keyed by channel and tenant.
   */
  discard (channel: string): void {
    const pending = this.pending
    if (pending === null) return
    const tenants = channel + '\u0000'
    for (const [id, { key }] of pending) {
      if (key === null || (key !== channel && !key.startsWith(tenants))) continue
      pending.delete(id)
      if (this.mergeable.get(key) === id) this.mergeable.delete(key)
    }
    if (pending.size === 0) this.stopTimer()
  }

  /** Stops the timer and drops the held frames; safe to call more than once. */
  close (): void {
    this.closed = true
    this.pending = null
    this.mergeable.clear()
    this.stopTimer()
  }

  /** Waits for the buffer to fall below low water, then writes until it rises above high water again. */
  private drain (): void {
    const pending = this.pending
    if (pending === null || this.sink.bufferedAmount >= this.limits.lowWaterBytes) return
    for (const [id, { frame, key }] of pending) {
      if (this.sink.bufferedAmount > this.limits.highWaterBytes) return
      pending.delete(id)
      if (key !== null && this.mergeable.get(key) === id) this.mergeable.delete(key)
      this.sink.send(frame, TEXT)
    }
    this.stopTimer()
  }

  private stopTimer (): void {
    if (this.timer === null) return
    clearInterval(this.timer)
    this.timer = null
  }
}
