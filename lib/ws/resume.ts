/**
 * Resuming with `since`, per socket: while a channel's replay is read, its live notifications wait here; once the
 * replay is written they follow, except those the replay already carried (the publisher may still be on its way
 * to changes the outbox had), which are dropped by position until a newer one comes.
 */
import { isAfter } from '../protocol/wire.js'
import type { FrameMeta } from './fanout.js'

export class ResumeBuffer {
  /** channels being resumed: the live notifications that arrived meanwhile */
  private readonly waiting = new Map<string, Array<{ frame: string, meta: FrameMeta }>>()
  /** channels just resumed: the last position replayed */
  private readonly resumedAt = new Map<string, string>()

  /** From now on, live notifications of `channel` wait for `release`. */
  hold (channel: string): void {
    if (!this.waiting.has(channel)) this.waiting.set(channel, [])
  }

  /** True when the notification is taken care of here: held for a replay, or one the replay carried. */
  intercept (frame: string, meta: FrameMeta): boolean {
    const held = this.waiting.get(meta.channel)
    if (held !== undefined) {
      held.push({ frame, meta })
      return true
    }
    const resumed = this.resumedAt.get(meta.channel)
    if (resumed === undefined) return false
    if (!isAfter(meta.position, resumed)) return true
    this.resumedAt.delete(meta.channel)
    return false
  }

  /**
   * The replay is written (`last`: the position it ended at; null when nothing was recovered): returns the held
   * notifications, to be delivered now.
   */
  release (channel: string, last: string | null): Array<{ frame: string, meta: FrameMeta }> {
    const held = this.waiting.get(channel) ?? []
    this.waiting.delete(channel)
    if (last !== null) this.resumedAt.set(channel, last)
    return held
  }

  forget (channel: string): void {
    this.waiting.delete(channel)
    this.resumedAt.delete(channel)
  }

  clear (): void {
    this.waiting.clear()
    this.resumedAt.clear()
  }
}
