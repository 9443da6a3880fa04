/**
 * The fastify-changefeed client: no dependencies, for browsers and Node (pass a WebSocket constructor).
 *
 * - one socket; subscriptions are reference-counted per entity, so mount/unmount/mount (React StrictMode) sends one
 *   subscribe and no unsubscribe; after a reconnect every subscription is sent again in one batch, with `since`;
 * - reconnects with full-jitter exponential backoff, and never blindly: not after 4403/1008/1009, and after 4401
 *   only with a fresh token from `getToken()`;
 * - signs in in-band (`auth` message), so the token never appears in a URL, and refreshes it before it expires;
 * - notices a dead connection by itself (no pong in time), and checks at once when the page becomes visible,
 *   comes back online, or is restored from the back/forward cache.
 *
 * The parts: connection.ts (the socket, backoff.ts, credentials.ts, liveness.ts), subscription.ts (one entity's
 * state with the server), protocol.ts (frames in and out); the protocol's constants and rules are
 * lib/protocol/wire.ts, shared with the server. Browsers without a bundler load dist/lib/client/browser.js, all of
 * it in one module (`npm run build`).
 */
import { subscriptionIdOf } from '../protocol/wire.js'
import { Connection } from './connection.js'
import { dispatch, type DispatchTarget } from './protocol.js'
import { PENDING, Subscription, type SubscriptionHost } from './subscription.js'
import type {
  ClientOptions, ConnectionState, EntityMap, EntitySnapshot, Notification, ResyncListener, StateChange,
  SubscribeOptions, SubscriptionEvents
} from './types.js'

export type {
  ChangeType, ClientOptions, ConnectionState, EntityMap, EntitySnapshot, Notification, ResyncListener, StateChange,
  SubscribeOptions, SubscriptionEvents, Token, WebSocketLike
} from './types.js'
export type { WireErrorCode } from '../protocol/wire.js'
export { CloseCode, WireError } from '../protocol/wire.js'
export { backoffDelay } from './backoff.js'
/** The key of a subscription: the server's subscriptionId, `<type>:<id>`, or `<type>@<tenantId>:<id>`. */
export { subscriptionIdOf as subscriptionKey } from '../protocol/wire.js'

export class ChangefeedClient<M extends EntityMap = EntityMap> {
  /** this client's origin id (see ClientOptions.origin) */
  readonly origin: string
  private readonly connection: Connection
  private readonly subscriptions = new Map<string, Subscription>()
  private readonly stateListeners = new Set<(change: StateChange) => void>()
  private readonly notificationListeners = new Set<(notification: Notification) => void>()
  private readonly resyncListeners = new Set<ResyncListener>()
  private readonly host: SubscriptionHost

  constructor (options: ClientOptions) {
    const origin = options.origin ?? Math.random().toString(36).slice(2) + Date.now().toString(36)
    this.origin = origin
    this.host = {
      origin,
      random: options.random ?? Math.random,
      send: (message) => this.connection.send(message),
      resynced: (s, reason) => { for (const l of this.resyncListeners) l(s.entityType, s.entityId, reason, s.tenantId) },
      released: (s) => { if (this.subscriptions.get(s.key) === s) this.subscriptions.delete(s.key) }
    }
    const target: DispatchTarget = {
      subscriptions: this.subscriptions,
      signedIn: () => this.connection.signedIn(),
      tokenRefused: () => this.connection.tokenRefused(),
      notified: (notification) => { for (const l of this.notificationListeners) l(notification) }
    }
    this.connection = new Connection(options, {
      state: (change) => { for (const l of this.stateListeners) l(change) },
      opened: (reconnected) => { for (const s of this.subscriptions.values()) s.onOpen(reconnected) },
      closed: () => { for (const s of this.subscriptions.values()) s.onClose() },
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

  /** Observes every notification of every subscription (adapters: TanStack Query). */
  onNotification (listener: (notification: Notification) => void): () => void {
    this.notificationListeners.add(listener)
    return () => this.notificationListeners.delete(listener)
  }

  /** Observes every resync: (entityType, entityId, reason, tenantId of a tenant's subscription). */
  onResync (listener: ResyncListener): () => void {
    this.resyncListeners.add(listener)
    return () => this.resyncListeners.delete(listener)
  }

  /**
   * Watches one entity (or with entityId "*" a feed type's every entity). Calls with the same type and id share one
   * server subscription; the last release sends the unsubscribe (on the next tick, so a release followed at once by
   * a new subscribe sends nothing). Returns the release.
   */
  subscribe<K extends keyof M & string>(entityType: K, entityId: string, events: SubscriptionEvents<M[K]> = {}, options: SubscribeOptions = {}): () => void {
    const subscription = this.hold(entityType, entityId, options.tenantId)
    // the entity map is the application's word for what the server sends of this type
    const listener = events as SubscriptionEvents<unknown>
    subscription.listeners.add(listener)
    if (events.onWatchers !== undefined) subscription.count()
    let released = false
    return () => {
      if (released) return
      released = true
      subscription.listeners.delete(listener)
      subscription.releaseLater()
    }
  }

  /** For useSyncExternalStore: subscribe to one entity's snapshot (`counted`: ask for watcher counts). */
  watch<K extends keyof M & string>(entityType: K, entityId: string, options: SubscribeOptions = {}): { subscribe: (onChange: () => void) => () => void, getSnapshot: () => EntitySnapshot<M[K]> } {
    const key = subscriptionIdOf(entityType, entityId, options.tenantId)
    return {
      subscribe: (onChange) => {
        const subscription = this.hold(entityType, entityId, options.tenantId)
        subscription.watchers.add(onChange)
        if (options.counted === true) subscription.count()
        return () => {
          subscription.watchers.delete(onChange)
          subscription.releaseLater()
        }
      },
      // as in subscribe(): the entity map says what the payload is
      getSnapshot: () => (this.subscriptions.get(key)?.snapshot ?? PENDING) as EntitySnapshot<M[K]>
    }
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
    this.subscriptions.clear()
    this.connection.destroy()
    this.stateListeners.clear()
    this.notificationListeners.clear()
    this.resyncListeners.clear()
  }

  /** The subscription of an entity, created (and sent) on first use; a pending release is called off. */
  private hold (entityType: string, entityId: string, tenantId: string | undefined): Subscription {
    const key = subscriptionIdOf(entityType, entityId, tenantId)
    let subscription = this.subscriptions.get(key)
    if (subscription === undefined) {
      subscription = new Subscription(entityType, entityId, tenantId, this.host)
      this.subscriptions.set(key, subscription)
      subscription.subscribe()
    }
    subscription.hold()
    return subscription
  }
}
