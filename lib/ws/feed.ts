/**
 * Delivery of a type-wide subscription (entityId "*", an activity feed) to one socket: frame by frame while the
 * feed is calm; past `feedMessagesPerSecond` the frames of each `feedBatchIntervalMs` go out as one
 * `{"type":"batch","data":[…]}` frame, so a busy type cannot flood a browser with messages. A batch is written
 * early once it reaches MAX_BATCH frames or `maxBatchBytes`, so no one frame outgrows the socket's buffer limit.
 *
 * A feed's notifications name its subscriptionId: a socket that also watches the entity gets the change on both
 * subscriptions, each frame saying which it is for.
 */
import type { FeedFrame, FrameMeta, Receiver } from './fanout.js'
import { TokenBucket } from './limits.js'
import { encodeBatch, withSubscriptionId } from '../protocol/index.js'
import { PreparedFrame } from './prepared.js'

const MAX_BATCH = 500

export class FeedBatcher implements Receiver {
  private readonly bucket: TokenBucket
  private batch: string[] | null = null
  private batchBytes = 0
  private timer: NodeJS.Timeout | null = null

  /**
   * `subscriptionId`: the feed's, which its notifications name; null for a filtered feed, whose frames come named
   * by its filter.
   */
  /** `held`: whether a notification waits (the feed is resuming) or was replayed already (lib/ws/deferred.ts) */
  constructor (private readonly socket: Receiver, private readonly subscriptionId: string | null, ratePerSecond: number, private readonly intervalMs: number, private readonly maxBatchBytes: number,
    private readonly held: (frame: string, meta: FrameMeta) => boolean = () => false) {
    this.bucket = new TokenBucket(ratePerSecond, ratePerSecond)
  }

  deliver (frame: string, meta?: FrameMeta, shared?: PreparedFrame): boolean {
    if (meta !== undefined && this.held(frame, meta)) return true
    if (meta !== undefined && this.subscriptionId !== null) {
      const named = feedFrameOf(meta, frame, this.subscriptionId)
      frame = named.frame
      shared = named.prepared
    }
    if (this.batch !== null) {
      this.batch.push(frame)
      this.batchBytes += frame.length + 1
      if (this.batch.length >= MAX_BATCH || this.batchBytes >= this.maxBatchBytes) return this.flush()
      return true
    }
    if (this.bucket.take()) return this.socket.deliver(frame, undefined, shared)
    this.batch = [frame]
    this.batchBytes = frame.length
    this.timer = setTimeout(() => this.flush(), this.intervalMs)
    return true
  }

  private flush (): boolean {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    const frames = this.batch
    this.batch = null
    this.batchBytes = 0
    if (frames === null || frames.length === 0) return true
    return this.socket.deliver(frames.length === 1 ? frames[0] : encodeBatch(frames))
  }

  close (): void {
    if (this.timer !== null) clearTimeout(this.timer)
    this.batch = null
  }
}

/**
 * The change's frame named for feed `subscriptionId`, made once per change: a feed's sockets nearly all name it
 * alike (`<Type>:*`); one that named its tenant (`<Type>@<tenant>:*`) gets a frame of its own.
 */
function feedFrameOf (meta: FrameMeta, change: string, subscriptionId: string): FeedFrame {
  if (meta.feed?.subscriptionId === subscriptionId) return meta.feed
  const frame = withSubscriptionId(change, subscriptionId)
  const named: FeedFrame = { subscriptionId, frame, prepared: new PreparedFrame(frame) }
  meta.feed ??= named
  return named
}
