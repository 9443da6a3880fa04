/**
 * What one socket watches: its subscriptions by channel, how each starts (access checked, the bus told, a replay
 * on `since`) and ends (unsubscribe, a token refresh that no longer allows it, an owner change, the socket closing).
 */
import type { EntityRegistry, EntityType } from '../entities.js'
import type { AccessPolicy } from '../auth/policy.js'
import type { Principal } from '../auth/principal.js'
import type { ResolvedOptions } from '../options.js'
import type { FastifyBaseLogger } from 'fastify'
import { WireError } from '../errors.js'
import { FEED } from '../channels.js'
import type { Fanout, FrameMeta, Watcher } from './fanout.js'
import { FeedWatcher } from './feed.js'
import { ResumeBuffer } from './resume.js'
import type { WatcherCounts } from './watchers.js'
import type { Reply } from './requests.js'
import {
  encodeError, encodeSubscribed, encodeSubscriptionError, encodeUnsubscribed, parseSubscriptionId, subscriptionIdOf,
  type EntityRef, type SubscribeOneRequest, type SubscribeRequest, type UnsubscribeRequest
} from '../protocol/index.js'

/** A socket's subscription to one channel: an entity (of one tenant, or of every tenant), or a feed. */
export interface Subscription extends EntityRef {
  /** the tenant whose entity it watches; null: every tenant's, or an untenanted type */
  tenantId: string | null
  /** what receives the frames: the socket, or a FeedWatcher in front of it for a type-wide subscription */
  watcher: Watcher
  /** the socket asked for watcher counts */
  counted: boolean
  /**
   * `delta` types only (absent for the others): the position of the last frame of the entity written to the socket,
   * the base a patch must have to be sent; null when none can be proven (nothing sent yet, or since the last
   * subscribe: a client that asks again may have lost its document)
   */
  sent?: string | null
}

export type ReplayedFrames = Array<{ frame: string, position: string }>

export interface SubscriptionServices {
  registry: EntityRegistry
  policy: AccessPolicy
  fanout: Fanout
  watcherCounts: WatcherCounts
  log: FastifyBaseLogger
  counters: { replayed: number }
  /** Outbox mode: an entity's notifications after `since`, oldest first; null when they cannot all be given. */
  replay(entity: EntityType, entityId: string, tenantId: string | null, since: string, ip: string): Promise<ReplayedFrames | null>
}

/** The socket, as its subscriptions see it. */
export interface Subscriber extends Watcher {
  readonly id: number
  readonly ip: string
  readonly principal: Principal
  readonly isOpen: boolean
  /** replies and other frames that are never conflated, in order with the notifications */
  send(frame: string): void
  /** writes replayed frames, dropping a live notification of `channel` held for a slow reader (the replay has it) */
  writeReplay(channel: string, frames: ReplayedFrames): void
  /** runs `task` after the socket's requests before it */
  inOrder(task: () => Promise<void>): void
}

export class Subscriptions {
  /** by channel: two requests that name one channel differently (the tenant implied, or named) are one subscription */
  private readonly byChannel = new Map<string, Subscription>()
  private resumeBuffer: ResumeBuffer | undefined
  /** owner-scoped channels whose document named another owner: dropped here until their subscription has ended */
  private revoked: Set<string> | undefined

  constructor (
    private readonly socket: Subscriber,
    private readonly services: SubscriptionServices,
    private readonly limits: ResolvedOptions['limits']
  ) {}

  get size (): number {
    return this.byChannel.size
  }

  /**
   * Whether a notification stops here rather than going to the socket: its owner-scoped document names someone
   * else now (the subscription ends), or its subscription is resuming (it waits for the replay).
   */
  intercept (frame: string, meta: FrameMeta): boolean {
    const { principal } = this.socket
    if (meta.owner !== undefined && (this.revoked?.has(meta.channel) === true ||
        (meta.owner !== principal.userId && !this.services.policy.isAdmin(principal)))) {
      this.revoke(meta.channel)
      return true
    }
    return this.resumeBuffer?.intercept(frame, meta) === true
  }

  /**
   * A `delta` type's change is being written: returns the position of the frame of the entity written before (null:
   * none proven), and records this one's. A channel of every tenant carries several tenants' entities: nothing is
   * proven there, and a feed's frames are always full (its watcher gets no meta).
   */
  advance (meta: FrameMeta): string | null {
    const subscription = this.byChannel.get(meta.channel)
    if (subscription?.sent === undefined || subscription.tenantId !== meta.tenantId) return null
    const before = subscription.sent
    subscription.sent = meta.position
    return before
  }

  /** Whether `subscription` is still this open socket's (a close or an unsubscribe may have come during an await). */
  private holds (channel: string, subscription: Subscription): boolean {
    return this.socket.isOpen && this.byChannel.get(channel) === subscription
  }

  private resumes (): ResumeBuffer {
    this.resumeBuffer ??= new ResumeBuffer()
    return this.resumeBuffer
  }

  /** The one way a subscription ends. */
  private async end (channel: string): Promise<void> {
    const subscription = this.byChannel.get(channel)
    if (subscription === undefined) return
    this.byChannel.delete(channel)
    const { entityType, watcher, counted } = subscription
    if (watcher instanceof FeedWatcher) watcher.close()
    this.resumeBuffer?.forget(channel)
    if (counted) this.services.watcherCounts.remove(this.socket, channel)
    await this.services.fanout.unwatch(watcher, channel, entityType)
  }

  /** The socket closed: every subscription ends. */
  endAll (): void {
    this.resumeBuffer?.clear()
    for (const channel of [...this.byChannel.keys()]) {
      this.end(channel).catch((err: Error) => this.services.log.warn({ err: err.message }, 'changefeed: bus unsubscribe failed'))
    }
  }

  /** The document of an owner-scoped subscription now names another owner: it ends, and the client hears why. */
  private revoke (channel: string): void {
    const subscription = this.byChannel.get(channel)
    if (subscription === undefined || this.revoked?.has(channel) === true) return
    ;(this.revoked ??= new Set()).add(channel)
    this.services.log.info({ connection: this.socket.id, entityType: subscription.entityType }, 'changefeed: the owner changed; subscription ended')
    this.socket.inOrder(async () => {
      try {
        if (!this.holds(channel, subscription)) return
        await this.end(channel)
        this.socket.send(encodeSubscriptionError(undefined, subscription, WireError.forbidden, 'the entity now belongs to someone else'))
      } finally {
        this.revoked?.delete(channel)
      }
    })
  }

  /** After a token refresh: subscriptions the new principal may not hold end with a `subscription_error`. */
  async recheck (principal: Principal): Promise<void> {
    const { registry, policy } = this.services
    for (const [channel, subscription] of [...this.byChannel]) {
      const entity = registry.get(subscription.entityType)
      if (entity === undefined) continue
      const scope = policy.scope(entity, subscription.tenantId ?? undefined, principal)
      const denial = 'code' in scope ? scope : await policy.check(entity, subscription.entityId, subscription.tenantId, principal)
      if (denial === null || !this.holds(channel, subscription)) continue
      await this.end(channel)
      this.socket.send(encodeSubscriptionError(undefined, subscription, denial.code, denial.reason))
    }
  }

  async subscribe (reply: Reply, req: SubscribeRequest): Promise<void> {
    if ('entityIds' in req || req.where !== undefined || req.snapshot === true) {
      return reply.send(encodeError(reply.id, WireError.badRequest, 'not supported yet'))
    }
    const { registry, policy, fanout, log } = this.services
    const entity = registry.get(req.entityType)
    if (entity === undefined || (entity.access === null && !entity.declared)) {
      return reply.send(encodeSubscriptionError(reply.id, req, WireError.unknownEntityType, `unknown entity type "${req.entityType}"`))
    }
    const scope = policy.scope(entity, req.tenantId, this.socket.principal)
    const ref: EntityRef = { entityType: entity.name, entityId: req.entityId, tenantId: 'code' in scope ? req.tenantId : scope.tenantId }
    if ('code' in scope) return reply.send(encodeSubscriptionError(reply.id, ref, scope.code, scope.reason))
    const { tenantId } = scope
    const channel = fanout.channel(entity.name, req.entityId, tenantId)
    // the reply names the subscription as the request did (the draft client computes `<type>:<id>` itself)
    const subscriptionId = subscriptionIdOf(entity.name, req.entityId, req.tenantId)
    const existing = this.byChannel.get(channel)
    if (existing !== undefined) return await this.confirm(reply, subscriptionId, entity, channel, existing, req)
    if (this.byChannel.size >= this.limits.maxSubscriptionsPerConnection) {
      return reply.send(encodeSubscriptionError(reply.id, ref, WireError.tooManySubscriptions,
        `at most ${this.limits.maxSubscriptionsPerConnection} subscriptions per connection`))
    }
    const denial = await policy.check(entity, req.entityId, tenantId, this.socket.principal)
    if (!this.socket.isOpen) return
    if (denial !== null) return reply.send(encodeSubscriptionError(reply.id, ref, denial.code, denial.reason))
    // (a subscribe of the same channel cannot have come meanwhile: this socket's requests run one at a time)
    const watcher = req.entityId === FEED
      // a feed's batch frame is written before it grows past a quarter of the buffer: it must never overflow the socket
      ? new FeedWatcher(this.socket, this.limits.feedMessagesPerSecond, this.limits.feedBatchIntervalMs, Math.max(1024, Math.floor(this.limits.maxBufferedBytes / 4)))
      : this.socket
    const subscription: Subscription = { entityType: entity.name, entityId: req.entityId, tenantId, watcher, counted: false }
    // only delta types pay for tracking what each socket holds
    if (entity.payload === 'delta' && watcher === this.socket) subscription.sent = null
    this.byChannel.set(channel, subscription)
    // resuming: what arrives live from now on waits until the replay is written
    if (req.since !== undefined) this.resumes().hold(channel)
    try {
      await fanout.watch(watcher, channel, entity.name, req.entityId, tenantId)
    } catch (err) {
      this.resumeBuffer?.forget(channel)
      if (this.byChannel.get(channel) === subscription) this.byChannel.delete(channel)
      if (watcher instanceof FeedWatcher) watcher.close()
      log.error({ err }, 'changefeed: bus subscribe failed')
      return reply.fail()
    }
    // closed meanwhile: the close ended the subscription (and unwatched) already
    if (this.holds(channel, subscription)) await this.confirm(reply, subscriptionId, entity, channel, subscription, req)
  }

  /** The `subscribed` reply (after a replay, on `since`), then watcher counts when asked for. */
  private async confirm (reply: Reply, subscriptionId: string, entity: EntityType, channel: string, subscription: Subscription, req: SubscribeOneRequest): Promise<void> {
    // a client subscribing again may have lost its document (a patch that did not apply): the next frame is full
    if (subscription.sent !== undefined) subscription.sent = null
    if (req.since !== undefined) await this.resume(reply, subscriptionId, entity, channel, subscription, req.since)
    else reply.send(encodeSubscribed(reply.id, subscriptionId, subscription))
    if (req.watchers === true && !subscription.counted && this.holds(channel, subscription)) {
      subscription.counted = true
      this.services.watcherCounts.add(this.socket, channel, subscription)
    }
  }

  /**
   * Answers a subscribe with `since`: `subscribed` with `recovered: true` and the missed notifications, oldest
   * first, or `recovered: false` (the client refetches). Live notifications that arrived meanwhile follow, without
   * those the replay already carried.
   */
  private async resume (reply: Reply, subscriptionId: string, entity: EntityType, channel: string, subscription: Subscription, since: string): Promise<void> {
    this.resumes().hold(channel)
    let frames: ReplayedFrames | null = null
    try {
      frames = await this.services.replay(entity, subscription.entityId, subscription.tenantId, since, this.socket.ip)
    } catch (err) {
      this.services.log.warn({ connection: this.socket.id, err: (err as Error).message }, 'changefeed: replay failed; the client refetches')
    }
    if (!this.socket.isOpen) return
    reply.send(encodeSubscribed(reply.id, subscriptionId, subscription, { recovered: frames !== null }))
    if (frames !== null) this.socket.writeReplay(channel, frames)
    this.services.counters.replayed += frames?.length ?? 0
    const waiting = this.resumes().release(channel, frames === null ? null : frames.at(-1)?.position ?? since)
    for (const { frame, meta } of waiting) this.socket.deliver(frame, meta)
  }

  async unsubscribe (reply: Reply, req: UnsubscribeRequest): Promise<void> {
    const { registry, policy, fanout } = this.services
    if ('entityIds' in req) return reply.send(encodeError(reply.id, WireError.badRequest, 'not supported yet'))
    const target = 'subscriptionId' in req ? parseSubscriptionId(req.subscriptionId) : req
    const entity = target === null ? undefined : registry.get(target.entityType)
    const scope = target === null || entity === undefined ? null : policy.scope(entity, target.tenantId, this.socket.principal)
    // unsubscribing from something not watched is not an error: reference-counting clients may do it twice
    if (target !== null && entity !== undefined && scope !== null && !('code' in scope)) {
      await this.end(fanout.channel(entity.name, target.entityId, scope.tenantId))
    }
    const subscriptionId = 'subscriptionId' in req ? req.subscriptionId : subscriptionIdOf(entity?.name ?? req.entityType, req.entityId, req.tenantId)
    reply.send(encodeUnsubscribed(reply.id, subscriptionId))
  }
}
