/**
 * What one socket watches: its subscriptions by channel, how each starts (access checked, the bus told, a replay
 * on `since`, the state on `snapshot`; many entities in one request, or a filtered feed) and ends (unsubscribe, a
 * token refresh that no longer allows it, an owner change, the socket closing).
 */
import { carriesDocument, type EntityRegistry, type EntityType } from '../entities.js'
import type { AccessPolicy, Denial } from '../auth/policy.js'
import type { Principal } from '../auth/principal.js'
import type { ResolvedOptions } from '../options.js'
import type { FastifyBaseLogger } from 'fastify'
import { WireError } from '../errors.js'
import { FEED } from '../channels.js'
import type { Fanout, FrameMeta, Watcher } from './fanout.js'
import { FeedWatcher } from './feed.js'
import { ResumeBuffer, replayedUpTo, type Carried } from './resume.js'
import { FilterLimitError, type Filters } from './filters.js'
import { ownerIn } from '../notices.js'
import { SnapshotUnavailable, type SnapshotResult } from '../snapshot.js'
import { Compile } from 'typebox/compile'
import type { WatcherCounts } from './watchers.js'
import type { Reply } from './requests.js'
import {
  WhereSchema, conditionsOf, encodeSubscribed, encodeSubscribedMany, encodeSubscriptionError, encodeUnsubscribed,
  encodeUnsubscribedMany, filterIdOf, parseFilterId, parseSubscriptionId, subscriptionIdOf, type EntityRef,
  type EntitySnapshotData, type SubscribeManyRequest, type SubscribeOneRequest, type SubscribeRequest,
  type UnsubscribeRequest, type Where, type WireErrorCode
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
  /** a filtered feed: its type's feed channel and its subscriptionId (it is held by another key than a channel) */
  filter?: { feedChannel: string, subscriptionId: string }
}

export type ReplayedFrames = Array<{ frame: string, position: string }>

export interface SubscriptionServices {
  registry: EntityRegistry
  policy: AccessPolicy
  fanout: Fanout
  watcherCounts: WatcherCounts
  log: FastifyBaseLogger
  counters: { replayed: number }
  filters: Filters
  /** Runs a database read for `ip` within limits.replaysPerIpPerSecond; null when refused. */
  limitRead<T>(ip: string, read: () => Promise<T>): Promise<T | null>
  /** The entities' states now (lib/snapshot.ts); null when refused (limits.replaysPerIpPerSecond). */
  snapshot(entity: EntityType, tenantId: string | null, entityIds: string[], ip: string): Promise<SnapshotResult | null>
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
  /** subscriptions being opened (a batch opens its entities at once): they count towards the limit */
  private opening = 0

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
    if (subscription.filter !== undefined) await this.services.filters.leave(watcher, subscription.filter.feedChannel, subscription.filter.subscriptionId, entityType)
    else await this.services.fanout.unwatch(watcher, channel, entityType)
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
    if ('entityIds' in req) return await this.subscribeMany(reply, req)
    if (req.where !== undefined) return await this.subscribeWhere(reply, req, req.where)
    const { registry, policy, fanout } = this.services
    const entity = registry.get(req.entityType)
    if (!subscribable(entity)) {
      return reply.send(encodeSubscriptionError(reply.id, req, WireError.unknownEntityType, `unknown entity type "${req.entityType}"`))
    }
    const scope = policy.scope(entity, req.tenantId, this.socket.principal)
    const ref: EntityRef = { entityType: entity.name, entityId: req.entityId, tenantId: 'code' in scope ? req.tenantId : scope.tenantId }
    if ('code' in scope) return reply.send(encodeSubscriptionError(reply.id, ref, scope.code, scope.reason))
    if (req.entityId === FEED && req.snapshot === true) {
      return reply.send(encodeSubscriptionError(reply.id, ref, WireError.badRequest, 'a feed has no one state: a filtered feed (where) gives the entities that match'))
    }
    // the reply names the subscription as the request did (the draft client computes `<type>:<id>` itself)
    const subscriptionId = subscriptionIdOf(entity.name, req.entityId, req.tenantId)
    const channel = fanout.channel(entity.name, req.entityId, scope.tenantId)
    const existing = this.byChannel.get(channel)
    if (existing !== undefined) return await this.confirm(reply, subscriptionId, entity, channel, existing, req)
    let opened: Opened
    try {
      opened = await this.open(entity, req.entityId, scope.tenantId, req.since !== undefined || req.snapshot === true, subscriptionId)
    } catch (err) {
      this.services.log.error({ err }, 'changefeed: bus subscribe failed')
      return reply.fail()
    }
    if (opened === null) return
    if ('code' in opened) return reply.send(encodeSubscriptionError(reply.id, ref, opened.code, opened.reason))
    await this.confirm(reply, subscriptionId, entity, channel, opened, req)
  }

  /**
   * Starts the socket's subscription to one entity (or feed): the limit, access, then the bus. `hold`: its live
   * notifications wait (a replay or a snapshot comes first). `subscriptionId`: a feed's, which its notifications
   * name (as the subscribe that starts it named it). Resolves null when the socket closed meanwhile. Rejects when
   * the bus or the interest store failed (nothing is left behind).
   */
  private async open (entity: EntityType, entityId: string, tenantId: string | null, hold: boolean, subscriptionId?: string): Promise<Opened> {
    const { policy, fanout } = this.services
    const channel = fanout.channel(entity.name, entityId, tenantId)
    // places being opened count: a batch opens its entities at once
    if (this.byChannel.size + this.opening >= this.limits.maxSubscriptionsPerConnection) {
      return { code: WireError.tooManySubscriptions, reason: `at most ${this.limits.maxSubscriptionsPerConnection} subscriptions per connection` }
    }
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
    const watcher = entityId === FEED ? this.feedWatcher(subscriptionId ?? subscriptionIdOf(entity.name, FEED)) : this.socket
    const subscription: Subscription = { entityType: entity.name, entityId, tenantId, watcher, counted: false }
    // only delta types pay for tracking what each socket holds
    if (entity.payload === 'delta' && watcher === this.socket) subscription.sent = null
    this.byChannel.set(channel, subscription)
    // resuming, or starting from a snapshot: what arrives live from now on waits until the reply is written
    if (hold) this.resumes().hold(channel)
    try {
      await fanout.watch(watcher, channel, entity.name, entityId, tenantId)
    } catch (err) {
      this.resumeBuffer?.forget(channel)
      if (this.byChannel.get(channel) === subscription) this.byChannel.delete(channel)
      if (watcher instanceof FeedWatcher) watcher.close()
      throw err
    }
    // closed meanwhile: the close ended the subscription (and unwatched) already
    return this.holds(channel, subscription) ? subscription : null
  }

  /**
   * A feed's watcher: its batch frame is written before it grows past a quarter of the buffer, so it never overflows
   * the socket. `subscriptionId`: what its notifications name (null: a filtered feed's, named by their filter).
   */
  private feedWatcher (subscriptionId: string | null): FeedWatcher {
    return new FeedWatcher(this.socket, subscriptionId, this.limits.feedMessagesPerSecond, this.limits.feedBatchIntervalMs, Math.max(1024, Math.floor(this.limits.maxBufferedBytes / 4)))
  }

  /** The `subscribed` reply (after a replay, on `since`; with the state, on `snapshot`), then watcher counts when asked for. */
  private async confirm (reply: Reply, subscriptionId: string, entity: EntityType, channel: string, subscription: Subscription, req: SubscribeOneRequest): Promise<void> {
    // a client subscribing again may have lost its document (a patch that did not apply): the next frame is full
    if (subscription.sent !== undefined) subscription.sent = null
    const recovered = req.since === undefined ? undefined : await this.resume(reply, subscriptionId, entity, channel, subscription, req.since, req.snapshot === true)
    if (recovered === true || !this.holds(channel, subscription)) {
      // answered with the replay
    } else if (req.snapshot === true) {
      const read = await this.snapshot(reply, entity, [[channel, subscription]], (code, error) => encodeSubscriptionError(reply.id, subscription, code, error))
      if (read === null) return
      const [state] = read.states
      if (state === null) return reply.send(encodeSubscriptionError(reply.id, subscription, WireError.forbidden, 'only the owner may watch this entity'))
      reply.send(encodeSubscribed(reply.id, subscriptionId, subscription, { recovered, snapshot: state }))
      this.releaseHeld(channel, read.carried)
    } else if (recovered === undefined) {
      reply.send(encodeSubscribed(reply.id, subscriptionId, subscription))
    }
    if (req.watchers === true && !subscription.counted && this.holds(channel, subscription)) {
      subscription.counted = true
      this.services.watcherCounts.add(this.socket, channel, subscription)
    }
  }

  /**
   * Answers a subscribe with `since`: `subscribed` with `recovered: true` and the missed notifications, oldest
   * first, or `recovered: false`: the client refetches. Live notifications that arrived meanwhile follow, without
   * those the replay already carried. Resolves whether it recovered; when it did not and a snapshot `follows`,
   * nothing is sent and the live notifications still wait.
   */
  private async resume (reply: Reply, subscriptionId: string, entity: EntityType, channel: string, subscription: Subscription, since: string, follows: boolean): Promise<boolean> {
    this.resumes().hold(channel)
    let frames: ReplayedFrames | null = null
    try {
      frames = await this.services.replay(entity, subscription.entityId, subscription.tenantId, since, this.socket.ip)
    } catch (err) {
      this.services.log.warn({ connection: this.socket.id, err: (err as Error).message }, 'changefeed: replay failed; the client refetches')
    }
    if (!this.socket.isOpen) return false
    if (frames === null && follows) return false
    reply.send(encodeSubscribed(reply.id, subscriptionId, subscription, { recovered: frames !== null }))
    if (frames !== null) this.socket.writeReplay(channel, frames)
    this.services.counters.replayed += frames?.length ?? 0
    this.releaseHeld(channel, frames === null ? null : replayedUpTo(frames.at(-1)?.position ?? since))
    return frames !== null
  }

  /** Delivers a channel's notifications held while its reply was made, without those the reply carried. */
  private releaseHeld (channel: string, carried: Carried | null): void {
    for (const { frame, meta } of this.resumes().release(channel, carried)) this.socket.deliver(frame, meta)
  }

  /**
   * The states of subscribed entities (their live notifications held), in order; a `delta` type's subscription
   * takes each as the base of its next patch. Null when the read was refused (`rate_limited`) or impossible
   * (`bad_request`): the subscriptions ended, and the reply `refused` made is sent. Rejects (the subscriptions
   * ended) when the database failed.
   */
  private async snapshot (reply: Reply, entity: EntityType, opened: Array<[string, Subscription]>, refused: (code: WireErrorCode, error: string) => string): Promise<{ states: Array<EntitySnapshotData | undefined | null>, carried: Carried | null } | null> {
    const [, first] = opened[0]
    for (const [channel] of opened) this.resumes().hold(channel)
    let result: SnapshotResult | null
    try {
      result = await this.services.snapshot(entity, first.tenantId, opened.map(([, s]) => s.entityId), this.socket.ip)
    } catch (err) {
      await Promise.all(opened.map(async ([channel]) => await this.end(channel)))
      if (!(err instanceof SnapshotUnavailable)) throw err
      reply.send(refused(WireError.badRequest, err.message))
      return null
    }
    if (result === null) {
      await Promise.all(opened.map(async ([channel]) => await this.end(channel)))
      reply.send(refused(WireError.rateLimited, 'too many snapshot reads; retry later'))
      return null
    }
    const { visibility } = result
    // a type only a host publishes has no state here: the reply goes without one
    if (visibility === null) return { states: opened.map(() => undefined), carried: null }
    const byId = new Map(result.entities.map((e) => [e.entityId, e.snapshot]))
    const states = await Promise.all(opened.map(async ([channel, subscription]) => {
      const snapshot = byId.get(subscription.entityId) ?? (carriesDocument(entity) ? { payload: null, version: null } : { version: null })
      // the owner was checked before the read: a document that names someone else now is not theirs to see
      if (!this.mayRead(entity, snapshot.payload)) {
        await this.end(channel)
        return null
      }
      if (subscription.sent !== undefined) subscription.sent = snapshot.position ?? null
      return snapshot
    }))
    return { states, carried: (meta) => visibility.saw(meta.txid) }
  }

  /** Whether an owner-scoped document may reach this socket: it names its user (or the user is an admin). */
  private mayRead (entity: EntityType, document: unknown): boolean {
    const owner = ownerIn(entity, 'full', document)
    const { principal } = this.socket
    return owner === undefined || document === null || owner === principal.userId || this.services.policy.isAdmin(principal)
  }

  /** A subscribe with `entityIds`: each entity as if subscribed alone, one reply for all. */
  private async subscribeMany (reply: Reply, req: SubscribeManyRequest): Promise<void> {
    const { registry, policy, fanout, log } = this.services
    const ids = [...new Set(req.entityIds)]
    const errors: ManyErrors = []
    const answer = (subscribed: string[], snapshots?: Record<string, EntitySnapshotData>): void =>
      reply.send(encodeSubscribedMany(reply.id, req.entityType, req.tenantId, { subscribed, errors, snapshots }))
    const refuseAll = (code: WireErrorCode, error: string): void => {
      for (const entityId of ids) errors.push({ entityId, code, error })
      answer([])
    }
    const entity = registry.get(req.entityType)
    if (!subscribable(entity)) return refuseAll(WireError.unknownEntityType, `unknown entity type "${req.entityType}"`)
    const scope = policy.scope(entity, req.tenantId, this.socket.principal)
    if ('code' in scope) return refuseAll(scope.code, scope.reason)
    const { tenantId } = scope
    const hold = req.snapshot === true
    const opened: Array<[string, Subscription]> = []
    await Promise.all(ids.map(async (entityId) => {
      if (entityId === FEED) return errors.push({ entityId, code: WireError.badRequest, error: 'a feed ("*") is subscribed to alone' })
      const channel = fanout.channel(entity.name, entityId, tenantId)
      const existing = this.byChannel.get(channel)
      if (existing !== undefined) {
        if (existing.sent !== undefined) existing.sent = null
        if (hold) this.resumes().hold(channel)
        return opened.push([channel, existing])
      }
      try {
        const result = await this.open(entity, entityId, tenantId, hold)
        if (result === null) return
        if ('code' in result) return errors.push({ entityId, code: result.code, error: result.reason })
        opened.push([channel, result])
      } catch (err) {
        log.error({ err }, 'changefeed: bus subscribe failed')
        errors.push({ entityId, code: WireError.internal, error: 'the server failed; retry' })
      }
    }))
    if (!this.socket.isOpen) return
    // in the order asked for
    const order = new Map(ids.map((id, i) => [id, i]))
    opened.sort(([, a], [, b]) => (order.get(a.entityId) ?? 0) - (order.get(b.entityId) ?? 0))
    const subscribed = opened.map(([, s]) => s.entityId)
    if (!hold || opened.length === 0) return answer(subscribed)
    const read = await this.snapshot(reply, entity, opened, (code, error) => {
      for (const entityId of subscribed) errors.push({ entityId, code, error })
      return encodeSubscribedMany(reply.id, req.entityType, req.tenantId, { subscribed: [], errors })
    })
    if (read === null) return
    const snapshots: Record<string, EntitySnapshotData> = {}
    const allowed: string[] = []
    for (const [i, entityId] of subscribed.entries()) {
      const state = read.states[i]
      if (state === null) {
        errors.push({ entityId, code: WireError.forbidden, error: 'only the owner may watch this entity' })
        continue
      }
      allowed.push(entityId)
      snapshots[entityId] = state ?? {}
    }
    answer(allowed, read.carried === null ? undefined : snapshots)
    for (const [channel, subscription] of opened) if (this.holds(channel, subscription)) this.releaseHeld(channel, read.carried)
  }

  /** A filtered feed: the entities of the type whose document matches `where` (lib/ws/filters.ts). */
  private async subscribeWhere (reply: Reply, req: SubscribeOneRequest, where: Where): Promise<void> {
    const { registry, policy, fanout, filters, log } = this.services
    const entity = registry.get(req.entityType)
    const ref: EntityRef = { entityType: req.entityType, entityId: req.entityId, tenantId: req.tenantId }
    const refuse = (code: WireErrorCode, error: string): void => reply.send(encodeSubscriptionError(reply.id, ref, code, error))
    if (!subscribable(entity)) return refuse(WireError.unknownEntityType, `unknown entity type "${req.entityType}"`)
    if (req.entityId !== FEED) return refuse(WireError.badRequest, 'a filter (where) goes with entityId "*"')
    if (req.since !== undefined || req.watchers === true) return refuse(WireError.badRequest, 'a filtered feed takes neither since nor watchers')
    if (!carriesDocument(entity)) return refuse(WireError.badRequest, `${entity.name} notifications carry no document (payload "minimal"): it cannot be filtered`)
    const scope = policy.scope(entity, req.tenantId, this.socket.principal)
    if ('code' in scope) return refuse(scope.code, scope.reason)
    const { tenantId } = scope
    const subscriptionId = subscriptionIdOf(entity.name, filterIdOf(where), req.tenantId)
    const feedChannel = fanout.channel(entity.name, FEED, tenantId)
    const key = filterKey(feedChannel, subscriptionId)
    const existing = this.byChannel.get(key)
    // asked again with a snapshot: the filter starts over, so the state and the frames after it agree
    if (existing !== undefined && req.snapshot === true) await this.end(key)
    else if (existing !== undefined) return reply.send(encodeSubscribed(reply.id, subscriptionId, ref, { where: canonicalWhere(where) }))
    if (this.byChannel.size >= this.limits.maxSubscriptionsPerConnection) {
      return refuse(WireError.tooManySubscriptions, `at most ${this.limits.maxSubscriptionsPerConnection} subscriptions per connection`)
    }
    const denial = await policy.check(entity, FEED, tenantId, this.socket.principal)
    if (!this.socket.isOpen) return
    if (denial !== null) return refuse(denial.code, denial.reason)
    const watcher = this.feedWatcher(null)
    const subscription: Subscription = { entityType: entity.name, entityId: FEED, tenantId, watcher, counted: false, filter: { feedChannel, subscriptionId } }
    this.byChannel.set(key, subscription)
    let joined: Awaited<ReturnType<Filters['join']>> | null
    try {
      // a filter's reads are database reads a client asks for: the same budget as replays and snapshots
      joined = await this.services.limitRead(this.socket.ip, async () =>
        await filters.join(watcher, { entity, tenantId, feedChannel, subscriptionId, conditions: conditionsOf(where), snapshot: req.snapshot === true }))
    } catch (err) {
      if (this.byChannel.get(key) === subscription) this.byChannel.delete(key)
      watcher.close()
      if (err instanceof FilterLimitError) return refuse(WireError.tooManyFilters, err.message)
      if (err instanceof SnapshotUnavailable) return refuse(WireError.badRequest, err.message)
      log.error({ err }, 'changefeed: a filtered feed could not start')
      return reply.fail()
    }
    if (joined === null) {
      if (this.byChannel.get(key) === subscription) this.byChannel.delete(key)
      watcher.close()
      return refuse(WireError.rateLimited, 'too many database reads; retry later')
    }
    if (!this.holds(key, subscription)) {
      // closed or unsubscribed while the filter was joined: its end found no seat to leave, so leave it here
      watcher.close()
      return await filters.leave(watcher, feedChannel, subscriptionId, entity.name)
    }
    const snapshot = joined.entities === null
      ? undefined
      : { entities: joined.entities.map(({ entityId, tenantId, snapshot }) => tenantId === null ? { entityId, ...snapshot } : { entityId, tenantId, ...snapshot }) }
    const frame = encodeSubscribed(reply.id, subscriptionId, ref, { where: canonicalWhere(where), snapshot })
    // a reply the socket could not buffer would close it as a slow consumer
    if (frame.length > this.limits.maxBufferedBytes / 2) {
      await this.end(key)
      return refuse(WireError.badRequest, `the reply would be too large (${frame.length} bytes, limits.maxBufferedBytes / 2): narrow the filter, or subscribe without snapshot`)
    }
    reply.send(frame)
    joined.start()
  }

  async unsubscribe (reply: Reply, req: UnsubscribeRequest): Promise<void> {
    const { registry, policy } = this.services
    if ('entityIds' in req) {
      const entity = registry.get(req.entityType)
      const scope = entity === undefined ? null : policy.scope(entity, req.tenantId, this.socket.principal)
      if (entity !== undefined && scope !== null && !('code' in scope)) {
        await Promise.all(req.entityIds.map(async (id) => await this.end(this.keyOf(entity, id, scope.tenantId, req.tenantId))))
      }
      return reply.send(encodeUnsubscribedMany(reply.id, req.entityType, req.tenantId, [...new Set(req.entityIds)]))
    }
    const target = 'subscriptionId' in req ? parseSubscriptionId(req.subscriptionId) : req
    const entity = target === null ? undefined : registry.get(target.entityType)
    const scope = target === null || entity === undefined ? null : policy.scope(entity, target.tenantId, this.socket.principal)
    // unsubscribing from something not watched is not an error: reference-counting clients may do it twice
    if (target !== null && entity !== undefined && scope !== null && !('code' in scope)) {
      await this.end(this.keyOf(entity, target.entityId, scope.tenantId, target.tenantId, (target as { where?: Where }).where))
    }
    const subscriptionId = 'subscriptionId' in req
      ? req.subscriptionId
      : subscriptionIdOf(entity?.name ?? req.entityType, req.where === undefined ? req.entityId : filterIdOf(req.where), req.tenantId)
    reply.send(encodeUnsubscribed(reply.id, subscriptionId))
  }

  /**
   * The key a subscription is held by: its channel, or for a filtered feed (`where`, or an entity id `*{…}` from a
   * subscriptionId) the feed channel and the filter. `named`: the tenant as the request named it.
   */
  private keyOf (entity: EntityType, entityId: string, tenantId: string | null, named: string | undefined, where?: Where): string {
    const filter = where ?? parseFilterId(entityId)
    const channel = this.services.fanout.channel(entity.name, filter === null ? entityId : FEED, tenantId)
    if (filter === null || !WhereCheck.Check(filter)) return channel
    return filterKey(channel, subscriptionIdOf(entity.name, filterIdOf(filter), named))
  }
}

type Opened = Subscription | Denial | { code: WireErrorCode, reason: string } | null
type ManyErrors = Array<{ entityId: string, code: WireErrorCode, error: string }>

/** Whether a type can be subscribed to: declared, or discovered with an access rule. */
function subscribable (entity: EntityType | undefined): entity is EntityType {
  return entity !== undefined && (entity.access !== null || entity.declared)
}

/** The key a filtered feed's subscription is held by: never a channel (channels hold no NUL). */
const filterKey = (feedChannel: string, subscriptionId: string): string => feedChannel + '\u0000' + subscriptionId

/** A filter as the server holds it (keys sorted, values sorted and distinct). */
function canonicalWhere (where: Where): Where {
  return JSON.parse(filterIdOf(where).slice(1)) as Where
}

const WhereCheck = Compile(WhereSchema)
