/**
 * The fastify-changefeed client: zero dependencies, for browsers and Node (pass a WebSocket constructor).
 *
 * - one socket; subscriptions are reference-counted per entity, so mount/unmount/mount (React StrictMode) sends one
 *   subscribe and no unsubscribe; after a reconnect every subscription is sent again in one batch, with `since`;
 * - reconnects with full-jitter exponential backoff, and never blindly: not after 4403/1008/1009, and after 4401
 *   only with a fresh token from `getToken()`;
 * - signs in in-band (`auth` message), so the token never appears in a URL, and refreshes it before it expires;
 * - notices a dead connection by itself (no pong in time), and checks at once when the page becomes visible,
 *   comes back online, or is restored from the back/forward cache.
 */

/** Entity type name → document type, for typed payloads: `new ChangefeedClient<{ RugbyGameState: GameState }>()`. */
export type EntityMap = Record<string, unknown>

export type ChangeType = 'created' | 'updated' | 'deleted' | 'appended' | 'archived'

export interface Notification<T = unknown> {
  entityType: string
  entityId: string
  /** tenanted types: whose entity it is */
  tenantId?: string
  changeType: ChangeType
  payloadType: 'minimal' | 'full' | 'events'
  timestamp: string
  version?: string
  position?: string
  origin?: string
  /** the document, for `full` types (null when deleted) */
  payload?: T | null
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'unauthorized' | 'closed'

export interface StateChange {
  from: ConnectionState
  to: ConnectionState
  reason: string
  /** the close code that caused it, if any */
  code?: number
  /** reconnection attempt number (1 = first retry) */
  attempt: number
  /** ms until the next attempt, when one is scheduled */
  nextRetryMs?: number
}

export interface SubscriptionEvents<T> {
  onNotification?: (notification: Notification<T>) => void
  /** the number of sockets watching the entity across the cluster, pushed when it changes */
  onWatchers?: (count: number) => void
  /** skip notifications of this client's own writes (those tagged with `client.origin`) */
  skipOwnWrites?: boolean
  /** changes may have been missed: refetch */
  onResync?: (reason: string) => void
  /** the server refused the subscription (code: forbidden, unauthenticated, unknown_entity_type, …) */
  onError?: (code: string, message: string) => void
}

/** The latest state of one watched entity, as React reads it. Replaced (never mutated) on each change. */
export interface EntitySnapshot<T> {
  status: 'pending' | 'subscribed' | 'error'
  notification?: Notification<T>
  /** the latest full payload */
  payload?: T | null
  /** watchers across the cluster, for subscriptions that asked (onWatchers, useWatcherCount) */
  watchers?: number
  error?: { code: string, message: string }
  /** increments on every notification or resync: a dependency for refetching */
  revision: number
}

/**
 * A handler property the client sets. Declared through a method so that its event parameter is compared both ways:
 * the client only writes these, and the DOM's handlers and `ws`'s take different event classes.
 */
type Handler<E> = { bivarianceHack (event: E): void }['bivarianceHack'] | null

/**
 * What the client uses of a socket: both the DOM's `WebSocket` and the `ws` package's `WebSocket` have it, and no
 * DOM type is needed to compile against it.
 */
export interface WebSocketLike {
  readonly readyState: number
  send(data: string): void
  close(code?: number, reason?: string): void
  onopen: Handler<unknown>
  onclose: Handler<{ code: number, reason: string }>
  onmessage: Handler<{ data: unknown }>
  onerror: Handler<unknown>
}

export interface ClientOptions {
  /** ws:// or wss:// URL of the server's /ws route */
  url: string
  /** Returns a JWT (or null for anonymous). Called before each connection and before the token expires. */
  getToken?: () => Promise<string | null | undefined> | string | null | undefined
  /** WebSocket constructor (Node: `import WebSocket from 'ws'`, or Node 22's global); default: the global one */
  WebSocket?: new (url: string) => WebSocketLike
  /** backoff: first retry cap, ceiling, and how long a connection must stay up before the attempt count resets */
  backoff?: { initialMs?: number, maxMs?: number, resetAfterMs?: number }
  /** client → server ping interval, and how long to wait for the pong before reconnecting */
  pingIntervalMs?: number
  pongTimeoutMs?: number
  /** refresh the token this long before it expires */
  refreshBeforeExpiryMs?: number
  /** connect on construction (default true) */
  autoConnect?: boolean
  /** source of randomness for the jitter (tests) */
  random?: () => number
  /**
   * This client's id for its own writes: send it with a write (for example as a header the API puts in
   * `changefeed.origin`), and the notification of that write carries it back. Default: a random id per client.
   */
  origin?: string
  /**
   * When the server refuses the token (or it expires) and `getToken()` has no fresh one: false (default) stops
   * (state `unauthorized`); true stays connected without it, so public subscriptions keep flowing while the others
   * report `unauthenticated`, and signs in again (resubscribing those) once `reauthenticate()` finds a token.
   */
  anonymousFallback?: boolean
}

/** Which tenant's entity to watch (tenanted types): without it, the server's default for the principal. */
export interface SubscribeOptions {
  tenantId?: string
  /** ask for watcher counts ("N watching") */
  counted?: boolean
}

/** The key of a subscription, as the server's subscriptionId: `<type>:<id>`, or `<type>@<tenantId>:<id>`. */
export function subscriptionKey (entityType: string, entityId: string, tenantId?: string): string {
  return tenantId === undefined ? entityType + ':' + entityId : entityType + '@' + tenantId + ':' + entityId
}

/** Full jitter: a uniformly random delay up to min(maxMs, initialMs · 2^(attempt-1)). */
export function backoffDelay (attempt: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1)))
}

/** Close codes after which reconnecting cannot help (policy, forbidden, too large). */
const FINAL_CODES = new Set([1008, 1009, 4403])
const UNAUTHENTICATED = 4401
/** resyncs of one entity within this long of each other reach the application as one */
const RESYNC_BURST_MS = 50
const OPEN = 1

interface Entry {
  key: string
  entityType: string
  entityId: string
  tenantId?: string
  listeners: Set<SubscriptionEvents<any>>
  /** React's subscribers to the snapshot */
  watchers: Set<() => void>
  snapshot: EntitySnapshot<any>
  /** last position (or version) seen: sent as `since` on resubscribe */
  since?: string
  /** recent positions: a notification delivered again (after a failover) is dropped */
  seen?: string[]
  /** a subscribe with `since` awaits its reply: what arrives before it is in the replay that follows */
  resuming?: boolean
  /** pending unsubscribe, cancelled when someone subscribes again first */
  releaseTimer?: ReturnType<typeof setTimeout>
  /** sent again after a reconnect: unless the server recovered what was missed, the owner must refetch */
  resubscribed?: string
  /** watcher counts were asked for */
  counted?: boolean
  /** a refused (rate-limited) subscribe waiting to be sent again */
  retryTimer?: ReturnType<typeof setTimeout>
  /** resyncs of one gap come in a burst: the application hears of it once */
  resyncTimer?: ReturnType<typeof setTimeout>
}

type Listener<A extends unknown[]> = (...args: A) => void

/**
 * An outbox position, `<epoch>:<n>`: resumable with `since`, and ordered within its epoch. The server's rule is
 * lib/position.ts; it is restated here because the SDK is one module with no imports (pages load it as is).
 */
const RESUMABLE = /^([0-9a-f]{8}):(\d+)$/

/** A notification at or before the entity's last position (a repeat after a failover) is stale. */
function stale (last: string | undefined, position: string): boolean {
  const a = last === undefined ? null : RESUMABLE.exec(last)
  const b = RESUMABLE.exec(position)
  return a !== null && b !== null && a[1] === b[1] && Number(b[2]) <= Number(a[2])
}


function tokenExpiry (token: string): number | null {
  try {
    const part = token.split('.')[1]
    const json = typeof atob === 'function'
      ? atob(part.replace(/-/g, '+').replace(/_/g, '/'))
      : (globalThis as unknown as { Buffer: { from(s: string, e: string): { toString(): string } } }).Buffer.from(part, 'base64url').toString()
    const exp = (JSON.parse(json) as { exp?: unknown }).exp
    return typeof exp === 'number' ? exp * 1000 : null
  } catch {
    return null
  }
}

export class ChangefeedClient<M extends EntityMap = EntityMap> {
  state: ConnectionState = 'idle'
  /** this client's origin id (see ClientOptions.origin) */
  readonly origin: string
  private ws: WebSocketLike | null = null
  private readonly entries = new Map<string, Entry>()
  private readonly stateListeners = new Set<Listener<[StateChange]>>()
  private readonly notificationListeners = new Set<Listener<[Notification]>>()
  private readonly resyncListeners = new Set<Listener<[string, string, string, string | undefined]>>()
  private attempt = 0
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  private pingTimer: ReturnType<typeof setInterval> | undefined
  private pongTimer: ReturnType<typeof setTimeout> | undefined
  private stableTimer: ReturnType<typeof setTimeout> | undefined
  private refreshTimer: ReturnType<typeof setTimeout> | undefined
  private tokenPromise: Promise<string | null | undefined> | null = null
  private freshTokenRequired = false
  private destroyed = false
  private everOpened = false
  private currentToken: string | null | undefined = null
  private refusedToken: string | null | undefined = null
  private readonly o: Required<Omit<ClientOptions, 'getToken' | 'WebSocket' | 'backoff' | 'anonymousFallback'>> & { backoff: Required<NonNullable<ClientOptions['backoff']>> }
  private readonly removePageListeners: () => void

  constructor (private readonly options: ClientOptions) {
    this.origin = options.origin ?? Math.random().toString(36).slice(2) + Date.now().toString(36)
    this.o = {
      url: options.url,
      origin: this.origin,
      pingIntervalMs: options.pingIntervalMs ?? 25_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      refreshBeforeExpiryMs: options.refreshBeforeExpiryMs ?? 30_000,
      autoConnect: options.autoConnect ?? true,
      random: options.random ?? Math.random,
      backoff: { initialMs: 500, maxMs: 30_000, resetAfterMs: 10_000, ...options.backoff }
    }
    this.removePageListeners = this.listenToPage()
    if (this.o.autoConnect) this.connect()
  }

  /** Observes connection state changes; returns the function that stops observing. */
  onState (listener: (change: StateChange) => void): () => void {
    this.stateListeners.add(listener)
    return () => this.stateListeners.delete(listener)
  }

  /** Observes every notification of every subscription (adapters: TanStack Query). */
  onNotification (listener: (notification: Notification) => void): () => void {
    this.notificationListeners.add(listener)
    return () => this.notificationListeners.delete(listener)
  }

  /** Observes every resync: (entityType, entityId, reason, tenantId of a tenant's subscription). */
  onResync (listener: (entityType: string, entityId: string, reason: string, tenantId?: string) => void): () => void {
    this.resyncListeners.add(listener)
    return () => this.resyncListeners.delete(listener)
  }

  /**
   * Watches one entity. Calls with the same type and id share one server subscription; the last release sends
   * the unsubscribe (on the next tick, so a release followed at once by a new subscribe sends nothing).
   */
  subscribe<K extends keyof M & string>(entityType: K, entityId: string, events: SubscriptionEvents<M[K]> = {}, options: SubscribeOptions = {}): () => void {
    const entry = this.entry(entityType, entityId, options.tenantId)
    entry.listeners.add(events)
    if (events.onWatchers !== undefined) this.countWatchers(entry)
    let released = false
    return () => {
      if (released) return
      released = true
      entry.listeners.delete(events)
      this.releaseLater(entry)
    }
  }

  /** For useSyncExternalStore: subscribe to one entity's snapshot (`counted`: ask for watcher counts). */
  watch<K extends keyof M & string>(entityType: K, entityId: string, options: SubscribeOptions = {}): { subscribe: (onChange: () => void) => () => void, getSnapshot: () => EntitySnapshot<M[K]> } {
    const key = subscriptionKey(entityType, entityId, options.tenantId)
    return {
      subscribe: (onChange) => {
        const entry = this.entry(entityType, entityId, options.tenantId)
        entry.watchers.add(onChange)
        if (options.counted === true) this.countWatchers(entry)
        return () => {
          entry.watchers.delete(onChange)
          this.releaseLater(entry)
        }
      },
      getSnapshot: () => (this.entries.get(key)?.snapshot ?? PENDING) as EntitySnapshot<M[K]>
    }
  }

  /**
   * Asks `getToken()` for a token now and signs in with it when it is not the one refused last (after a refusal
   * with `anonymousFallback`, or to pick up a new user's token); the subscriptions refused for want of it follow.
   */
  async reauthenticate (): Promise<void> {
    const token = await this.token()
    if (token === null || token === undefined || token === this.refusedToken) return
    if (this.state === 'open') this.authenticate(token)
    else this.connect()
  }

  /** Opens the connection (idempotent). */
  connect (): void {
    if (this.destroyed || this.ws !== null || this.retryTimer !== undefined) return
    void this.open()
  }

  /** Closes the socket and forgets the token and every subscription. The client cannot be used again. */
  destroy (): void {
    this.destroyed = true
    this.clearTimers()
    this.removePageListeners()
    this.tokenPromise = null
    for (const entry of this.entries.values()) {
      clearTimeout(entry.releaseTimer)
      clearTimeout(entry.retryTimer)
      clearTimeout(entry.resyncTimer)
    }
    this.entries.clear()
    const ws = this.ws
    this.ws = null
    if (ws !== null) {
      ws.onclose = null
      ws.close(1000, 'client destroyed')
    }
    this.setState('closed', 'destroyed')
    this.stateListeners.clear()
    this.notificationListeners.clear()
    this.resyncListeners.clear()
  }

  private entry (entityType: string, entityId: string, tenantId?: string): Entry {
    const key = subscriptionKey(entityType, entityId, tenantId)
    let entry = this.entries.get(key)
    if (entry === undefined) {
      entry = { key, entityType, entityId, tenantId, listeners: new Set(), watchers: new Set(), snapshot: { status: 'pending', revision: 0 } }
      this.entries.set(key, entry)
      this.sendSubscribe(entry)
    }
    clearTimeout(entry.releaseTimer)
    entry.releaseTimer = undefined
    return entry
  }

  private releaseLater (entry: Entry): void {
    if (entry.listeners.size > 0 || entry.watchers.size > 0 || entry.releaseTimer !== undefined) return
    entry.releaseTimer = setTimeout(() => {
      entry.releaseTimer = undefined
      if (entry.listeners.size > 0 || entry.watchers.size > 0) return
      clearTimeout(entry.resyncTimer)
      this.entries.delete(entry.key)
      this.send({ type: 'unsubscribe', data: { subscriptionId: entry.key } })
    }, 0)
  }

  private countWatchers (entry: Entry): void {
    if (entry.counted === true) return
    entry.counted = true
    // subscribing again is idempotent on the server; this time it asks for counts too
    this.sendSubscribe(entry)
  }

  private retrySubscribe (entry: Entry): void {
    clearTimeout(entry.retryTimer)
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = undefined
      if (this.entries.get(entry.key) === entry) this.sendSubscribe(entry)
    }, 250 + Math.floor(this.o.random() * 1000))
  }

  private sendSubscribe (entry: Entry): void {
    const data: Record<string, string | boolean> = { entityType: entry.entityType, entityId: entry.entityId }
    entry.resuming = entry.since !== undefined
    if (entry.tenantId !== undefined) data.tenantId = entry.tenantId
    if (entry.since !== undefined) data.since = entry.since
    if (entry.counted === true) data.watchers = true
    // replies carry this id: they are matched by it, whatever name the server gives the entity
    this.send({ type: 'subscribe', id: entry.key, data })
  }

  private send (message: unknown): void {
    if (this.ws !== null && this.ws.readyState === OPEN && this.state === 'open') this.ws.send(JSON.stringify(message))
  }

  /** One token request at a time: concurrent callers share it. */
  private async token (): Promise<string | null | undefined> {
    if (this.options.getToken === undefined) return null
    this.tokenPromise ??= Promise.resolve(this.options.getToken()).finally(() => { this.tokenPromise = null })
    return await this.tokenPromise
  }

  private async open (): Promise<void> {
    // a retry is already 'reconnecting' (with its attempt and delay)
    if (this.attempt === 0) this.setState('connecting', 'connecting')
    let token: string | null | undefined
    try {
      token = await this.token()
    } catch {
      return this.scheduleRetry('getToken failed')
    }
    if (this.destroyed) return
    if (this.freshTokenRequired && (token === null || token === undefined || token === this.refusedToken)) {
      if (this.options.anonymousFallback !== true) return this.setState('unauthorized', 'no fresh token')
      token = null
    }
    this.currentToken = token
    const Ctor = this.options.WebSocket ?? (globalThis as unknown as { WebSocket: new (url: string) => WebSocketLike }).WebSocket
    const ws = new Ctor(this.o.url)
    this.ws = ws
    ws.onopen = () => {
      if (this.ws !== ws) return
      if (token === null || token === undefined) this.freshTokenRequired = false
      this.setState('open', 'connected')
      // signing in first: the server handles a socket's messages in order, so the batch below runs signed in
      if (token !== null && token !== undefined) this.authenticate(token)
      const reconnected = this.everOpened
      this.everOpened = true
      for (const entry of this.entries.values()) {
        entry.resubscribed = reconnected ? 'reconnected' : undefined
        this.sendSubscribe(entry)
      }
      this.startLiveness()
      this.stableTimer = setTimeout(() => { this.attempt = 0 }, this.o.backoff.resetAfterMs)
    }
    ws.onmessage = (event) => this.onMessage(String(event.data))
    ws.onerror = () => {}
    ws.onclose = (event) => {
      if (this.ws !== ws) return
      this.ws = null
      this.onClose(event.code, event.reason)
    }
  }

  private authenticate (token: string): void {
    this.send({ type: 'auth', id: 'auth', data: { token } })
    clearTimeout(this.refreshTimer)
    const expiresAt = tokenExpiry(token)
    if (expiresAt === null) return
    const wait = Math.max(0, expiresAt - Date.now() - this.o.refreshBeforeExpiryMs)
    this.refreshTimer = setTimeout(() => { void this.refresh() }, Math.min(wait, 2 ** 31 - 1))
  }

  private async refresh (): Promise<void> {
    try {
      const token = await this.token()
      if (token !== null && token !== undefined && this.state === 'open') this.authenticate(token)
    } catch {
      // the server closes with 4401 at expiry; the reconnect asks again
    }
  }

  private onClose (code: number, reason: string): void {
    this.stopLiveness()
    if (this.destroyed) return
    if (code === UNAUTHENTICATED) {
      // reconnect only with a token that getToken() hands out afresh; never with the one just refused
      this.refusedToken = this.currentToken
      if (this.options.getToken === undefined || this.freshTokenRequired) return this.setState('unauthorized', reason || 'unauthenticated', code)
      this.freshTokenRequired = true
    } else if (FINAL_CODES.has(code)) {
      return this.setState('closed', reason || 'refused', code)
    }
    this.scheduleRetry(reason || 'connection closed', code)
  }

  private scheduleRetry (reason: string, code?: number): void {
    if (this.destroyed) return
    this.attempt++
    const delay = backoffDelay(this.attempt, this.o.backoff.initialMs, this.o.backoff.maxMs, this.o.random)
    this.setState('reconnecting', reason, code, delay)
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined
      void this.open()
    }, delay)
  }

  private onMessage (text: string): void {
    this.clearPongTimer()
    let message: { type?: string, id?: unknown, data?: any }
    try {
      message = JSON.parse(text)
    } catch {
      return
    }
    this.handle(message)
  }

  private handle (message: { type?: string, id?: unknown, data?: any }): void {
    const data = message.data
    switch (message.type) {
      case 'batch':
        // a busy feed: several notifications in one frame
        if (Array.isArray(data)) for (const item of data) this.handle(item)
        return
      case 'notification': {
        // the entity's own subscription (and for a tenant's entity the subscription of every tenant's), then the
        // type's feeds (entityId "*")
        const [own, feeds] = this.keysOf(data)
        for (const key of [...own, ...feeds]) {
          const entry = this.entries.get(key)
          if (entry === undefined || entry.resuming === true) continue
          const ofEntity = own.includes(key)
          if (typeof data.position === 'string') {
            const seen = entry.seen ??= []
            if (seen.includes(data.position) || (ofEntity && stale(entry.since, data.position))) continue
            if (seen.push(data.position) > 64) seen.shift()
            if (ofEntity) entry.since = data.position
          }
          this.update(entry, { status: 'subscribed', notification: data, payload: data.payloadType === 'full' ? data.payload : entry.snapshot.payload })
          const mine = data.origin !== undefined && data.origin === this.origin
          for (const l of entry.listeners) if (!(mine && l.skipOwnWrites === true)) l.onNotification?.(data)
        }
        for (const l of this.notificationListeners) l(data)
        return
      }
      case 'watchers': {
        const entry = this.entryOf(data)
        if (entry === undefined) return
        this.update(entry, { watchers: data.count }, false)
        for (const l of entry.listeners) l.onWatchers?.(data.count)
        return
      }
      case 'subscribed': {
        const entry = this.entries.get(String(message.id)) ?? this.entryOf(data)
        if (entry === undefined) return
        entry.resuming = false
        if (entry.snapshot.status !== 'subscribed') this.update(entry, { status: 'subscribed', error: undefined }, false)
        if (entry.resubscribed !== undefined && data.recovered !== true) this.resync(entry, entry.resubscribed)
        entry.resubscribed = undefined
        return
      }
      case 'subscription_error': {
        const entry = this.entries.get(String(message.id)) ?? this.entryOf(data)
        if (entry === undefined) return
        entry.resuming = false
        // the server failed, not the request: try again shortly
        if (data.code === 'internal_error') return this.retrySubscribe(entry)
        this.update(entry, { status: 'error', error: { code: data.code, message: data.error } })
        for (const l of entry.listeners) l.onError?.(data.code, data.error)
        return
      }
      case 'authenticated':
        this.freshTokenRequired = false
        // signed in (again): what was refused for want of it is asked for once more
        for (const entry of this.entries.values()) if (entry.snapshot.error?.code === 'unauthenticated') this.sendSubscribe(entry)
        return
      case 'error': {
        // the sign-in was refused: this token will not do; reconnect with a fresh one (or stop: unauthorized), or
        // with anonymousFallback stay on without it
        if (message.id === 'auth' && data?.code === 'unauthenticated') {
          this.refusedToken = this.currentToken
          if (this.options.anonymousFallback !== true) this.dropConnection(UNAUTHENTICATED, 'token refused')
          return
        }
        // a subscribe beyond the server's rate: send it again later rather than go without it
        const entry = typeof message.id === 'string' ? this.entries.get(message.id) : undefined
        if (entry !== undefined && data?.code === 'rate_limited') this.retrySubscribe(entry)
        return
      }
      case 'resync': {
        const targets = data.entityType === undefined ? [...this.entries.values()] : this.keysOf(data)[0].map((key) => this.entries.get(key))
        for (const entry of targets) {
          // a resume under way answers this one too
          if (entry === undefined || entry.resuming === true) continue
          // a resumable position (outbox mode, `<epoch>:<n>`): ask for what was missed; a refusal resyncs then
          if (entry.since !== undefined && RESUMABLE.test(entry.since)) {
            entry.resubscribed = data.reason
            this.sendSubscribe(entry)
          } else this.resync(entry, data.reason)
        }
      }
    }
  }

  /**
   * The keys of the subscriptions a message about an entity concerns: its own (a tenant's entity: the tenant's and
   * the every-tenant one), and its type's feeds.
   */
  private keysOf (data: { entityType: string, entityId: string, tenantId?: string }): [string[], string[]] {
    const { entityType, entityId, tenantId } = data
    return tenantId === undefined
      ? [[subscriptionKey(entityType, entityId)], [subscriptionKey(entityType, '*')]]
      : [[subscriptionKey(entityType, entityId, tenantId), subscriptionKey(entityType, entityId)], [subscriptionKey(entityType, '*', tenantId), subscriptionKey(entityType, '*')]]
  }

  /** The subscription a reply or a count names (the tenant's, else the one without a tenant). */
  private entryOf (data: { entityType: string, entityId: string, tenantId?: string }): Entry | undefined {
    for (const key of this.keysOf(data)[0]) {
      const entry = this.entries.get(key)
      if (entry !== undefined) return entry
    }
    return undefined
  }

  /** Tells the application to refetch: once for a burst of resyncs (one gap can be reported several times). */
  private resync (entry: Entry, reason: string): void {
    if (entry.resyncTimer !== undefined) return
    entry.resyncTimer = setTimeout(() => {
      entry.resyncTimer = undefined
      if (this.entries.get(entry.key) !== entry) return
      this.update(entry, {})
      for (const l of entry.listeners) l.onResync?.(reason)
      for (const l of this.resyncListeners) l(entry.entityType, entry.entityId, reason, entry.tenantId)
    }, RESYNC_BURST_MS)
  }

  private update (entry: Entry, change: Partial<EntitySnapshot<unknown>>, bump = true): void {
    entry.snapshot = { ...entry.snapshot, ...change, revision: entry.snapshot.revision + (bump ? 1 : 0) }
    for (const w of entry.watchers) w()
  }

  /** Receive-side liveness: a ping every interval; no answer (any frame counts) in time means the link is dead. */
  private startLiveness (): void {
    this.pingTimer = setInterval(() => this.checkLiveness(), this.o.pingIntervalMs)
  }

  private checkLiveness (): void {
    if (this.ws === null || this.state !== 'open' || this.pongTimer !== undefined) return
    this.send({ type: 'ping' })
    this.pongTimer = setTimeout(() => {
      this.pongTimer = undefined
      this.dropConnection(4000, 'no pong in time')
    }, this.o.pongTimeoutMs)
  }

  /** Closes the socket from this side and goes on as if the server had closed it with `code`. */
  private dropConnection (code: number, reason: string): void {
    const ws = this.ws
    if (ws === null) return
    this.ws = null
    ws.onclose = null
    ws.close(code === UNAUTHENTICATED ? 4000 : code, reason)
    this.onClose(code, reason)
  }

  private clearPongTimer (): void {
    clearTimeout(this.pongTimer)
    this.pongTimer = undefined
  }

  private stopLiveness (): void {
    clearInterval(this.pingTimer)
    clearTimeout(this.stableTimer)
    clearTimeout(this.refreshTimer)
    this.clearPongTimer()
  }

  private clearTimers (): void {
    this.stopLiveness()
    clearTimeout(this.retryTimer)
    this.retryTimer = undefined
  }

  /** The page became visible, came online, or was restored: check now instead of waiting. */
  private wake (): void {
    if (this.destroyed || this.state === 'unauthorized' || this.state === 'closed') return
    if (this.state === 'open') return this.checkLiveness()
    if (this.retryTimer !== undefined) {
      clearTimeout(this.retryTimer)
      this.retryTimer = undefined
      void this.open()
    }
  }

  private listenToPage (): () => void {
    const w = globalThis as unknown as { addEventListener?: Window['addEventListener'], removeEventListener?: Window['removeEventListener'], document?: Document }
    if (typeof w.addEventListener !== 'function') return () => {}
    const wake = (): void => { if (w.document?.visibilityState !== 'hidden') this.wake() }
    w.addEventListener('online', wake)
    w.addEventListener('pageshow', wake)
    w.document?.addEventListener('visibilitychange', wake)
    return () => {
      w.removeEventListener?.('online', wake)
      w.removeEventListener?.('pageshow', wake)
      w.document?.removeEventListener('visibilitychange', wake)
    }
  }

  private setState (to: ConnectionState, reason: string, code?: number, nextRetryMs?: number): void {
    const from = this.state
    this.state = to
    const change: StateChange = { from, to, reason, attempt: this.attempt }
    if (code !== undefined) change.code = code
    if (nextRetryMs !== undefined) change.nextRetryMs = nextRetryMs
    for (const l of this.stateListeners) l(change)
  }
}

const PENDING: EntitySnapshot<never> = Object.freeze({ status: 'pending', revision: 0 }) as EntitySnapshot<never>
