/**
 * Deliver: this instance subscribes on the bus only to channels its own sockets watch, and writes each
 * pre-encoded frame to every local watcher. Gaps (a listener reconnect, a bus outage) become `resync` frames.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { PubSub } from '../bus/index.js'
import type { EntityRegistry } from '../entities.js'
import { channelOf } from '../router.js'
import { LocalSubscriptionStore } from '../store/local.js'
import type { InterestStore } from '../store/interest.js'
import { unwrap } from '../bus/envelope.js'
import { propagation, ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api'
import type { Telemetry } from '../telemetry.js'
import { encodeResync } from './protocol.js'

/** What a watcher knows of a notification besides its frame. */
export interface FrameMeta {
  channel: string
  /** the change's position ('<epoch>:<n>' in outbox mode), or null */
  position: string | null
  payloadType: string
}

/** Anything that receives frames: one per socket. */
export interface Watcher {
  /**
   * `meta` comes with notifications (not with resync and other frames). False when the frame was not written
   * (the socket is closing, or was just closed as a slow consumer).
   */
  deliver(frame: string, meta?: FrameMeta): boolean
}

/** Counts read by telemetry. */
export interface FanoutCounters {
  sentByPayload: Record<string, number>
  failedByPayload: Record<string, number>
  createdByType: Record<string, number>
  removedByType: Record<string, number>
  busErrors: number
}

export class Fanout {
  readonly store = new LocalSubscriptionStore<Watcher>()
  readonly counters: FanoutCounters = { sentByPayload: {}, failedByPayload: {}, createdByType: {}, removedByType: {}, busErrors: 0 }
  telemetry: Telemetry | null = null
  /** every instance listens here for gaps announced by whichever instance captures a database */
  readonly gapChannel: string
  private bus: PubSub | null = null
  private interest: InterestStore | null = null

  constructor (private readonly prefix: string, private readonly registry: EntityRegistry, private readonly log: FastifyBaseLogger) {
    this.gapChannel = prefix + ':$gap'
  }

  async attach (bus: PubSub, interest: InterestStore): Promise<void> {
    this.bus = bus
    this.interest = interest
    await bus.subscribe(this.gapChannel)
  }

  channel (entityType: string, entityId: string): string {
    return channelOf(this.prefix, entityType, entityId)
  }

  /**
   * Starts delivering an entity's changes to `watcher`. For the first local watcher this instance subscribes on
   * the bus before it records its interest, so a publisher that sees the interest finds the subscription in place.
   */
  async watch (watcher: Watcher, entityType: string, entityId: string): Promise<void> {
    const channel = this.channel(entityType, entityId)
    const first = this.store.add(channel, entityType, entityId, watcher)
    try {
      if (first) await this.bus?.subscribe(channel)
      await this.interest?.update(channel, entityType, this.store.get(channel)?.watchers.size ?? 0)
    } catch (err) {
      this.counters.busErrors++
      if (this.store.remove(channel, watcher)) await this.bus?.unsubscribe(channel).catch(() => {})
      throw err
    }
    this.counters.createdByType[entityType] = (this.counters.createdByType[entityType] ?? 0) + 1
  }

  async unwatch (watcher: Watcher, entityType: string, entityId: string): Promise<void> {
    const channel = this.channel(entityType, entityId)
    const had = this.store.get(channel)?.watchers.has(watcher) === true
    const last = this.store.remove(channel, watcher)
    if (!had) return
    this.counters.removedByType[entityType] = (this.counters.removedByType[entityType] ?? 0) + 1
    try {
      await this.interest?.update(channel, entityType, this.store.get(channel)?.watchers.size ?? 0)
      if (last) await this.bus?.unsubscribe(channel)
    } catch (err) {
      this.counters.busErrors++
      throw err
    }
  }

  /** The bus's message handler: the hot path. */
  readonly onBusMessage = (channel: string, message: string): void => {
    const entry = this.store.get(channel)
    if (entry === undefined) {
      if (channel === this.gapChannel) this.onGapMessage(message)
      // else: a message can arrive after the last local watcher left and before the bus unsubscribe took: drop it
      return
    }
    const envelope = unwrap(message)
    if (envelope === null) return
    const span = envelope.traceparent === null ? null : this.deliverySpan(envelope.traceparent, entry.watchers.size)
    const meta: FrameMeta = { channel, position: envelope.position, payloadType: envelope.payloadType }
    let sent = 0
    for (const watcher of entry.watchers) if (watcher.deliver(envelope.frame, meta)) sent++
    const { sentByPayload, failedByPayload } = this.counters
    sentByPayload[envelope.payloadType] = (sentByPayload[envelope.payloadType] ?? 0) + sent
    if (sent < entry.watchers.size) failedByPayload[envelope.payloadType] = (failedByPayload[envelope.payloadType] ?? 0) + entry.watchers.size - sent
    this.telemetry?.recordDelivery(envelope.ts, envelope.payloadType)
    span?.end()
  }

  /** A span for this instance's delivery, linked to the span of the instance that published the change. */
  private deliverySpan (traceparent: string, watchers: number): ReturnType<ReturnType<typeof trace.getTracer>['startSpan']> | null {
    const tracer = this.telemetry?.tracer
    if (tracer === undefined) return null
    const remote = trace.getSpanContext(propagation.extract(ROOT_CONTEXT, { traceparent }))
    return tracer.startSpan('changefeed deliver', {
      kind: SpanKind.CONSUMER,
      links: remote === undefined ? [] : [{ context: remote }],
      attributes: { 'changefeed.watchers': watchers }
    })
  }

  /** Tells every instance that changes of `database` may have been lost. */
  async announceGap (database: string, reason: string): Promise<void> {
    this.log.warn({ database, reason }, 'changefeed: change gap, watchers told to resync')
    await this.bus?.publish(this.gapChannel, JSON.stringify({ database, reason }))
  }

  private onGapMessage (message: string): void {
    try {
      const { database, reason } = JSON.parse(message) as { database: string, reason: string }
      this.resyncLocal(reason, (db) => db === database)
    } catch {
      this.log.warn('changefeed: ignored a malformed gap message')
    }
  }

  /** Sends `resync` to the local watchers of the entities whose database passes `include` (default: all). */
  resyncLocal (reason: string, include: (database: string) => boolean = () => true): void {
    for (const entry of this.store.values()) {
      if (!include(this.registry.get(entry.entityType)?.database ?? '')) continue
      const frame = encodeResync(reason, entry.entityType, entry.entityId)
      for (const watcher of entry.watchers) watcher.deliver(frame)
    }
  }
}
