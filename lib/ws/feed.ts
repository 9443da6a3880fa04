/**
 * Delivery of a type-wide subscription (entityId "*", an activity feed) to one socket: frame by frame while the
 * feed is calm; past `feedMessagesPerSecond` the frames of each `feedBatchIntervalMs` go out as one
 * `{"type":"batch","data":[…]}` frame, so a busy type cannot flood a browser with messages. A batch is written
 * early once it reaches MAX_BATCH frames or `maxBatchBytes`, so no one frame outgrows the socket's buffer limit.
 */
import type { Watcher } from './fanout.js'
import { TokenBucket } from './limits.js'
import { encodeBatch } from '../protocol/index.js'

const MAX_BATCH = 500

export class FeedWatcher implements Watcher {
  private readonly bucket: TokenBucket
  private batch: string[] | null = null
  private batchBytes = 0
  private timer: NodeJS.Timeout | null = null

  constructor (private readonly socket: Watcher, ratePerSecond: number, private readonly intervalMs: number, private readonly maxBatchBytes: number) {
    this.bucket = new TokenBucket(ratePerSecond, ratePerSecond)
  }

  deliver (frame: string): boolean {
    if (this.batch !== null) {
      this.batch.push(frame)
      this.batchBytes += frame.length + 1
      if (this.batch.length >= MAX_BATCH || this.batchBytes >= this.maxBatchBytes) return this.flush()
      return true
    }
    if (this.bucket.take()) return this.socket.deliver(frame)
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
