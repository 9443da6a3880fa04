/**
 * What one socket watches: its subscriptions, by the key each is held by (its channel; a filtered feed's key names
 * its filter too), and what every kind of request does with them: open one (the limit, access, the bus), defer its
 * live notifications while a replay or a snapshot is read, read states, and end one (unsubscribe, a token refresh
 * that no longer allows it, an owner change, the socket closing). The requests themselves are answered in
 * subscribe-entity.ts, subscribe-many.ts, subscribe-where.ts and unsubscribe.ts.
 */
import type { EntityRegistry, EntityType } from '../entities.js'
import type { AccessPolicy, Denial } from '../auth/policy.js'
import type { Principal } from '../auth/principal.js'
import type { ResolvedOptions } from '../options.js'
import type { FastifyBaseLogger } from 'fastify'
import { FEED } from '../route/channels.js'
import type { Fanout, FrameMeta, Receiver } from './fanout.js'
import { FeedBatcher } from './feed.js'
import { DeferredFrames, type Carried } from './deferred.js'
import type { Filters } from './filters.js'
import type { SnapshotResult } from '../reads/snapshot.js'
import type { ReplayedFrames } from '../reads/replay.js'
import type { WatcherCounts } from './watchers.js'
import type { Refusal } from './target.js'
import type { Presence } from '../presence/presence.js'
import { WireError, encodeSubscriptionError, subscriptionIdOf, type EntityRef } from '../protocol/index.js'

/** A socket's subscription to one channel: an entity (of one tenant, or of every tenant), or a feed. */
export interface Subscription extends EntityRef {
  /** the tenant whose entity it watches; null: every tenant's, or an untenanted type */
  tenantId: string | null
  /** what receives the frames: the socket, or a FeedBatcher in front of it for a type-wide subscription */
  receiver: Receiver
  /** the socket asked for receiver counts */
  counted: boolean
  /** the socket watches the entity's presence (or joined it) */
  presence?: true
  /**
   * `delta` types only (absent for the others): the position of the last frame of the entity written to the socket,
   * the base a patch must have to be sent; null when none can be proven (nothing sent yet, or since the last
   * subscribe: a client that asks again may have lost its document)
   */
  base?: string | null
  /** a filtered feed: its type's feed channel and its subscriptionId (it is held by another key than a channel) */
  filter?: { feedChannel: string, subscriptionId: string }
}

export interface SubscriptionServices {
  registry: EntityRegistry
  policy: AccessPolicy
  fanout: Fanout
  watcherCounts: WatcherCounts
  presence: Presence
  log: FastifyBaseLogger
  counters: { replayed: number, resumes: Record<string, number> }
  filters: Filters
  /** Runs a database read for `ip` within limits.replaysPerIpPerSecond; null when refused. */
  limitRead<T>(ip: string, read: () => Promise<T>): Promise<T | null>
  /** The entities' states now (lib/reads/snapshot.ts); null when refused (limits.replaysPerIpPerSecond). */
  snapshot(entity: EntityType, tenantId: string | null, entityIds: string[], ip: string): Promise<SnapshotResult | null>
  /** Outbox mode: an entity's notifications after `since`, oldest first; null when they cannot all be given. */
  replay(entity: EntityType, entityId: string, tenantId: string | null, since: string, ip: string): Promise<ReplayedFrames | null>
  /** Notify mode: the channel's position now, where a subscription that starts now resumes from (lib/reads/replay.ts) */
  head?(entity: EntityType, entityId: string, tenantId: string | null): Promise<string | null>
}

/** The socket, as its subscriptions see it. */
export interface Subscriber extends Receiver {
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

/** The key a filtered feed's subscription is held by: never a channel (channels hold no NUL). */
export const filterKey = (feedChannel: string, subscriptionId: string): string => feedChannel + '\u0000' + subscriptionId

export class Subscriptions {
  /** by key: two requests that name one channel differently (the tenant implied, or named) are one subscription */
  private readonly byKey = new Map<string, Subscription>()
  private deferred: DeferredFrames | undefined
  /** owner-scoped channels whose document named another owner: dropped here until their subscription has ended */
  private revoked: Set<string> | undefined
  /** subscriptions being opened (a batch opens its entities at once): they count towards the limit */
  private opening = 0

  constructor (
    readonly socket: Subscriber,
    readonly services: SubscriptionServices,
    readonly limits: ResolvedOptions['limits']
  ) {}

  get size (): number {
    return this.byKey.size
  }

  /** The subscription held by `key`, if any. */
  get (key: string): Subscription | undefined {
    return this.byKey.get(key)
  }

  /** Whether `subscription` is still this open socket's (a close or an unsubscribe may have come during an await). */
  isCurrent (key: string, subscription: Subscription): boolean {
    return this.socket.isOpen && this.byKey.get(key) === subscription
  }

  /** Whether the limit of subscriptions per connection leaves room for one more. */
  get full (): boolean {
    return this.byKey.size + this.opening >= this.limits.maxSubscriptionsPerConnection
  }

  get tooMany (): Refusal {
    return { code: WireError.tooManySubscriptions, reason: `at most ${this.limits.maxSubscriptionsPerConnection} subscriptions per connection` }
  }

  /**
   * Whether a notification stops here rather than going to the socket: its owner-scoped document names someone
   * else now (the subscription ends), or its subscription is resuming (it waits for the replay).
   */
  intercept (frame: string, meta: FrameMeta): boolean {
    if (meta.owner !== undefined && (this.revoked?.has(meta.channel) === true || this.foreign(meta.owner))) {
      this.revoke(meta.channel)
      return true
    }
    return this.deferred?.intercept(frame, meta) === true
  }

  /**
   * Whether a frame's owner-scoped document (`owner`: the owner it names, lib/route/notices.ts; undefined: nothing to
   * check) is someone else's: it must not reach this socket, unless its user is an admin. Every frame a socket is
   * sent passes here: live, replayed, and the states of snapshots.
   */
  foreign (owner: string | null | undefined): boolean {
    const { principal } = this.socket
    return owner !== undefined && owner !== principal.userId && !this.services.policy.isAdmin(principal)
  }

  /**
   * A `delta` type's change is being written: returns the position of the frame of the entity written before (null:
   * none proven), and records this one's. A channel of every tenant carries several tenants' entities: nothing is
   * proven there, and a feed's frames are always full (its receiver gets no meta).
   */
  advance (meta: FrameMeta): string | null {
    const subscription = this.byKey.get(meta.channel)
    if (subscription?.base === undefined || subscription.tenantId !== meta.tenantId) return null
    const before = subscription.base
    subscription.base = meta.position
    return before
  }

  /** From now on, live notifications of `channel` wait until released (its replay or snapshot is being read). */
  defer (channel: string): void {
    this.deferred ??= new DeferredFrames()
    this.deferred.defer(channel)
  }

  /** Delivers a channel's notifications held while its reply was made, without those the reply carried. */
  releaseDeferred (channel: string, carried: Carried | null): void {
    const receiver = this.byKey.get(channel)?.receiver ?? this.socket
    for (const { frame, meta } of this.deferred?.release(channel, carried) ?? []) receiver.deliver(frame, meta)
  }

  /** A subscription held by a key of its own (a filtered feed's): the request opens it. */
  keep (key: string, subscription: Subscription): void {
    this.byKey.set(key, subscription)
  }

  /** Takes back a subscription kept with `keep` that never started (the key still holds it); closes its receiver. */
  forgo (key: string, subscription: Subscription): void {
    if (this.byKey.get(key) === subscription) this.byKey.delete(key)
    if (subscription.receiver instanceof FeedBatcher) subscription.receiver.close()
  }

  /** The one way a subscription ends. */
  async end (key: string): Promise<void> {
    const subscription = this.byKey.get(key)
    if (subscription === undefined) return
    this.byKey.delete(key)
    const { entityType, receiver, counted } = subscription
    if (receiver instanceof FeedBatcher) receiver.close()
    this.deferred?.forget(key)
    if (counted) this.services.watcherCounts.remove(this.socket, key)
    if (subscription.presence === true) this.services.presence.leave(this.socket, key)
    if (subscription.filter !== undefined) await this.services.filters.leave(receiver, subscription.filter.feedChannel, subscription.filter.subscriptionId, entityType)
    else await this.services.fanout.unwatch(receiver, key, entityType)
  }

  /** The socket closed: every subscription ends. */
  endAll (): void {
    this.deferred?.clear()
    for (const key of [...this.byKey.keys()]) {
      this.end(key).catch((err: Error) => this.services.log.warn({ err: err.message }, 'changefeed: bus unsubscribe failed'))
    }
  }

  /** The document of an owner-scoped subscription now names another owner: it ends, and the client hears why. */
  private revoke (channel: string): void {
    const subscription = this.byKey.get(channel)
    if (subscription === undefined || this.revoked?.has(channel) === true) return
    ;(this.revoked ??= new Set()).add(channel)
    this.services.log.info({ connection: this.socket.id, entityType: subscription.entityType }, 'changefeed: the owner changed; subscription ended')
    this.socket.inOrder(async () => {
      try {
        if (!this.isCurrent(channel, subscription)) return
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
    for (const [key, subscription] of [...this.byKey]) {
      const entity = registry.get(subscription.entityType)
      if (entity === undefined) continue
      const scope = policy.scope(entity, subscription.tenantId ?? undefined, principal)
      const denial = 'code' in scope ? scope : await policy.check(entity, subscription.entityId, subscription.tenantId, principal)
      if (denial === null || !this.isCurrent(key, subscription)) continue
      await this.end(key)
      this.socket.send(encodeSubscriptionError(undefined, subscription, denial.code, denial.reason))
    }
  }

  /**
   * Starts the socket's subscription to one entity (or feed): the limit, access, then the bus. `defer`: its live
   * notifications wait (a replay or a snapshot comes first). `subscriptionId`: a feed's, which its notifications
   * name (as the subscribe that starts it named it). Resolves null when the socket closed meanwhile. Rejects when
   * the bus or the interest store failed (nothing is left behind).
   */
  async open (entity: EntityType, entityId: string, tenantId: string | null, { defer, subscriptionId }: { defer: boolean, subscriptionId?: string }): Promise<Subscription | Refusal | null> {
    const { policy, fanout } = this.services
    const channel = fanout.channel(entity.name, entityId, tenantId)
    // places being opened count: a batch opens its entities at once
    if (this.full) return this.tooMany
    this.opening++
    let denial: Denial | null
    try {
      denial = await policy.check(entity, entityId, tenantId, this.socket.principal)
    } finally {
      this.opening--
    }
    if (!this.socket.isOpen) return null
    if (denial !== null) return denial
    // (a subscribe of the same channel cannot have come meanwhile: this socket's requests run one at a time)
    const receiver = entityId === FEED ? this.feedWatcher(subscriptionId ?? subscriptionIdOf(entity.name, FEED)) : this.socket
    const subscription: Subscription = { entityType: entity.name, entityId, tenantId, receiver, counted: false }
    // only delta types pay for tracking what each socket holds
    if (entity.payload === 'delta' && receiver === this.socket) subscription.base = null
    this.byKey.set(channel, subscription)
    // resuming, or starting from a snapshot: what arrives live from now on waits until the reply is written
    if (defer) this.defer(channel)
    try {
      await fanout.watch(receiver, channel, entity.name, entityId, tenantId)
    } catch (err) {
      this.deferred?.forget(channel)
      this.forgo(channel, subscription)
      throw err
    }
    // closed meanwhile: the close ended the subscription (and unwatched) already
    return this.isCurrent(channel, subscription) ? subscription : null
  }

  /**
   * A feed's receiver: its batch frame is written before it grows past a quarter of the buffer, so it never overflows
   * the socket. `subscriptionId`: what its notifications name (null: a filtered feed's, named by their filter).
   */
  feedWatcher (subscriptionId: string | null): FeedBatcher {
    return new FeedBatcher(this.socket, subscriptionId, this.limits.feedMessagesPerSecond, this.limits.feedBatchIntervalMs, Math.max(1024, Math.floor(this.limits.maxBufferedBytes / 4)),
      // a filtered feed is never resumed; the type's own feed on this socket may be
      (frame, meta) => subscriptionId !== null && this.deferred?.intercept(frame, meta) === true)
  }
}
