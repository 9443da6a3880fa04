/**
 * The fastify-changefeed client: no dependencies, for browsers and Node (Node before 22 has no global WebSocket:
 * pass one, e.g. `ws`'s, as the `WebSocket` option; without it the constructor throws CHANGEFEED_NO_WEBSOCKET).
 *
 * - one socket; subscriptions are reference-counted per entity, so mount/unmount/mount (React StrictMode) sends one
 *   subscribe and no unsubscribe; after a reconnect every subscription is sent again in one batch, with `since`;
 * - snapshots: a subscription can start from the entity's state, read by the server so that every later change
 *   arrives as a notification; many entities of a type go in one request; a live query (`subscribeWhere`) keeps
 *   the entities matching a filter;
 * - reconnects with full-jitter exponential backoff, and never blindly: not after 4403/1008/1009, and after 4401
 *   only with a fresh token from `getToken()`;
 * - signs in in-band (`auth` message), so the token never appears in a URL, and refreshes it before it expires;
 * - notices a dead connection by itself (no pong in time), and checks at once when the page becomes visible,
 *   comes back online, or is restored from the back/forward cache.
 *
 * The parts: connection.ts (the socket, backoff.ts, credentials.ts, liveness.ts), subscription.ts (one entity's
 * state with the server; patch-base.ts, a delta type's document) and query.ts (a live query), both held.ts (held by
 * handles, handle.ts, and retried), batch.ts (requests for many), frames.ts (frames in and out), dispatch.ts (each
 * received frame to what it concerns: the interfaces of receivers.ts, which those classes implement); the
 * protocol's constants and rules are lib/protocol/wire.ts and lib/protocol/where.ts, shared with the server.
 * Browsers without a bundler load dist/lib/client/browser.js, all of it in one module (`npm run build`).
 */
import { subscriptionIdOf } from '../protocol/wire.js'
import { filterIdOf, type Where } from '../protocol/where.js'
import { Batcher } from './batch.js'
import { Connection } from './connection.js'
import { dispatch } from './dispatch.js'
import type { DispatchTarget } from './receivers.js'
import { handleOf } from './handle.js'
import { Filter, PENDING_QUERY, type FilterHost } from './query.js'
import { PENDING, Subscription, type SubscriptionHost } from './subscription.js'
import { PresenceRoom, type PresenceHandle } from './presence.js'
import type {
  ClientOptions, ConnectionState, EntityMap, EntitySnapshot, EntityState, EntitySubscription, LiveQuery,
  LiveQueryOptions, LiveQueryState, Notification, ResyncListener, StateChange, SubscribeOptions, SubscriptionEvents
} from './types.js'

export type {
  ChangeType, ClientOptions, ConnectionState, EntityMap, EntitySnapshot, EntityState, EntitySubscription, LiveQuery,
  LiveQueryOptions, LiveQueryState, Notification, ResyncListener, StateChange, SubscribeOptions, SubscriptionEvents,
  SubscriptionHandle, Token, WebSocketLike
} from './types.js'
export type { Where, WhereScalar } from '../protocol/where.js'
export type { PresenceEvents, PresenceHandle, PresenceMember, PresenceState } from './presence.js'
export type { WireErrorCode } from '../protocol/wire.js'
export { CloseCode, WireError } from '../protocol/wire.js'
export { backoffDelay } from './backoff.js'
export { ChangefeedClientError, ClientError, type ClientErrorCode } from './errors.js'
/** The key of a subscription: the server's subscriptionId, `<type>:<id>`, or `<type>@<tenantId>:<id>`. */
export { subscriptionIdOf as subscriptionKey } from '../protocol/wire.js'

export class ChangefeedClient<M extends EntityMap = EntityMap> {
  /** this client's origin id (see ClientOptions.origin) */
  readonly origin: string
  private readonly connection: Connection
  private readonly subscriptions = new Map<string, Subscription>()
  private readonly filters = new Map<string, Filter>()
  private readonly presences = new Map<string, PresenceRoom>()
  private readonly batcher: Batcher
  private readonly snapshotListeners = new Set<(state: EntityState) => void>()
  private readonly stateListeners = new Set<(change: StateChange) => void>()
  private readonly notificationListeners = new Set<(notification: Notification) => void>()
  private readonly resyncListeners = new Set<ResyncListener>()
  private readonly host: SubscriptionHost
  private readonly filterHost: FilterHost

  constructor (options: ClientOptions) {
    const origin = options.origin ?? Math.random().toString(36).slice(2) + Date.now().toString(36)
    this.origin = origin
    const random = options.random ?? Math.random
    const snapshotted = (state: EntityState): void => { for (const l of this.snapshotListeners) l(state) }
    this.batcher = new Batcher({ write: (message) => this.connection.send(message), writable: () => this.connection.writable() }, this.subscriptions)
    this.host = {
      origin,
      random,
      send: (message) => this.batcher.send(message),
      resynced: (s, reason) => { for (const l of this.resyncListeners) l(s.entityType, s.entityId, reason, s.tenantId) },
      released: (s) => { if (this.subscriptions.get(s.key) === s) this.subscriptions.delete(s.key) },
      snapshotted
    }
    this.filterHost = {
      random,
      send: (message) => this.connection.send(message),
      released: (f) => { if (this.filters.get(f.key) === f) this.filters.delete(f.key) },
      snapshotted
    }
    const target: DispatchTarget = {
      subscriptions: this.subscriptions,
      filters: this.filters,
      batches: this.batcher,
      presences: this.presences,
      signedIn: () => this.connection.signedIn(),
      tokenRefused: () => this.connection.tokenRefused(),
      notified: (notification) => { for (const l of this.notificationListeners) l(notification) }
    }
    this.connection = new Connection(options, {
      state: (change) => { for (const l of this.stateListeners) l(change) },
      opened: (reconnected) => {
        this.batcher.together(() => { for (const s of this.subscriptions.values()) s.onOpen(reconnected) })
        for (const f of this.filters.values()) f.onOpen(reconnected)
        for (const p of this.presences.values()) p.onOpen()
      },
      closed: () => {
        this.batcher.closed()
        for (const s of this.subscriptions.values()) s.onClose()
        for (const f of this.filters.values()) f.onClose()
        for (const p of this.presences.values()) p.onClose()
      },
      frame: (frame) => dispatch(frame, target)
    })
    if (options.autoConnect ?? true) this.connection.connect()
  }

  /** The connection's state: idle, connecting, open, reconnecting, unauthorized (no usable token), closed. */
  get state (): ConnectionState {
    return this.connection.state
  }

  /** Observes connection state changes; returns the function that stops observing. */
  onState (listener: (change: StateChange) => void): () => void {
    this.stateListeners.add(listener)
    return () => this.stateListeners.delete(listener)
  }

  /**
   * Observes every notification of every subscription (adapters: TanStack Query), each before the subscription's
   * own handlers get it.
   */
  onNotification (listener: (notification: Notification) => void): () => void {
    this.notificationListeners.add(listener)
    return () => this.notificationListeners.delete(listener)
  }

  /**
   * Observes every resync: (entityType, entityId, reason, tenantId of a tenant's subscription). A resync answered
   * with a fresh state (a snapshot with the document) reaches `onSnapshot` instead.
   */
  onResync (listener: ResyncListener): () => void {
    this.resyncListeners.add(listener)
    return () => this.resyncListeners.delete(listener)
  }

  /** Observes every snapshot of every subscription, and every entity of a live query's (adapters: TanStack Query). */
  onSnapshot (listener: (state: EntityState) => void): () => void {
    this.snapshotListeners.add(listener)
    return () => this.snapshotListeners.delete(listener)
  }

  /**
   * Watches one entity (or with entityId "*" a feed type's every entity). Calls with the same type and id share one
   * server subscription; the last handle closed sends the unsubscribe (on the next tick, so a close followed at
   * once by a new subscribe sends nothing). Returns the handle: its state (`status`, `payload`, `getSnapshot()`),
   * `onChange()`, and `close()`; the handle is also the function that closes it.
   */
  subscribe<K extends keyof M & string>(entityType: K, entityId: string, events: SubscriptionEvents<M[K]> = {}, options: SubscribeOptions = {}): EntitySubscription<M[K]> {
    const subscription = this.hold(entityType, entityId, options.tenantId, options.snapshot === true || events.onSnapshot !== undefined)
    // the entity map is the application's word for what the server sends of this type
    const listener = events as SubscriptionEvents<unknown>
    subscription.listeners.add(listener)
    if (events.onWatchers !== undefined || options.counted === true) subscription.count()
    // a late holder starts from the state the subscription holds already
    const { current } = subscription
    if (current !== undefined && listener.onSnapshot !== undefined) {
      queueMicrotask(() => { if (subscription.listeners.has(listener)) listener.onSnapshot?.(current) })
    }
    const handle = handleOf(subscription, 'payload', () => subscription.listeners.delete(listener))
    const { onChange } = listener
    if (onChange !== undefined) handle.onChange((state) => onChange(state, entityId))
    return handle as EntitySubscription<M[K]>
  }

  /**
   * Watches many entities of one type: those not watched yet are asked for in one request (one per 1000 ids), and
   * each is then a subscription of its own, shared and reference-counted as subscribe()'s are (one `events` for
   * all: a notification names its entity, and so do `onSnapshot`'s state, `onError`, `onResync` and `onChange`).
   * Returns the release of them all; releases within one tick unsubscribe in one request.
   */
  subscribeMany<K extends keyof M & string>(entityType: K, entityIds: readonly string[], events: SubscriptionEvents<M[K]> = {}, options: SubscribeOptions = {}): () => void {
    const handles: Array<() => void> = []
    this.batcher.together(() => { for (const id of new Set(entityIds)) handles.push(this.subscribe(entityType, id, events, options)) })
    return () => { for (const close of handles) close() }
  }

  /**
   * A live query: the entities of `entityType` whose document matches every condition of `where` (a value, or an
   * array of values any of which will do, per top-level or dotted path), each with its latest document. It starts
   * from the server's snapshot of the matches (`snapshot: false`: from none) and follows entered, updated, left and
   * deleted changes; after a reconnect it is read afresh. Handles of one filter (however its conditions are
   * spelled) share one server subscription; the last `close()` unsubscribes.
   */
  subscribeWhere<K extends keyof M & string>(entityType: K, where: Where, options: LiveQueryOptions = {}): LiveQuery<M[K]> {
    const key = subscriptionIdOf(entityType, filterIdOf(where), options.tenantId)
    const filter = this.take(this.filters, key, () => new Filter(entityType, where, options.tenantId, this.filterHost), options.snapshot ?? true)
    // as in subscribe(): the entity map says what the documents are
    return handleOf(filter, 'entities') as LiveQuery<M[K]>
  }

  /**
   * Presence on an entity of a type with presence: who else is on it (`members`, `count`), kept current, and
   * signals. With `info` this client joins as a member (signed in); without, it watches until `set(info)`. Holds
   * the entity's subscription while open; the last `close()` leaves.
   */
  presence<I = unknown>(entityType: keyof M & string, entityId: string, options: { info?: I, tenantId?: string } = {}): PresenceHandle<I> {
    const subscription = this.hold(entityType, entityId, options.tenantId, false)
    const key = subscription.key
    let room = this.presences.get(key)
    if (room === undefined) {
      this.presences.set(key, room = new PresenceRoom(entityType, entityId, options.tenantId, key, {
        send: (message) => this.connection.send(message),
        released: (r) => { if (this.presences.get(key) === r) this.presences.delete(key) }
      }))
    }
    return room.open(options.info, () => subscription.release())
  }

  /** An entity's state as a handle of subscribe() would read it, without subscribing: pending when nothing holds it. */
  peek<K extends keyof M & string>(entityType: K, entityId: string, options: { tenantId?: string } = {}): EntitySnapshot<M[K]> {
    return (this.subscriptions.get(subscriptionIdOf(entityType, entityId, options.tenantId))?.snapshot ?? PENDING) as EntitySnapshot<M[K]>
  }

  /** A live query's state as a handle of subscribeWhere() would read it, without subscribing: pending when nothing holds it. */
  peekWhere<K extends keyof M & string>(entityType: K, where: Where, options: { tenantId?: string } = {}): LiveQueryState<M[K]> {
    return (this.filters.get(subscriptionIdOf(entityType, filterIdOf(where), options.tenantId))?.snapshot ?? PENDING_QUERY) as LiveQueryState<M[K]>
  }

  /**
   * Asks `getToken()` for a token now and signs in with it when it is not the one refused last (after a refusal
   * with `anonymousFallback`, or to pick up a new user's token); the subscriptions refused for want of it follow.
   */
  async reauthenticate (): Promise<void> {
    await this.connection.reauthenticate()
  }

  /** Opens the connection (idempotent). */
  connect (): void {
    this.connection.connect()
  }

  /** Closes the socket and forgets the token and every subscription. The client cannot be used again. */
  destroy (): void {
    for (const subscription of this.subscriptions.values()) subscription.close()
    for (const filter of this.filters.values()) filter.close()
    this.subscriptions.clear()
    this.filters.clear()
    this.presences.clear()
    this.batcher.closed()
    this.snapshotListeners.clear()
    this.connection.destroy()
    this.stateListeners.clear()
    this.notificationListeners.clear()
    this.resyncListeners.clear()
  }

  /** The subscription of an entity, held (see take). */
  private hold (entityType: string, entityId: string, tenantId: string | undefined, snapshot: boolean): Subscription {
    return this.take(this.subscriptions, subscriptionIdOf(entityType, entityId, tenantId), () => new Subscription(entityType, entityId, tenantId, this.host), snapshot)
  }

  /**
   * Holds the subscription (or filter) of `key`, made and sent on first use; a pending release is called off.
   * `snapshot`: the holder wants the state there is.
   */
  private take<H extends Subscription | Filter> (all: Map<string, H>, key: string, make: () => H, snapshot: boolean): H {
    let held = all.get(key)
    const fresh = held === undefined
    if (held === undefined) all.set(key, held = make())
    if (snapshot) held.askSnapshot()
    if (fresh) held.subscribe()
    held.hold()
    return held
  }
}
