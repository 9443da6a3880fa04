/**
 * Notify mode: a client resuming with `since` gets what it missed from its channel's history on the bus (lib/bus/
 * history.ts), as the frames it would have received live, at the channel's positions. No database read.
 */
import type { ChannelHistory, HistoryLimits } from '../bus/history.js'
import type { EntityType } from '../entities.js'
import { channelOf } from '../route/channels.js'
import { unwrap } from '../route/envelope.js'
import { atPosition } from '../protocol/index.js'
import type { ReplayedFrames } from './replay.js'

export class HistoryReplay {
  /** `limits`: the history of a type's channels (null: none) */
  constructor (private readonly history: ChannelHistory | null, private readonly prefix: string, private readonly limits: (entityType: string) => HistoryLimits | null) {}

  /** The channel's position now (lib/bus/history.ts), where a subscription starts; null when it keeps no history. */
  async head (entity: EntityType, entityId: string, tenantId: string | null): Promise<string | null> {
    const limits = this.limits(entity.name)
    if (this.history === null || limits === null) return null
    return await this.history.head(channelOf(this.prefix, entity.name, entityId, tenantId), limits)
  }

  /** The channel's notifications after `since`, oldest first; null when they cannot all be given. */
  async replay (entity: EntityType, entityId: string, tenantId: string | null, since: string): Promise<ReplayedFrames | null> {
    const limits = this.limits(entity.name)
    if (this.history === null || limits === null) return null
    const messages = await this.history.after(channelOf(this.prefix, entity.name, entityId, tenantId), since, limits)
    if (messages === null) return null
    const frames: ReplayedFrames = []
    for (const message of messages) {
      const envelope = unwrap(message)
      // a message this version cannot read: what it said is not known, the client refetches
      if (envelope === null || envelope.kind !== 'notification' || envelope.at === undefined) return null
      // a `delta` type's change: its full frame (the client's base is the replay's own)
      frames.push({ frame: atPosition(envelope.frame, envelope.at), position: envelope.at, owner: envelope.owner })
    }
    return frames
  }
}
