/**
 * Receiver counts ("12 watching"): sockets that asked for them (`watchers: true` in subscribe) get the number of
 * sockets watching the entity across the cluster, at once and then whenever it changes, at most once per interval;
 * never the count a socket was sent last again.
 * Only a socket that may watch an entity can ask, so counts of private entities stay private.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { InterestStore } from '../interest/interest.js'
import type { Receiver } from './fanout.js'
import { encodeWatchers, type EntityRef } from '../protocol/index.js'
import { PreparedFrame } from './prepared.js'

interface Counted {
  ref: EntityRef
  /** each socket and the count it was sent last (null: none yet): a count is sent to a socket only when it differs */
  sockets: Map<Receiver, number | null>
}

export class WatcherCounts {
  private readonly counted = new Map<string, Counted>()
  private timer: NodeJS.Timeout | null = null
  private polling = false

  constructor (private readonly interest: InterestStore, private readonly intervalMs: number, private readonly log: FastifyBaseLogger) {}

  /** Counts `socket` in, and sends it the count now (or, when the store does not answer, at the next poll). */
  add (socket: Receiver, channel: string, ref: EntityRef): void {
    let entry = this.counted.get(channel)
    if (entry === undefined) {
      entry = { ref: { entityType: ref.entityType, entityId: ref.entityId, tenantId: ref.tenantId }, sockets: new Map() }
      this.counted.set(channel, entry)
    }
    // asked again (a repeated subscribe): it gets the count now, as a first subscribe does
    entry.sockets.set(socket, null)
    this.start()
    this.interest.watchers(channel).then((count) => {
      const counted = this.counted.get(channel)?.sockets
      // a poll may have sent it this count meanwhile
      if (counted === undefined || !counted.has(socket) || counted.get(socket) === count) return
      counted.set(socket, count)
      socket.deliver(encodeWatchers(ref, count))
    }, (err: Error) => this.log.warn({ err: err.message }, 'changefeed: watcher counts unavailable'))
  }

  /** (socket, entity) pairs receiving counts */
  get sockets (): number {
    let n = 0
    for (const entry of this.counted.values()) n += entry.sockets.size
    return n
  }

  remove (socket: Receiver, channel: string): void {
    const entry = this.counted.get(channel)
    if (entry === undefined) return
    entry.sockets.delete(socket)
    if (entry.sockets.size === 0) this.counted.delete(channel)
    if (this.counted.size === 0) this.stop()
  }

  private start (): void {
    if (this.timer !== null) return
    this.timer = setInterval(() => { void this.poll() }, this.intervalMs)
    this.timer.unref()
  }

  private stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  private async poll (): Promise<void> {
    if (this.polling) return
    this.polling = true
    try {
      for (const [channel, entry] of this.counted) {
        const count = await this.interest.watchers(channel)
        let frame: string | null = null
        let shared: PreparedFrame | null = null
        for (const [socket, sent] of entry.sockets) {
          if (sent === count) continue
          frame ??= encodeWatchers(entry.ref, count)
          shared ??= new PreparedFrame(frame)
          entry.sockets.set(socket, count)
          socket.deliver(frame, undefined, shared)
        }
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'changefeed: watcher counts unavailable')
    } finally {
      this.polling = false
    }
  }

  close (): void {
    this.stop()
    this.counted.clear()
  }
}
