/**
 * The memory bus's history: a ring per channel in this process. Its cost is bounded: at most `size` messages per
 * channel, and a channel's ring is dropped `ttlSeconds` after its last message (swept once per shortest ttl seen).
 */
import { newEpoch, withPosition, type ChannelHistory, type HistoryLimits } from './history.js'

/** `position`: the change's; `gaps`: how many gaps had been marked when it was written */
interface Entry { position: string, gaps: number, message: string }

interface Ring {
  epoch: string
  /** the offset of the next message */
  next: number
  entries: Entry[]
  /** bytes of the messages held (UTF-16 length: what the process holds) */
  bytes: number
  /** dropped after this (epoch ms) */
  expires: number
}

const SWEEP_MIN_MS = 1000

export class MemoryHistory implements ChannelHistory {
  private readonly rings = new Map<string, Ring>()
  private held = 0
  private gaps = 0
  private sweeper: NodeJS.Timeout | null = null
  private sweepMs = Infinity

  /** `publish`: the bus's delivery of a message to this process's subscribers */
  constructor (private readonly publish: (channel: string, message: string) => Promise<void>, private readonly now: () => number = Date.now) {}

  get bytes (): number {
    return this.held
  }

  /** The channel's ring, a new one when it has none (or it expired). */
  private ringOf (channel: string, now: number): Ring {
    let ring = this.rings.get(channel)
    if (ring !== undefined && ring.expires <= now) ring = this.drop(channel)
    if (ring === undefined) {
      ring = { epoch: newEpoch(), next: 1, entries: [], bytes: 0, expires: 0 }
      this.rings.set(channel, ring)
    }
    return ring
  }

  async append (channel: string, message: string, limits: HistoryLimits, position?: string): Promise<string> {
    const now = this.now()
    const ring = this.ringOf(channel, now)
    const at = position ?? ring.epoch + ':' + String(ring.next)
    ring.next++
    const sent = withPosition(at, message)
    ring.entries.push({ position: at, gaps: this.gaps, message: sent })
    ring.bytes += sent.length
    this.held += sent.length
    while (ring.entries.length > limits.size) {
      const gone = ring.entries.shift()!
      ring.bytes -= gone.message.length
      this.held -= gone.message.length
    }
    ring.expires = now + limits.ttlSeconds * 1000
    this.sweepEvery(limits.ttlSeconds * 1000)
    await this.publish(channel, sent)
    return at
  }

  async head (channel: string, limits: HistoryLimits): Promise<string> {
    const now = this.now()
    const ring = this.ringOf(channel, now)
    const last = ring.entries.at(-1)
    if (last !== undefined) return last.position
    // its start: an entry that is no message, and the first of the ring
    const start = ring.epoch + ':0'
    ring.entries.push({ position: start, gaps: this.gaps, message: '' })
    ring.expires = now + limits.ttlSeconds * 1000
    this.sweepEvery(limits.ttlSeconds * 1000)
    return start
  }

  async keep (channels: readonly string[], limits: HistoryLimits): Promise<void> {
    const now = this.now()
    for (const channel of channels) {
      const ring = this.rings.get(channel)
      if (ring !== undefined && ring.expires > now) ring.expires = Math.max(ring.expires, now + limits.ttlSeconds * 1000)
    }
  }

  async after (channel: string, since: string): Promise<string[] | null> {
    const ring = this.rings.get(channel)
    if (ring === undefined || ring.expires <= this.now()) return null
    // the entry at `since` itself must be held (it says whether a gap came after it): resumes come soon after the
    // drop, near the end
    for (let i = ring.entries.length - 1; i >= 0; i--) {
      if (ring.entries[i].position !== since) continue
      return ring.entries[i].gaps < this.gaps ? null : ring.entries.slice(i + 1).map((entry) => entry.message)
    }
    return null
  }

  async reset (channel: string): Promise<void> {
    this.drop(channel)
  }

  async markGap (): Promise<void> {
    this.gaps++
  }

  private drop (channel: string): undefined {
    const ring = this.rings.get(channel)
    if (ring === undefined) return
    this.rings.delete(channel)
    this.held -= ring.bytes
  }

  private sweepEvery (ms: number): void {
    if (ms >= this.sweepMs) return
    this.sweepMs = Math.max(SWEEP_MIN_MS, ms)
    if (this.sweeper !== null) clearInterval(this.sweeper)
    this.sweeper = setInterval(() => this.sweep(), this.sweepMs)
    this.sweeper.unref()
  }

  /** Drops the rings of channels quiet for longer than their ttl. */
  sweep (): void {
    const now = this.now()
    for (const [channel, ring] of this.rings) if (ring.expires <= now) this.drop(channel)
  }

  close (): void {
    if (this.sweeper !== null) clearInterval(this.sweeper)
    this.sweeper = null
    this.rings.clear()
    this.held = 0
  }
}
