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
import { OutboundQueue, type OutboundLimits } from './outbound.js'
import { ResumeBuffer } from './resume.js'
import { FeedWatcher } from './feed.js'
import type { WatcherCounts } from './watchers.js'
import { FEED } from '../channels.js'
import { TokenBucket, type ConnectionCounter } from './limits.js'
import {
  Envelope, PONG, RequestData, encodeAuthenticated, encodeError, encodeSubscribed, encodeSubscriptionError, encodeUnsubscribed,
  parseSubscriptionId, subscriptionIdOf, type EntityRef, type RequestIdValue, type SubscribeRequest, type UnsubscribeRequest
} from '../protocol/index.js'

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
  /** when a socket's writes are held and conflated (from limits; one object for every socket) */
  outboundLimits: OutboundLimits
  /** Outbox mode: an entity's notifications after `since`, oldest first; null when they cannot all be given. */
  replay(entity: EntityType, entityId: string, tenantId: string | null, since: string, ip: string): Promise<Array<{ frame: string, position: string }> | null>
  /** `subscriptions`: how many it held when it closed */
  onClosed(connection: Connection, code: number, subscriptions: number): void
}

/** The key a principal is counted under for maxConnectionsPerUser; null for anonymous sockets. */
export function userKey (principal: Principal): string | null {
  return principal.userId === null ? null : principal.kind + ':' + principal.userId
}

/** setTimeout cannot wait longer than this (about 24.8 days) */
const MAX_TIMER_MS = 2 ** 31 - 1

/** A socket's subscription to one channel: an entity (of one tenant, or of every tenant), or a feed. */
interface Subscription extends EntityRef {
  /** the tenant whose entity it watches; null: every tenant's, or an untenanted type */
  tenantId: string | null
  /** what receives the frames: this socket, or a FeedWatcher in front of it for a type-wide subscription */
  watcher: Watcher
  /** the socket asked for watcher counts */
  counted: boolean
}

/** The one reply a request gets (`send` after the first does nothing). */
interface Reply {
  readonly id: RequestIdValue
  sent: boolean
  send(frame: string): void
  /** answers with the request's failure frame (`internal_error`) */
  fail(): void
}

/** ws's options for a text frame given as bytes */
const TEXT = { binary: false } as const

/** After a close frame is sent, how long the peer has to answer before the socket is dropped. */
const CLOSE_GRACE_MS = 2000

let nextId = 1

export class Connection implements Watcher {
  readonly id = nextId++
  /** last time anything arrived from the peer (frame or pong) */
  lastSeen = Date.now()
  state: 'open' | 'closing' | 'closed' = 'open'
  /** by channel: two requests that name one channel differently (the tenant implied, or named) are one subscription */
  readonly subscriptions = new Map<string, Subscription>()
  private queue: Promise<void> | undefined
  // what a socket needs only once it does something: made then (10,000 idle sockets should cost little)
  private subscribeBucket: TokenBucket | undefined
  private badFrameBucket: TokenBucket | undefined
  private readonly limits: ResolvedOptions['limits']
  private expiryTimer: NodeJS.Timeout | null = null
  private principal: Principal
  /** writes to the socket; holds and conflates while the peer reads slowly */
  /** made when the socket first falls behind: it holds and conflates while the peer reads slowly */
  private outbound: OutboundQueue | undefined
  private resumeBuffer: ResumeBuffer | undefined
  /** owner-scoped channels whose document named another owner: dropped here until their subscription has ended */
  private revoked: Set<string> | undefined

  /** `principal` is already counted in services.users when it is a user. */
  constructor (
    private readonly socket: WebSocket,
    principal: Principal,
    readonly ip: string,
    private readonly services: ConnectionServices
  ) {
    this.limits = services.options.limits
    this.principal = principal
    this.scheduleExpiry()
    ;(socket as SocketOf).connection = this
    socket.on('message', onMessage)
    socket.on('pong', onPong)
    socket.on('close', onClose)
    socket.on('error', onError)
  }

  /**
   * Writes a pre-encoded frame. While the peer reads slowly, notifications of `full` and `minimal` entities are
   * held and conflated (the latest state per entity); a peer that falls further behind is closed (4409).
   */
  deliver (frame: string, meta?: FrameMeta): boolean {
    if (this.state !== 'open') return false
    if (meta !== undefined) {
      if (meta.owner !== undefined && (this.revoked?.has(meta.channel) === true ||
          (meta.owner !== this.principal.userId && !this.services.policy.isAdmin(this.principal)))) {
        this.revoke(meta.channel)
        return true
      }
      if (this.resumeBuffer?.intercept(frame, meta) === true) return true
    }
    const conflatable = meta !== undefined && (meta.payloadType === 'full' || meta.payloadType === 'minimal')
    return this.write(frame, conflatable ? meta.key : null, meta?.bytes)
  }

  private write (frame: string, key: string | null, bytes?: Buffer): boolean {
    if (this.state !== 'open') return false
    // a socket that keeps up (nearly all of them) writes at once and never needs a queue
    if (this.outbound === undefined && this.socket.bufferedAmount <= this.services.outboundLimits.highWaterBytes) {
      this.socket.send(bytes ?? frame, TEXT)
      return true
    }
    const outbound = this.outbound ??= new OutboundQueue(this.socket, this.services.outboundLimits)
    const before = outbound.conflated
    const result = outbound.push(frame, key, bytes)
    this.services.counters.conflated += outbound.conflated - before
    if (result !== 'overflow') return true
    this.services.counters.slowConsumerCloses++
    this.services.log.warn({ connection: this.id, buffered: this.socket.bufferedAmount, held: outbound.held }, 'changefeed: slow consumer closed')
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
    this.outbound?.close()
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

  onError (err: Error): void {
    this.services.log.debug({ connection: this.id, err: err.message }, 'changefeed: socket error')
  }

  onClosed (code: number): void {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.outbound?.close()
    this.resumeBuffer?.clear()
    this.services.onClosed(this, code, this.subscriptions.size)
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer)
    const key = userKey(this.principal)
    if (key !== null) this.services.users.release(key)
    for (const channel of [...this.subscriptions.keys()]) {
      this.endSubscription(channel).catch((err: Error) =>
        this.services.log.warn({ err: err.message }, 'changefeed: bus unsubscribe failed'))
    }
  }

  /** The one way a subscription ends: unsubscribe, a refresh that no longer allows it, or the socket closing. */
  private async endSubscription (channel: string): Promise<void> {
    const subscription = this.subscriptions.get(channel)
    if (subscription === undefined) return
    this.subscriptions.delete(channel)
    const { entityType, watcher, counted } = subscription
    if (watcher instanceof FeedWatcher) watcher.close()
    this.resumeBuffer?.forget(channel)
    if (counted) this.services.watcherCounts.remove(this, channel)
    await this.services.fanout.unwatch(watcher, channel, entityType)
  }

  onFrame (data: RawData, isBinary: boolean): void {
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
        if (!this.subscribeTokens().take()) return this.reject(id, WireError.rateLimited, 'too many subscribe requests; slow down')
        return this.enqueue(this.reply(id, () => encodeSubscriptionError(id, body, WireError.internal, 'the server failed; retry')),
          async (reply) => await this.subscribe(reply, body))
      case 'unsubscribe':
        if (!RequestData.unsubscribe.Check(body)) return this.reject(id, WireError.badRequest, 'unsubscribe needs data {subscriptionId} or {entityType, entityId}')
        if (!this.subscribeTokens().take()) return this.reject(id, WireError.rateLimited, 'too many unsubscribe requests; slow down')
        return this.enqueue(this.reply(id, () => encodeError(id, WireError.internal, 'the server failed; retry')), async (reply) => await this.unsubscribe(reply, body))
      case 'auth':
        if (!RequestData.auth.Check(body)) return this.reject(id, WireError.badRequest, 'auth needs data {token}')
        return this.enqueue(this.reply(id, () => encodeError(id, WireError.internal, 'the server failed; retry')), async (reply) => await this.authenticate(reply, body.token))
      default:
        return this.reject(id, WireError.badRequest, `unknown message type "${type.slice(0, 32)}"`)
    }
  }

  /**
   * The document of an owner-scoped subscription now names another owner: it ends here, before any of its frames
   * reach this socket, and the client hears why.
   */
  private revoke (channel: string): void {
    const subscription = this.subscriptions.get(channel)
    if (subscription === undefined || this.revoked?.has(channel) === true) return
    ;(this.revoked ??= new Set()).add(channel)
    this.services.log.info({ connection: this.id, entityType: subscription.entityType }, 'changefeed: the owner changed; subscription ended')
    this.inOrder(async () => {
      try {
        if (!this.holds(channel, subscription)) return
        await this.endSubscription(channel)
        this.send(encodeSubscriptionError(undefined, subscription, WireError.forbidden, 'the entity now belongs to someone else'))
      } finally {
        this.revoked?.delete(channel)
      }
    })
  }

  /** Runs `task` after this socket's requests before it. */
  private inOrder (task: () => Promise<void>): void {
    const next: Promise<void> = (this.queue ?? Promise.resolve()).then(task)
      .catch((err: Error) => this.services.log.error({ connection: this.id, err }, 'changefeed: request failed'))
      // an idle socket keeps no settled promise
      .finally(() => { if (this.queue === next) this.queue = undefined })
    this.queue = next
  }

  /**
   * Requests of one socket run in order, so a quick subscribe then unsubscribe cannot be reordered. Every request
   * gets exactly one reply: a handler that failed inside (a database blip, a host `authorize` that threw) answers
   * with its failure frame (`internal_error`, retryable).
   */
  private enqueue (reply: Reply, task: (reply: Reply) => Promise<void>): void {
    this.inOrder(async () => {
      try {
        await task(reply)
      } finally {
        if (!reply.sent) reply.fail()
      }
    })
  }

  /** The reply to one request; `failure` is sent when the handler could not answer. */
  private reply (id: RequestIdValue, failure: () => string): Reply {
    const reply: Reply = {
      id,
      sent: false,
      send: (frame) => {
        if (reply.sent) return
        reply.sent = true
        this.send(frame)
      },
      fail: () => reply.send(failure())
    }
    return reply
  }

  /** A bad request: its `error` reply; a socket that keeps sending them is closed. */
  private reject (to: RequestIdValue | Reply, code: WireErrorCode, error: string): void {
    const frame = encodeError(typeof to === 'object' ? to.id : to, code, error)
    if (typeof to === 'object') to.send(frame)
    else this.send(frame)
    this.badFrameBucket ??= new TokenBucket(this.limits.maxBadFramesPerMinute, this.limits.maxBadFramesPerMinute / 60)
    if (!this.badFrameBucket.take()) this.close(CloseCode.policyViolation, 'too many bad frames')
  }

  /** The subscribe/unsubscribe rate: the burst admits one whole resubscription after a reconnect, plus a second's worth. */
  private subscribeTokens (): TokenBucket {
    this.subscribeBucket ??= new TokenBucket(this.limits.maxSubscriptionsPerConnection + this.limits.subscribeRatePerSecond, this.limits.subscribeRatePerSecond)
    return this.subscribeBucket
  }

  private resumes (): ResumeBuffer {
    this.resumeBuffer ??= new ResumeBuffer()
    return this.resumeBuffer
  }

  /** Whether `subscription` is still this open socket's (a close or an unsubscribe may have come during an await). */
  private holds (channel: string, subscription: Subscription): boolean {
    return this.state === 'open' && this.subscriptions.get(channel) === subscription
  }

  private async subscribe (reply: Reply, req: SubscribeRequest): Promise<void> {
    const entity = this.services.registry.get(req.entityType)
    if (entity === undefined || (entity.access === null && !entity.declared)) {
      return reply.send(encodeSubscriptionError(reply.id, req, WireError.unknownEntityType, `unknown entity type "${req.entityType}"`))
    }
    const scope = this.services.policy.scope(entity, req.tenantId, this.principal)
    const ref: EntityRef = { entityType: entity.name, entityId: req.entityId, tenantId: 'code' in scope ? req.tenantId : scope.tenantId }
    if ('code' in scope) return reply.send(encodeSubscriptionError(reply.id, ref, scope.code, scope.reason))
    const { tenantId } = scope
    const channel = this.services.fanout.channel(entity.name, req.entityId, tenantId)
    // the reply names the subscription as the request did (the draft client computes `<type>:<id>` itself)
    const subscriptionId = subscriptionIdOf(entity.name, req.entityId, req.tenantId)
    const existing = this.subscriptions.get(channel)
    if (existing !== undefined) {
      if (req.since !== undefined) await this.resume(reply, subscriptionId, entity, existing, req.since)
      else reply.send(encodeSubscribed(reply.id, subscriptionId, ref))
      if (req.watchers === true) this.countWatchers(channel, existing)
      return
    }
    if (this.subscriptions.size >= this.limits.maxSubscriptionsPerConnection) {
      return reply.send(encodeSubscriptionError(reply.id, ref, WireError.tooManySubscriptions,
        `at most ${this.limits.maxSubscriptionsPerConnection} subscriptions per connection`))
    }
    const denial = await this.services.policy.check(entity, req.entityId, tenantId, this.principal)
    if (this.state !== 'open') return
    if (denial !== null) return reply.send(encodeSubscriptionError(reply.id, ref, denial.code, denial.reason))
    // (a subscribe of the same channel cannot have come meanwhile: this socket's requests run one at a time)
    const watcher = req.entityId === FEED
      // a feed's batch frame is written before it grows past a quarter of the buffer: it must never overflow the socket
      ? new FeedWatcher(this, this.limits.feedMessagesPerSecond, this.limits.feedBatchIntervalMs, Math.max(1024, Math.floor(this.limits.maxBufferedBytes / 4)))
      : this
    const subscription: Subscription = { entityType: entity.name, entityId: req.entityId, tenantId, watcher, counted: false }
    this.subscriptions.set(channel, subscription)
    // resuming: what arrives live from now on waits until the replay is written
    if (req.since !== undefined) this.resumes().hold(channel)
    try {
      await this.services.fanout.watch(watcher, channel, entity.name, req.entityId, tenantId)
    } catch (err) {
      this.resumeBuffer?.forget(channel)
      if (this.subscriptions.get(channel) === subscription) this.subscriptions.delete(channel)
      if (watcher instanceof FeedWatcher) watcher.close()
      this.services.log.error({ err }, 'changefeed: bus subscribe failed')
      return reply.fail()
    }
    // closed meanwhile: the close ended the subscription (and unwatched) already
    if (!this.holds(channel, subscription)) return
    if (req.since !== undefined) await this.resume(reply, subscriptionId, entity, subscription, req.since)
    else reply.send(encodeSubscribed(reply.id, subscriptionId, ref))
    if (req.watchers === true) this.countWatchers(channel, subscription)
  }

  /**
   * Answers a subscribe with `since`: `subscribed` with `recovered: true` and the missed notifications, oldest
   * first, or `recovered: false` (the client refetches). Live notifications that arrived meanwhile follow, without
   * those the replay already carried.
   */
  private async resume (reply: Reply, subscriptionId: string, entity: EntityType, subscription: Subscription, since: string): Promise<void> {
    const channel = this.services.fanout.channel(entity.name, subscription.entityId, subscription.tenantId)
    this.resumes().hold(channel)
    let frames: Array<{ frame: string, position: string }> | null = null
    try {
      frames = await this.services.replay(entity, subscription.entityId, subscription.tenantId, since, this.ip)
    } catch (err) {
      this.services.log.warn({ connection: this.id, err: (err as Error).message }, 'changefeed: replay failed; the client refetches')
    }
    if (this.state !== 'open') return
    reply.send(encodeSubscribed(reply.id, subscriptionId, subscription, frames !== null))
    // a live notification held for this slow socket is in the replay too: it must not go out ahead of it
    if (frames !== null) this.outbound?.discard(channel)
    for (const { frame } of frames ?? []) this.write(frame, null)
    this.services.counters.replayed += frames?.length ?? 0
    const waiting = this.resumes().release(channel, frames === null ? null : frames.at(-1)?.position ?? since)
    for (const { frame, meta } of waiting) this.deliver(frame, meta)
  }

  /** Starts pushing watcher counts to this socket, if it still holds the subscription. */
  private countWatchers (channel: string, subscription: Subscription): void {
    if (subscription.counted || !this.holds(channel, subscription)) return
    subscription.counted = true
    this.services.watcherCounts.add(this, channel, subscription)
  }

  /**
   * In-band sign-in or token refresh. The socket keeps its identity when the token is refused. A refreshed
   * token must be the same user's; subscriptions it no longer allows end with a `subscription_error`.
   */
  private async authenticate (reply: Reply, token: string): Promise<void> {
    const identity = await this.services.authenticator.verifyInBand(token, this.ip)
    if (this.state !== 'open') return
    if ('failure' in identity) return this.reject(reply, WireError.unauthenticated, `token refused: ${identity.failure}`)
    const next = identity.principal
    const before = userKey(this.principal)
    const after = userKey(next)
    if (before !== null && before !== after) return this.reject(reply, WireError.forbidden, 'the token is for another user')
    if (before === null && after !== null && !this.services.users.acquire(after)) {
      return this.close(CloseCode.tooManyConnections, 'too many connections for this user')
    }
    this.principal = next
    this.scheduleExpiry()
    for (const [channel, subscription] of [...this.subscriptions]) {
      const entity = this.services.registry.get(subscription.entityType)
      if (entity === undefined) continue
      const scope = this.services.policy.scope(entity, subscription.tenantId ?? undefined, next)
      const denial = 'code' in scope ? scope : await this.services.policy.check(entity, subscription.entityId, subscription.tenantId, next)
      if (denial === null || !this.holds(channel, subscription)) continue
      await this.endSubscription(channel)
      this.send(encodeSubscriptionError(undefined, subscription, denial.code, denial.reason))
    }
    reply.send(encodeAuthenticated(reply.id, next))
  }

  private async unsubscribe (reply: Reply, req: UnsubscribeRequest): Promise<void> {
    const target = 'subscriptionId' in req ? parseSubscriptionId(req.subscriptionId) : req
    const entity = target === null ? undefined : this.services.registry.get(target.entityType)
    const scope = target === null || entity === undefined ? null : this.services.policy.scope(entity, target.tenantId, this.principal)
    // unsubscribing from something not watched is not an error: reference-counting clients may do it twice
    if (target !== null && entity !== undefined && scope !== null && !('code' in scope)) {
      await this.endSubscription(this.services.fanout.channel(entity.name, target.entityId, scope.tenantId))
    }
    const subscriptionId = 'subscriptionId' in req ? req.subscriptionId : subscriptionIdOf(entity?.name ?? req.entityType, req.entityId, req.tenantId)
    reply.send(encodeUnsubscribed(reply.id, subscriptionId))
  }

  /** Replies and other frames that are never conflated, in order with the notifications. */
  private send (frame: string): void {
    if (this.state === 'open') this.write(frame, null)
  }
}

/**
 * The socket's listeners are shared by every connection (ws calls them with the socket as `this`), rather than
 * four closures per socket: at tens of thousands of sockets, that is memory.
 */
type SocketOf = WebSocket & { connection: Connection }
function onMessage (this: WebSocket, data: RawData, isBinary: boolean): void { (this as SocketOf).connection.onFrame(data, isBinary) }
function onPong (this: WebSocket): void { (this as SocketOf).connection.lastSeen = Date.now() }
function onClose (this: WebSocket, code: number): void { (this as SocketOf).connection.onClosed(code) }
function onError (this: WebSocket, err: Error): void { (this as SocketOf).connection.onError(err) }

function requestIdOf (message: unknown): RequestIdValue {
  if (message === null || typeof message !== 'object') return undefined
  const id = (message as { id?: unknown }).id
  return (typeof id === 'string' && id.length <= 128) || Number.isInteger(id) ? id as string | number : undefined
}
