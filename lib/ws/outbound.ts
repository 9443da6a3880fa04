/**
 * Deliver, per socket: a consumer that reads slower than its entities change gets each entity's latest state
 * instead of every intermediate one. Frames wait here while the socket's buffer is full; a later notification for
 * the same entity replaces the waiting one, and a socket that still falls behind is reported as a slow consumer.
 */

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

/**
 * The net change of two changes of one entity, as the client sees it (the frame of `first` was never written),
 * or null when nothing is left to say: the entity was created and deleted while the client was not reading.
 */
export function mergeChangeType (first: string, last: string): string | null {
  if (first === 'created') return last === 'deleted' ? null : 'created'
  if (last === 'deleted') return 'deleted'
  // the client knew the entity before and it exists after: a re-creation is, to it, an update
  if (first === 'deleted' || last === 'created') return 'updated'
  return last
}

const CHANGE_TYPE = '"changeType":"'

/**
 * Reads a notification's changeType without parsing the frame. `encodeNotification` writes changeType before the
 * payload, and the keys and strings before it cannot hold an unescaped quote, so the first match is the frame's own.
 */
function changeTypeOf (frame: string): string | undefined {
  const start = frame.indexOf(CHANGE_TYPE)
  if (start === -1) return undefined
  const from = start + CHANGE_TYPE.length
  const end = frame.indexOf('"', from)
  return end === -1 ? undefined : frame.slice(from, end)
}

/** The frame to hold in place of `first`: `last` with the net changeType, or null when both cancel out. */
function mergeFrames (first: string, last: string): string | null {
  const a = changeTypeOf(first)
  const b = changeTypeOf(last)
  if (a === undefined || b === undefined) return last
  const net = mergeChangeType(a, b)
  if (net === null || net === b) return net === null ? null : last
  const message = JSON.parse(last) as { data: { changeType: string } }
  message.data.changeType = net
  return JSON.stringify(message)
}

export class OutboundQueue {
  /** frames replaced by a later one of the same key and never written; a create and delete that cancel count both */
  conflated = 0
  /**
   * Held frames in the order they go out, made when the first is held (most sockets never hold one). Conflatable
   * frames are keyed by channel, so a replacement keeps the first one's place (Map.set on an existing key); frames
   * that must be kept get a number of their own.
   */
  private pending: Map<string | number, string> | null = null
  private nextUnkeyed = 0
  private timer: NodeJS.Timeout | null = null
  private closed = false

  constructor (private readonly sink: Sink, private readonly limits: OutboundLimits) {}

  get held (): number {
    return this.pending?.size ?? 0
  }

  /**
   * Writes `frame` now, or holds it while the socket is backed up. `key` is the entity channel of a notification
   * that a later one may replace, or null for a frame that must be delivered as is (replies, events, batches).
   * `bytes`: the frame already encoded, shared by every socket it goes to. `full`: for a patch frame (payload type
   * `delta`), the full frame of the same change: merged with the frame held before it, the patch would apply to a
   * document the client never gets, so the merge is made of the full one. A closed queue takes nothing and answers
   * 'overflow'.
   */
  push (frame: string, key: string | null, bytes?: Buffer, full?: string): PushResult {
    if (this.closed || this.sink.bufferedAmount > this.limits.maxBufferedBytes) return 'overflow'
    if (this.held === 0 && this.sink.bufferedAmount <= this.limits.highWaterBytes) {
      this.sink.send(bytes ?? frame, TEXT)
      return 'sent'
    }
    const pending = this.pending ??= new Map()
    if (key !== null) {
      const earlier = pending.get(key)
      if (earlier !== undefined) {
        const merged = mergeFrames(earlier, full ?? frame)
        if (merged === null) {
          pending.delete(key)
          this.conflated += 2
          if (pending.size === 0) this.stopTimer()
        } else {
          pending.set(key, merged)
          this.conflated++
        }
        return 'held'
      }
    }
    if (pending.size >= this.limits.maxHeldFrames) return 'overflow'
    pending.set(key ?? this.nextUnkeyed++, frame)
    this.timer ??= setInterval(() => this.drain(), this.limits.drainIntervalMs).unref()
    return 'held'
  }

  /**
   * Drops the held frames of a channel, if any (a replay about to be written covers them): the one keyed by the
   * channel, and on a channel of every tenant those keyed by channel and tenant.
   */
  discard (channel: string): void {
    const pending = this.pending
    if (pending === null) return
    pending.delete(channel)
    const tenants = channel + '\u0000'
    for (const key of pending.keys()) if (typeof key === 'string' && key.startsWith(tenants)) pending.delete(key)
    if (pending.size === 0) this.stopTimer()
  }

  /** Stops the timer and drops the held frames; safe to call more than once. */
  close (): void {
    this.closed = true
    this.pending = null
    this.stopTimer()
  }

  /** Waits for the buffer to fall below low water, then writes until it rises above high water again. */
  private drain (): void {
    const pending = this.pending
    if (pending === null || this.sink.bufferedAmount >= this.limits.lowWaterBytes) return
    for (const [key, frame] of pending) {
      if (this.sink.bufferedAmount > this.limits.highWaterBytes) return
      pending.delete(key)
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
