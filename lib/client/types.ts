/**
 * The SDK's public types: options, notifications, snapshots, connection states. What the server sends is typed by
 * the protocol module (lib/protocol/messages.ts); these only add what the SDK itself makes of it.
 */
import type { ChangeTypeName, NotificationMessage } from '../protocol/messages.js'
import type { WireErrorCode } from '../protocol/wire.js'

/** Entity type name → document type, for typed payloads: `new ChangefeedClient<{ RugbyGameState: GameState }>()`. */
export type EntityMap = Record<string, unknown>

export type ChangeType = ChangeTypeName

/**
 * A `notification` frame's data (lib/protocol/messages.ts), with the payload typed by the entity map. A `delta`
 * notification comes with the whole document as its payload, made by the client; its `patch` is on the side.
 */
export interface Notification<T = unknown> extends Omit<NotificationMessage, 'payload'> {
  /** the document, for `full` and `delta` types (null when deleted) */
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

/**
 * An entity's state as the server read it when its subscription began (a snapshot), or as the client holds it
 * since: every later change arrives as a notification. `payload` (`full` and `delta` types): the document, null
 * when there is none; minimal types have only `version` and `position`.
 */
export interface EntityState<T = unknown> {
  entityType: string
  entityId: string
  tenantId?: string
  payload?: T | null
  version?: string | null
  position?: string
}

export interface SubscriptionEvents<T> {
  /**
   * The entity's state when the subscription began, then again whenever the client asked for it afresh (a reconnect
   * the server could not replay, a patch that did not apply). Giving it asks for snapshots (SubscribeOptions.snapshot).
   */
  onSnapshot?: (state: EntityState<T>) => void
  onNotification?: (notification: Notification<T>) => void
  /** the number of sockets watching the entity across the cluster, pushed when it changes */
  onWatchers?: (count: number) => void
  /** skip notifications of this client's own writes (those tagged with `client.origin`) */
  skipOwnWrites?: boolean
  /** changes may have been missed: refetch (not called when `onSnapshot` is given and a fresh state came instead) */
  onResync?: (reason: string, entityId: string) => void
  /** the server refused the subscription (code: forbidden, unauthenticated, unknown_entity_type, …) */
  onError?: (code: WireErrorCode, message: string, entityId: string) => void
  /** after every change of the entity's state as the handle's `getSnapshot()` reads it (status, document, counts…) */
  onChange?: (state: EntitySnapshot<T>, entityId: string) => void
}

/**
 * The latest state of one watched entity, as a handle's `getSnapshot()` (and React) reads it. Replaced (never
 * mutated) on each change.
 */
export interface EntitySnapshot<T> {
  status: 'pending' | 'subscribed' | 'error'
  notification?: Notification<T>
  /** the latest document (`full` and `delta` types): from the snapshot when one was asked for, then each change */
  payload?: T | null
  /** the latest version known (from the snapshot or a notification) */
  version?: string | null
  /** watchers across the cluster, for subscriptions that asked (onWatchers, useWatcherCount) */
  watchers?: number
  error?: { code: WireErrorCode, message: string }
  /** increments on every notification or resync: a dependency for refetching */
  revision: number
}

/** Observes every resync: (entityType, entityId, reason, tenantId of a tenant's subscription). */
export type ResyncListener = (entityType: string, entityId: string, reason: string, tenantId?: string) => void

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

/** A token for the `auth` message; null or undefined: anonymous. */
export type Token = string | null | undefined

export interface ClientOptions {
  /**
   * ws:// or wss:// URL of the server's /ws route; or several (instances of one deployment): the first is picked at
   * random, and each reconnect goes to the next
   */
  url: string | readonly string[]
  /** Returns a JWT (or null for anonymous). Called before each connection and before the token expires. */
  getToken?: () => Promise<Token> | Token
  /**
   * WebSocket constructor; default: the runtime's global one (browsers, Node 22+). Node 20 has none: pass `ws`'s
   * (`import WebSocket from 'ws'`), else the constructor throws `ChangefeedClientError` CHANGEFEED_NO_WEBSOCKET.
   */
  WebSocket?: new (url: string) => WebSocketLike
  /** backoff: first retry cap, ceiling, and how long a connection must stay up before the attempt count resets */
  backoff?: { initialMs?: number, maxMs?: number, resetAfterMs?: number }
  /** client → server ping interval, and how long to wait for the pong before reconnecting */
  pingIntervalMs?: number
  pongTimeoutMs?: number
  /** a socket not open this long after it was made is given up, and another URL tried (default 10000) */
  connectTimeoutMs?: number
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
  /** ask for the entity's state with the subscription (`onSnapshot`, and `payload` from the start) */
  snapshot?: boolean
}

export interface LiveQueryOptions {
  /** tenanted types: whose entities (without it, the server's default for the principal) */
  tenantId?: string
  /** start from the entities that match now (default true); false: start empty and add what changes */
  snapshot?: boolean
}

/** A live query's state, as its handle's `getSnapshot()` (and React) reads it. Replaced (never mutated) on each change. */
export interface LiveQueryState<T> {
  /** pending until the server answers; ready: `entities` holds every match; error: refused (see `error`) */
  status: 'pending' | 'ready' | 'error'
  /** the matching entities by id, each with its latest document */
  entities: ReadonlyMap<string, T>
  error?: { code: WireErrorCode, message: string }
  /** increments on every change */
  revision: number
}

/**
 * What `subscribe()` and `subscribeWhere()` hand out: the state now, its changes, and the end of it. The handle is
 * also the function that closes it (`const stop = client.subscribe(…)`, then `stop()`).
 */
export interface SubscriptionHandle<S extends { status: string }> {
  (): void
  /** the server's subscriptionId: `<type>:<id>` (an entity), `<type>:*{…canonical conditions…}` (a live query) */
  readonly subscriptionId: string
  readonly status: S['status']
  /** the state now (the same object until it changes) */
  getSnapshot (): S
  /** Called after every change; returns the function that stops it. */
  onChange (listener: (state: S) => void): () => void
  /** Stops this handle; the last handle of a subscription unsubscribes (on the next tick). Safe to call twice. */
  close (): void
}

/** The handle of one entity's subscription (`client.subscribe`). */
export interface EntitySubscription<T> extends SubscriptionHandle<EntitySnapshot<T>> {
  /** the latest document (`full` and `delta` types; null: none), undefined until known */
  readonly payload: T | null | undefined
}

/** The handle of a live query (`client.subscribeWhere`). */
export interface LiveQuery<T> extends SubscriptionHandle<LiveQueryState<T>> {
  /** the matching entities now (a new Map after each change) */
  readonly entities: ReadonlyMap<string, T>
}
