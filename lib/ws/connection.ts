/**
 * One WebSocket connection: parses and validates frames, holds its subscriptions, writes frames, and has a
 * single close path. Bad input gets a coded `error` and the socket stays open; persistent abuse closes it (1008).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import type { Authenticator } from '../auth/authenticate.js'
import type { AccessPolicy } from '../auth/policy.js'
import type { Principal } from '../auth/principal.js'
import type { EntityRegistry, EntityType } from '../entities.js'
import { CloseCode, WireError, type WireErrorCode } from '../errors.js'
import type { ResolvedOptions } from '../options.js'
import type { Fanout, FrameMeta, Watcher } from './fanout.js'
import { OutboundQueue } from './outbound.js'
import { isAfter } from '../position.js'
import { FeedWatcher } from './feed.js'
import type { WatcherCounts } from './watchers.js'
import { FEED } from '../auth/policy.js'
import { TokenBucket, type ConnectionCounter } from './limits.js'
import {
  Envelope, PONG, RequestData, encodeAuthenticated, encodeError, encodeSubscribed, encodeSubscriptionError, encodeUnsubscribed,
  subscriptionIdOf, type RequestIdValue, type SubscribeRequest, type UnsubscribeRequest
} from './protocol.js'

export interface ConnectionServices {
  options: ResolvedOptions
  registry: EntityRegistry
  policy: AccessPolicy
  authenticator: Authenticator
  fanout: Fanout
  watcherCounts: WatcherCounts
  /** open connections per signed-in user (maxConnectionsPerUser) */
  users: ConnectionCounter
  log: FastifyBaseLogger
  counters: { slowConsumerCloses: number, conflated: number, replayed: number }
  /** Outbox mode: an entity's notifications after `since`, oldest first; null when they cannot all be given. */
  replay(entity: EntityType, entityId: string, since: string): Promise<Array<{ frame: string, position: string }> | null>
  /** `subscriptions`: how many it held when it closed */
  onClosed(connection: Connection, code: number, subscriptions: number): void
}

/** The key a principal is counted under for maxConnectionsPerUser; null for anonymous sockets. */
export function userKey (principal: Principal): string | null {
  return principal.userId === null ? null : principal.kind + ':' + principal.userId
}

/** setTimeout cannot wait longer than this (about 24.8 days) */
const MAX_TIMER_MS = 2 ** 31 - 1

interface Subscription {
  entityType: string
  entityId: string
  /** what receives the frames: this socket, or a FeedWatcher in front of it for a type-wide subscription */
  watcher: Watcher
  /** the socket asked for watcher counts */
  counted: boolean
}

/** After a close frame is sent, how long the peer has to answer before the socket is dropped. */
const CLOSE_GRACE_MS = 2000

let nextId = 1

export class Connection implements Watcher {
  readonly id = nextId++
  /** last time anything arrived from the peer (frame or pong) */
  lastSeen = Date.now()
  state: 'open' | 'closing' | 'closed' = 'open'
  readonly subscriptions = new Map<string, Subscription>()
  private queue: Promise<void> = Promise.resolve()
  private readonly subscribeBucket: TokenBucket
  private readonly badFrameBucket: TokenBucket
  private readonly limits: ResolvedOptions['limits']
  private expiryTimer: NodeJS.Timeout | null = null
  private principal: Principal
  /** writes to the socket; holds and conflates while the peer reads slowly */
  private readonly outbound: OutboundQueue
  /** channels being resumed with `since`: live notifications wait here until the replay is written */
  private readonly replaying = new Map<string, Array<{ frame: string, meta: FrameMeta }>>()
  /** channels just resumed: the last position replayed, until a newer live notification comes (drops repeats) */
  private readonly resumedAt = new Map<string, string>()

  /** `principal` is already counted in services.users when it is a user. */
  constructor (
    private readonly socket: WebSocket,
    principal: Principal,
    readonly ip: string,
    private readonly services: ConnectionServices
  ) {
    this.limits = services.options.limits
    this.principal = principal
    this.outbound = new OutboundQueue(socket, {
      highWaterBytes: this.limits.conflateAboveBytes,
      lowWaterBytes: Math.floor(this.limits.conflateAboveBytes / 2),
      maxBufferedBytes: this.limits.maxBufferedBytes,
      maxHeldFrames: this.limits.maxHeldFrames,
      drainIntervalMs: 50
    })
    this.scheduleExpiry()
    // the burst admits one whole resubscription batch after a reconnect, plus one second's worth
    this.subscribeBucket = new TokenBucket(this.limits.maxSubscriptionsPerConnection + this.limits.subscribeRatePerSecond, this.limits.subscribeRatePerSecond)
    this.badFrameBucket = new TokenBucket(this.limits.maxBadFramesPerMinute, this.limits.maxBadFramesPerMinute / 60)
    socket.on('message', (data, isBinary) => this.onFrame(data, isBinary))
    socket.on('pong', () => { this.lastSeen = Date.now() })
    socket.on('close', (code) => this.onClosed(code))
    socket.on('error', (err) => services.log.debug({ connection: this.id, err: err.message }, 'changefeed: socket error'))
  }

  /**
   * Writes a pre-encoded frame. While the peer reads slowly, notifications of `full` and `minimal` entities are
   * held and conflated (the latest state per entity); a peer that falls further behind is closed (4409).
   */
  deliver (frame: string, meta?: FrameMeta): boolean {
    if (this.state !== 'open') return false
    if (meta !== undefined) {
      const waiting = this.replaying.get(meta.channel)
      if (waiting !== undefined) {
        waiting.push({ frame, meta })
        return true
      }
      const resumed = this.resumedAt.get(meta.channel)
      if (resumed !== undefined) {
        // the publisher may still be on its way to changes the replay carried: they are not sent twice
        if (!isAfter(meta.position, resumed)) return true
        this.resumedAt.delete(meta.channel)
      }
    }
    const conflatable = meta !== undefined && (meta.payloadType === 'full' || meta.payloadType === 'minimal')
    return this.write(frame, conflatable ? meta.channel : null)
  }

  private write (frame: string, key: string | null): boolean {
    if (this.state !== 'open') return false
    const before = this.outbound.conflated
    const result = this.outbound.push(frame, key)
    this.services.counters.conflated += this.outbound.conflated - before
    if (result !== 'overflow') return true
    this.services.counters.slowConsumerCloses++
    this.services.log.warn({ connection: this.id, buffered: this.socket.bufferedAmount, held: this.outbound.held }, 'changefeed: slow consumer closed')
    this.close(CloseCode.slowConsumer, 'slow consumer')
    return false
  }

  ping (): void {
    if (this.state === 'open') this.socket.ping()
  }

  /** The single close path: safe to call more than once. */
  close (code: number, reason: string): void {
    if (this.state !== 'open') return
    this.state = 'closing'
    this.outbound.close()
    this.socket.close(code, reason)
    setTimeout(() => { if (this.state !== 'closed') this.socket.terminate() }, CLOSE_GRACE_MS).unref()
  }

  /** Closes with 4401 unless the socket has signed in (`auth` message) within `ms`. */
  requireSignIn (ms: number): void {
    const timer = setTimeout(() => { if (this.principal.kind === 'anonymous') this.close(CloseCode.unauthenticated, 'authentication required') }, ms)
    timer.unref()
  }

  /** Credentials that expire close the socket with 4401 then, unless an `auth` message renewed them. */
  private scheduleExpiry (): void {
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer)
    this.expiryTimer = null
    const expiresAt = this.principal.expiresAt
    if (expiresAt === null) return
    this.expiryTimer = setTimeout(() => this.close(CloseCode.unauthenticated, 'token expired'),
      Math.min(Math.max(0, expiresAt - Date.now()), MAX_TIMER_MS))
    this.expiryTimer.unref()
  }

  private onClosed (code: number): void {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.outbound.close()
    this.replaying.clear()
    this.services.onClosed(this, code, this.subscriptions.size)
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer)
    const key = userKey(this.principal)
    if (key !== null) this.services.users.release(key)
    for (const subscriptionId of [...this.subscriptions.keys()]) {
      this.endSubscription(subscriptionId).catch((err: Error) =>
        this.services.log.warn({ err: err.message }, 'changefeed: bus unsubscribe failed'))
    }
  }

  /** The one way a subscription ends: unsubscribe, a refresh that no longer allows it, or the socket closing. */
  private async endSubscription (subscriptionId: string): Promise<void> {
    const subscription = this.subscriptions.get(subscriptionId)
    if (subscription === undefined) return
    this.subscriptions.delete(subscriptionId)
    const { entityType, entityId, watcher, counted } = subscription
    if (watcher instanceof FeedWatcher) watcher.close()
    const channel = this.services.fanout.channel(entityType, entityId)
    this.resumedAt.delete(channel)
    if (counted) this.services.watcherCounts.remove(this, channel)
    await this.services.fanout.unwatch(watcher, entityType, entityId)
  }

  private onFrame (data: RawData, isBinary: boolean): void {
    this.lastSeen = Date.now()
    if (this.state !== 'open') return
    if (isBinary) return this.reject(undefined, WireError.binaryFrame, 'frames are JSON text')
    const text = data.toString()
    // ws enforces maxPayload when this plugin registered it; a host's own @fastify/websocket may allow more
    if (text.length > this.limits.maxMessageBytes) return this.close(CloseCode.tooLarge, 'frame too large')
    let message: unknown
    try {
      message = JSON.parse(text)
    } catch {
      return this.reject(undefined, WireError.invalidJson, 'frame is not JSON')
    }
    if (!Envelope.Check(message)) {
      return this.reject(requestIdOf(message), WireError.badRequest, 'expected {"type": string, "id"?: string | integer, "data"?: object}')
    }
    const { type, id, data: body } = message
    switch (type) {
      case 'ping':
        this.send(PONG)
        return
      case 'subscribe':
        if (!RequestData.subscribe.Check(body)) return this.reject(id, WireError.badRequest, 'subscribe needs data {entityType, entityId, since?}')
        if (!this.subscribeBucket.take()) return this.reject(id, WireError.rateLimited, 'too many subscribe requests; slow down')
        return this.enqueue(async () => await this.subscribe(id, body))
      case 'unsubscribe':
        if (!RequestData.unsubscribe.Check(body)) return this.reject(id, WireError.badRequest, 'unsubscribe needs data {subscriptionId} or {entityType, entityId}')
        if (!this.subscribeBucket.take()) return this.reject(id, WireError.rateLimited, 'too many unsubscribe requests; slow down')
        return this.enqueue(async () => await this.unsubscribe(id, body))
      case 'auth':
        if (!RequestData.auth.Check(body)) return this.reject(id, WireError.badRequest, 'auth needs data {token}')
        return this.enqueue(async () => await this.authenticate(id, body.token))
      default:
        return this.reject(id, WireError.badRequest, `unknown message type "${type.slice(0, 32)}"`)
    }
  }

  /** Requests of one socket run in order, so a quick subscribe then unsubscribe cannot be reordered. */
  private enqueue (task: () => Promise<void>): void {
    this.queue = this.queue.then(task).catch((err: Error) => {
      this.services.log.error({ connection: this.id, err }, 'changefeed: request failed')
    })
  }

  private reject (id: RequestIdValue, code: WireErrorCode, error: string): void {
    this.send(encodeError(id, code, error))
    if (!this.badFrameBucket.take()) this.close(CloseCode.policyViolation, 'too many bad frames')
  }

  private async subscribe (id: RequestIdValue, req: SubscribeRequest): Promise<void> {
    const entity = this.services.registry.get(req.entityType)
    if (entity === undefined || (entity.access === null && !entity.declared)) {
      return this.send(encodeSubscriptionError(id, req.entityType, req.entityId, WireError.unknownEntityType, `unknown entity type "${req.entityType}"`))
    }
    const subscriptionId = subscriptionIdOf(entity.name, req.entityId)
    const existing = this.subscriptions.get(subscriptionId)
    if (existing !== undefined) {
      if (req.since !== undefined) await this.resume(id, entity, req.entityId, req.since)
      else this.send(encodeSubscribed(id, subscriptionId, entity.name, req.entityId))
      if (req.watchers === true && !existing.counted) await this.countWatchers(existing)
      return
    }
    if (this.subscriptions.size >= this.limits.maxSubscriptionsPerConnection) {
      return this.send(encodeSubscriptionError(id, entity.name, req.entityId, WireError.tooManySubscriptions,
        `at most ${this.limits.maxSubscriptionsPerConnection} subscriptions per connection`))
    }
    const denial = await this.services.policy.check(entity, req.entityId, this.principal)
    if (denial !== null) return this.send(encodeSubscriptionError(id, entity.name, req.entityId, denial.code, denial.reason))
    if (this.state !== 'open') return
    const watcher = req.entityId === FEED ? new FeedWatcher(this, this.limits.feedMessagesPerSecond, this.limits.feedBatchIntervalMs) : this
    const subscription: Subscription = { entityType: entity.name, entityId: req.entityId, watcher, counted: false }
    this.subscriptions.set(subscriptionId, subscription)
    const channel = this.services.fanout.channel(entity.name, req.entityId)
    // resuming: what arrives live from now on waits until the replay is written
    if (req.since !== undefined) this.replaying.set(channel, [])
    try {
      await this.services.fanout.watch(watcher, entity.name, req.entityId)
    } catch (err) {
      this.replaying.delete(channel)
      this.subscriptions.delete(subscriptionId)
      this.services.log.error({ err }, 'changefeed: bus subscribe failed')
      return this.send(encodeSubscriptionError(id, entity.name, req.entityId, WireError.internal, 'subscription failed; retry'))
    }
    // closed while the bus subscribed: onClosed ran before the subscription existed
    if ((this.state as Connection['state']) === 'closed') {
      await this.services.fanout.unwatch(watcher, entity.name, req.entityId)
      return
    }
    if (req.since !== undefined) await this.resume(id, entity, req.entityId, req.since)
    else this.send(encodeSubscribed(id, subscriptionId, entity.name, req.entityId))
    if (req.watchers === true) await this.countWatchers(subscription)
  }

  /**
   * Answers a subscribe with `since`: `subscribed` with `recovered: true` and the missed notifications, oldest
   * first, or `recovered: false` (the client refetches). Live notifications that arrived meanwhile follow, without
   * those the replay already carried.
   */
  private async resume (id: RequestIdValue, entity: EntityType, entityId: string, since: string): Promise<void> {
    const channel = this.services.fanout.channel(entity.name, entityId)
    if (!this.replaying.has(channel)) this.replaying.set(channel, [])
    let frames: Array<{ frame: string, position: string }> | null = null
    try {
      frames = await this.services.replay(entity, entityId, since)
    } catch (err) {
      this.services.log.warn({ connection: this.id, err: (err as Error).message }, 'changefeed: replay failed; the client refetches')
    }
    const waiting = this.replaying.get(channel) ?? []
    this.replaying.delete(channel)
    if (this.state !== 'open') return
    this.send(encodeSubscribed(id, subscriptionIdOf(entity.name, entityId), entity.name, entityId, frames !== null))
    // a live notification held for this slow socket is in the replay too: it must not go out ahead of it
    if (frames !== null) this.outbound.discard(channel)
    let last = since
    for (const { frame, position } of frames ?? []) {
      this.write(frame, null)
      last = position
    }
    this.services.counters.replayed += frames?.length ?? 0
    if (frames !== null) this.resumedAt.set(channel, last)
    for (const { frame, meta } of waiting) this.deliver(frame, meta)
  }

  private async countWatchers (subscription: Subscription): Promise<void> {
    subscription.counted = true
    const { entityType, entityId } = subscription
    await this.services.watcherCounts.add(this, this.services.fanout.channel(entityType, entityId), entityType, entityId)
  }

  /**
   * In-band sign-in or token refresh. The socket keeps its identity when the token is refused. A refreshed
   * token must be the same user's; subscriptions it no longer allows end with a `subscription_error`.
   */
  private async authenticate (id: RequestIdValue, token: string): Promise<void> {
    const identity = await this.services.authenticator.verifyInBand(token, this.ip)
    if (this.state !== 'open') return
    if ('failure' in identity) return this.reject(id, WireError.unauthenticated, `token refused: ${identity.failure}`)
    const next = identity.principal
    const before = userKey(this.principal)
    const after = userKey(next)
    if (before !== null && before !== after) return this.reject(id, WireError.forbidden, 'the token is for another user')
    if (before === null && after !== null && !this.services.users.acquire(after)) {
      return this.close(CloseCode.tooManyConnections, 'too many connections for this user')
    }
    this.principal = next
    this.scheduleExpiry()
    for (const [subscriptionId, { entityType, entityId }] of [...this.subscriptions]) {
      const entity = this.services.registry.get(entityType)
      const denial = entity === undefined ? null : await this.services.policy.check(entity, entityId, next)
      if (denial === null || !this.subscriptions.has(subscriptionId)) continue
      await this.endSubscription(subscriptionId)
      this.send(encodeSubscriptionError(undefined, entityType, entityId, denial.code, denial.reason))
    }
    this.send(encodeAuthenticated(id, next))
  }

  private async unsubscribe (id: RequestIdValue, req: UnsubscribeRequest): Promise<void> {
    let subscriptionId: string
    if ('subscriptionId' in req) subscriptionId = req.subscriptionId
    else subscriptionId = subscriptionIdOf(this.services.registry.get(req.entityType)?.name ?? req.entityType, req.entityId)
    // unsubscribing from something not watched is not an error: reference-counting clients may do it twice
    await this.endSubscription(subscriptionId)
    this.send(encodeUnsubscribed(id, subscriptionId))
  }

  /** Replies and other frames that are never conflated, in order with the notifications. */
  private send (frame: string): void {
    if (this.state === 'open') this.write(frame, null)
  }
}

function requestIdOf (message: unknown): RequestIdValue {
  if (message === null || typeof message !== 'object') return undefined
  const id = (message as { id?: unknown }).id
  return (typeof id === 'string' && id.length <= 128) || Number.isInteger(id) ? id as string | number : undefined
}
