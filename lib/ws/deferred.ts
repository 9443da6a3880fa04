/**
 * Resuming with `since`, or starting from a snapshot, per socket: while a channel's replay (or snapshot) is read, its
 * live notifications wait here; once the reply is written they follow, except those the replay or snapshot already
 * carried (the publisher may still be on its way to them), which are dropped until one it did not carry comes.
 */
import { isAfter } from '../protocol/wire.js'
import type { FrameMeta } from './fanout.js'

/** Whether a live notification is one the replay or snapshot carried already. */
export type Carried = (meta: FrameMeta) => boolean

/**
 * A replay from `since` carried its own positions, and every notification not after its last (positions of one epoch
 * are ordered; a feed's history holds the positions of many).
 */
export function replayedUpTo (since: string, replayed: ReadonlyArray<{ position: string }>): Carried {
  const last = replayed.at(-1)?.position ?? since
  const positions = new Set(replayed.map((r) => r.position)).add(since)
  return (meta) => (meta.position !== null && positions.has(meta.position)) || !isAfter(meta.position, last)
}

export class DeferredFrames {
  /** channels being resumed: the live notifications that arrived meanwhile */
  private readonly waiting = new Map<string, Array<{ frame: string, meta: FrameMeta }>>()
  /** channels just resumed: what the replay or snapshot carried */
  private readonly resumedAt = new Map<string, Carried>()

  /** From now on, live notifications of `channel` wait for `release`. */
  defer (channel: string): void {
    if (!this.waiting.has(channel)) this.waiting.set(channel, [])
  }

  /** True when the notification is taken care of here: held for a replay, or one the replay carried. */
  intercept (frame: string, meta: FrameMeta): boolean {
    const held = this.waiting.get(meta.channel)
    if (held !== undefined) {
      held.push({ frame, meta })
      return true
    }
    const carried = this.resumedAt.get(meta.channel)
    if (carried === undefined) return false
    if (carried(meta)) return true
    this.resumedAt.delete(meta.channel)
    return false
  }

  /**
   * The replay or snapshot is written (`carried`: what it holds; null when nothing was recovered): returns the held
   * notifications, to be delivered now.
   */
  release (channel: string, carried: Carried | null): Array<{ frame: string, meta: FrameMeta }> {
    const held = this.waiting.get(channel) ?? []
    this.waiting.delete(channel)
    if (carried !== null) this.resumedAt.set(channel, carried)
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
