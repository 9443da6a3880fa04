/**
 * One WebSocket connection: parses and validates frames, answers each request once (lib/ws/requests.ts), writes
 * frames, signs in and refreshes credentials in band, and has a single close path. What it watches is its
 * Subscriptions (lib/ws/subscriptions.ts; each kind of request in its own file, lib/ws/subscribe*.ts). Bad input gets a coded `error` and the socket stays open; persistent
 * abuse closes it (1008).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import type { Authenticator } from '../auth/authenticate.js'
import { sameIdentity, type Principal } from '../auth/principal.js'
import { CloseCode, WireError, type WireErrorCode } from '../errors.js'
import type { ResolvedOptions } from '../options.js'
import type { FrameMeta } from './fanout.js'
import { OutboundQueue, type OutboundLimits } from './outbound.js'
import { sendPrepared, writesDirect, type PreparedFrame } from './prepared.js'
import { TokenBucket, type ConnectionCounter } from './limits.js'
import { RequestQueue, type Reply } from './requests.js'
import { Subscriptions, type Subscriber, type SubscriptionServices } from './subscriptions.js'
import { subscribe } from './subscribe.js'
import { unsubscribe } from './unsubscribe.js'
import { presenceRequest } from './presence.js'
import type { ReplayedFrames } from '../reads/replay.js'
import { encodeAuthenticated, encodeError, encodePong, encodeSubscribedMany, encodeSubscriptionError, isUnreadable, readClientMessage, type RequestIdValue } from '../protocol/index.js'

export interface ConnectionServices extends SubscriptionServices {
  options: ResolvedOptions
  authenticator: Authenticator
  /** open connections per signed-in user (maxConnectionsPerUser) */
  users: ConnectionCounter
  log: FastifyBaseLogger
  counters: { slowConsumerCloses: number, conflated: number, replayed: number, resumes: Record<string, number> }
  /** when a socket's writes are held and conflated (from limits; one object for every socket) */
  outboundLimits: OutboundLimits
  /** `subscriptions`: how many it held when it closed */
  onClosed(connection: Connection, code: number, subscriptions: number): void
}

/** The key a principal is counted under for maxConnectionsPerUser; null for anonymous sockets. */
export function userKey (principal: Principal): string | null {
  return principal.userId === null ? null : principal.kind + ':' + principal.userId
}

/** setTimeout cannot wait longer than this (about 24.8 days) */
const MAX_TIMER_MS = 2 ** 31 - 1

/** ws's options for a text frame given as bytes */
const TEXT = { binary: false } as const

/** After a close frame is sent, how long the peer has to answer before the socket is dropped. */
const CLOSE_GRACE_MS = 2000

let nextId = 1

export class Connection implements Subscriber {
  readonly id = nextId++
  /** last time anything arrived from the peer (frame or pong) */
  lastSeen = Date.now()
  state: 'open' | 'closing' | 'closed' = 'open'
  readonly subscriptions: Subscriptions
  // what a socket needs only once it does something: made then (10,000 idle sockets should cost little)
  private requests: RequestQueue | undefined
  private subscribeBucket: TokenBucket | undefined
  private authBucket: TokenBucket | undefined
  private badFrameBucket: TokenBucket | undefined
  /** made when the socket first falls behind: it holds and conflates while the peer reads slowly */
  private outbound: OutboundQueue | undefined
  private readonly limits: ResolvedOptions['limits']
  /** prepared frames go straight to the TCP stream (lib/ws/prepared.ts) */
  private readonly direct: boolean
  private expiryTimer: NodeJS.Timeout | null = null
  private _principal: Principal

  /** `principal` is already counted in services.users when it is a user. */
  constructor (
    private readonly socket: WebSocket,
    principal: Principal,
    readonly ip: string,
    private readonly services: ConnectionServices
  ) {
    this.limits = services.options.limits
    this.direct = writesDirect(socket)
    this._principal = principal
    this.subscriptions = new Subscriptions(this, services, this.limits)
    this.scheduleExpiry()
    ;(socket as SocketOf).connection = this
    socket.on('message', onMessage)
    socket.on('pong', onPong)
    socket.on('close', onClose)
    socket.on('error', onError)
  }

  get principal (): Principal {
    return this._principal
  }

  get isOpen (): boolean {
    return this.state === 'open'
  }

  /**
   * Writes a pre-encoded frame. While the peer reads slowly, notifications of `full`, `delta` and `minimal`
   * entities are held and conflated (the latest state per entity); a peer that falls further behind is closed
   * (4409). A `delta` type's change goes out as its patch when the last frame of the entity this socket was sent
   * is the patch's base, otherwise in full.
   */
  deliver (frame: string, meta?: FrameMeta, shared?: PreparedFrame): boolean {
    if (this.state !== 'open') return false
    if (meta === undefined) return this.write(frame, null, shared)
    if (this.subscriptions.intercept(frame, meta)) return true
    switch (meta.payloadType) {
      case 'delta': {
        const { patch } = meta
        const base = this.subscriptions.advance(meta)
        if (patch === undefined || base !== patch.base) return this.write(frame, meta.key, meta.prepared)
        patch.patched++
        // held and then conflated with a later change, it becomes that change's full frame
        return this.write(patch.frame, meta.key, patch.prepared, frame)
      }
      case 'full':
      case 'minimal':
      case 'signal':
        return this.write(frame, meta.key, meta.prepared)
      default:
        return this.write(frame, null, meta.prepared)
    }
  }

  /** `full`: a patch frame's full counterpart, what it becomes when a later frame of the entity is merged into it. */
  private write (frame: string, key: string | null, prepared?: PreparedFrame, full?: string): boolean {
    if (this.state !== 'open') return false
    // a socket that keeps up (nearly all of them) writes at once and never needs a queue
    if (this.outbound === undefined && this.socket.bufferedAmount <= this.services.outboundLimits.highWaterBytes) {
      if (prepared === undefined) this.socket.send(frame, TEXT)
      else sendPrepared(this.socket, this.direct, prepared)
      return true
    }
    const outbound = this.outbound ??= new OutboundQueue(this.socket, this.services.outboundLimits)
    const before = outbound.conflated
    const result = outbound.push(frame, key, prepared?.bytes, full)
    this.services.counters.conflated += outbound.conflated - before
    if (result !== 'overflow') return true
    this.services.counters.slowConsumerCloses++
    this.services.log.warn({ connection: this.id, buffered: this.socket.bufferedAmount, held: outbound.held }, 'changefeed: slow consumer closed')
    this.close(CloseCode.slowConsumer, 'slow consumer')
    return false
  }

  /** Replies and other frames that are never conflated, in order with the notifications. */
  send (frame: string): void {
    if (this.state === 'open') this.write(frame, null)
  }

  writeReplay (channel: string, frames: ReplayedFrames): void {
    // a live notification held for this slow socket is in the replay too: it must not go out ahead of it
    this.outbound?.discard(channel)
    for (const { frame } of frames) this.write(frame, null)
  }

  inOrder (task: () => Promise<void>): void {
    this.requests ??= new RequestQueue(this.id, this.services.log)
    this.requests.inOrder(task)
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
    const timer = setTimeout(() => { if (this._principal.kind === 'anonymous') this.close(CloseCode.unauthenticated, 'authentication required') }, ms)
    timer.unref()
  }

  /** Credentials that expire close the socket with 4401 then, unless an `auth` message renewed them. */
  private scheduleExpiry (): void {
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer)
    this.expiryTimer = null
    const expiresAt = this._principal.expiresAt
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
    this.services.onClosed(this, code, this.subscriptions.size)
    if (this.expiryTimer !== null) clearTimeout(this.expiryTimer)
    const key = userKey(this._principal)
    if (key !== null) this.services.users.release(key)
    this.subscriptions.endAll()
  }

  onFrame (data: RawData, isBinary: boolean): void {
    this.lastSeen = Date.now()
    if (this.state !== 'open') return
    if (isBinary) return this.reject(undefined, WireError.binaryFrame, 'frames are JSON text')
    const text = data.toString()
    // ws enforces maxPayload when this plugin registered it; a host's own @fastify/websocket may allow more
    if (text.length > this.limits.maxMessageBytes) return this.close(CloseCode.tooLarge, 'frame too large')
    const message = readClientMessage(text)
    if (isUnreadable(message)) return this.reject(message.id, message.code, message.error)
    const { id } = message
    const failed = (): string => encodeError(id, WireError.internal, 'the server failed; retry')
    switch (message.type) {
      case 'ping':
        return this.send(encodePong(id))
      case 'subscribe': {
        const body = message.data
        // the rate counts entities, not frames
        if (!this.subscribeTokens().take('entityIds' in body ? body.entityIds.length : 1)) return this.reject(id, WireError.rateLimited, 'too many subscribe requests; slow down')
        const failure = 'entityIds' in body
          ? () => encodeSubscribedMany(id, body.entityType, body.tenantId, { subscribed: [], errors: body.entityIds.map((entityId) => ({ entityId, code: WireError.internal, error: 'the server failed; retry' })) })
          : () => encodeSubscriptionError(id, body, WireError.internal, 'the server failed; retry')
        return this.request(id, failure, async (reply) => await subscribe(this.subscriptions, reply, body))
      }
      case 'unsubscribe': {
        const body = message.data
        if (!this.subscribeTokens().take('entityIds' in body ? body.entityIds.length : 1)) return this.reject(id, WireError.rateLimited, 'too many unsubscribe requests; slow down')
        return this.request(id, failed, async (reply) => await unsubscribe(this.subscriptions, reply, body))
      }
      case 'auth':
        // each one costs a signature check, and may re-check every subscription: a client refreshes once per token
        this.authBucket ??= new TokenBucket(this.limits.authMessagesPerMinute, this.limits.authMessagesPerMinute / 60)
        if (!this.authBucket.take()) return this.reject(id, WireError.rateLimited, 'too many auth messages; refresh once per token lifetime')
        return this.request(id, failed, async (reply) => await this.authenticate(reply, message.data.token))
      case 'presence': case 'signal':
        return this.request(id, failed, async (reply) => await presenceRequest(this.subscriptions, reply, message.type, message.data))
    }
  }

  private request (id: RequestIdValue, failure: () => string, task: (reply: Reply) => Promise<void>): void {
    this.requests ??= new RequestQueue(this.id, this.services.log)
    this.requests.request(id, (frame) => this.send(frame), failure, task)
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

  /**
   * In-band sign-in or token refresh. The socket keeps its identity when the token is refused. A refreshed
   * token must be the same user's; subscriptions it no longer allows end with a `subscription_error`. A refresh
   * with the same identity, roles and tenant only moves the expiry: access, owner queries included, depends on
   * nothing else of the principal.
   */
  private async authenticate (reply: Reply, token: string): Promise<void> {
    const identity = await this.services.authenticator.verifyInBand(token, this.ip)
    if (this.state !== 'open') return
    if ('failure' in identity) return this.reject(reply, WireError.unauthenticated, `token refused: ${identity.failure}`)
    const next = identity.principal
    const before = userKey(this._principal)
    const after = userKey(next)
    if (before !== null && before !== after) return this.reject(reply, WireError.forbidden, 'the token is for another user')
    if (before === null && after !== null && !this.services.users.acquire(after)) {
      return this.close(CloseCode.tooManyConnections, 'too many connections for this user')
    }
    const unchanged = sameIdentity(this._principal, next)
    this._principal = next
    this.scheduleExpiry()
    if (!unchanged) await this.subscriptions.recheck(next)
    reply.send(encodeAuthenticated(reply.id, next))
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
