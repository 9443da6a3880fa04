/**
 * What a frame from the server acts on, as dispatch.ts sees it: an entity's subscription, a live query's filter, the
 * requests for many on their way, and the client itself. Interfaces only: the classes (subscription.ts, query.ts,
 * batch.ts) implement them, so that dispatching a frame and the classes it reaches never import each other.
 */
import type { EntitySnapshotData, FeedSnapshotData, NotificationMessage } from '../protocol/messages.js'
import type { WireErrorCode } from '../protocol/wire.js'
import type { SubscribedManyData } from './frames.js'

/** One watched entity (or feed): subscription.ts. */
export interface EntityReceiver {
  /** its subscriptionId, and the request id of its every subscribe */
  readonly key: string
  readonly entityId: string
  /** `subscribed`; `recovered`: the server replays what was missed; `snapshot`: the entity's state */
  onSubscribed (recovered: boolean | undefined, snapshot?: EntitySnapshotData, position?: string): void
  /** `subscription_error` (final, unless the server failed rather than the request) */
  onSubscriptionError (code: WireErrorCode, message: string): void
  /** a subscribe beyond the server's rate, or one a request for many left unanswered: sent again later */
  onRateLimited (): void
  /**
   * A notification of the entity (`own`), or of an entity of its feed; `before` gets it as the holders will, before
   * they do.
   */
  onNotification (notification: NotificationMessage, own: boolean, before?: (notification: NotificationMessage) => void): void
  /** the count of sockets watching it across the cluster */
  onWatchers (count: number): void
  /** changes may have been missed */
  onResync (reason: string): void
  /** the server accepted a token */
  onSignedIn (): void
}

/** One live query's filtered feed: query.ts. */
export interface FilterReceiver {
  readonly entityType: string
  onSubscribed (snapshot: FeedSnapshotData | undefined): void
  onSubscriptionError (code: WireErrorCode, message: string): void
  onNotification (notification: NotificationMessage): void
  onResync (): void
}

/** One entity's presence: presence.ts. */
export interface PresenceReceiver {
  /** the reply to its subscribe: who is there */
  onSubscribed (presence: { count: number, members: Array<{ userId: string, info?: unknown, connections: number }>, truncated: boolean } | undefined): void
  /** `final`: its subscribe was refused; else an info update was */
  onRefused (code: WireErrorCode, message: string, final: boolean): void
  onEvent (event: { count: number, joined?: Array<{ userId: string, info?: unknown }>, updated?: Array<{ userId: string, info?: unknown }>, left?: Array<{ userId: string }>, members?: Array<{ userId: string, info?: unknown, connections: number }> }): void
  onSignal (from: { userId: string }, data: unknown): void
}

/** The requests for many on their way: batch.ts. */
export interface BatchReceiver {
  /** the reply to the request for many `id` */
  answered (id: unknown, data: SubscribedManyData): void
  /** a refusal of the request for many `id`: false when `id` is not one */
  refused (id: unknown, code: WireErrorCode, message: string): boolean
}

/**
 * What the frames act on: the client's subscriptions, its filtered feeds, its requests for many, its sign-in, and
 * its every-notification listeners.
 */
export interface DispatchTarget {
  readonly subscriptions: ReadonlyMap<string, EntityReceiver>
  /** filtered feeds, by subscriptionId */
  readonly filters: ReadonlyMap<string, FilterReceiver>
  readonly batches: BatchReceiver
  /** presence, by subscriptionId */
  readonly presences: ReadonlyMap<string, PresenceReceiver>
  /** `authenticated`: the server accepted the token */
  signedIn (): void
  /** an `error` reply to the `auth` message: the server refused the token */
  tokenRefused (): void
  /** every notification, after the subscriptions it concerns have had it */
  notified (notification: NotificationMessage): void
}
