/**
 * One filtered feed of a client (a live query): the entities of a type whose document matches `where`, kept as a
 * Map of id → latest document. It starts from the server's snapshot of the matches; `entered`, `created` and
 * `updated` put a document in, `left` and `deleted` take it out. Its notifications carry its subscriptionId, the
 * canonical name both sides compute (lib/protocol/where.ts), so several filters of one type never mix.
 *
 * After a loss (a reconnect, a resync) it subscribes again with a snapshot and the Map is replaced by it: what
 * happened meanwhile is in the new one. Until that reply, notifications are dropped, as the snapshot holds them.
 * Handles share it by subscriptionId, reference-counted like entity subscriptions.
 */
import type { FeedSnapshotData, NotificationMessage, SubscribeOneRequest } from '../protocol/messages.js'
import { FEED, WireError, subscriptionIdOf, type WireErrorCode } from '../protocol/wire.js'
import { filterIdOf, type Where } from '../protocol/where.js'
import { retryDelay } from './backoff.js'
import type { ClientMessage } from './frames.js'
import type { FilterReceiver } from './receivers.js'
import type { EntityState, LiveQueryState } from './types.js'

export interface FilterHost {
  send (message: ClientMessage): boolean
  random (): number
  /** the last handle left and the unsubscribe is sent: forget it */
  released (filter: Filter): void
  /** the snapshot's entities (the client tells its every-snapshot listeners) */
  snapshotted (state: EntityState): void
}

/** the state of a live query the server has not answered yet */
export const PENDING_QUERY: LiveQueryState<never> = Object.freeze<LiveQueryState<never>>({ status: 'pending', entities: new Map<string, never>(), revision: 0 })

export class Filter implements FilterReceiver {
  readonly key: string
  /** handles' change listeners (and React's) */
  readonly watchers = new Set<() => void>()
  state: LiveQueryState<unknown> = PENDING_QUERY
  /** unsubscribed, subscribing (the reply brings the snapshot: notifications wait for it), subscribed, error, released */
  private phase: 'unsubscribed' | 'subscribing' | 'subscribed' | 'error' | 'released' = 'unsubscribed'
  private handles = 0
  private snapshotAsked: boolean
  private releaseTimer: ReturnType<typeof setTimeout> | undefined
  private retryTimer: ReturnType<typeof setTimeout> | undefined

  constructor (readonly entityType: string, readonly where: Where, readonly tenantId: string | undefined, snapshot: boolean, private readonly host: FilterHost) {
    this.key = subscriptionIdOf(entityType, filterIdOf(where), tenantId)
    this.snapshotAsked = snapshot
  }

  hold (snapshot: boolean): void {
    this.handles++
    clearTimeout(this.releaseTimer)
    this.releaseTimer = undefined
    // a handle that wants the matches now, on a filter that started without them
    if (snapshot && !this.snapshotAsked) {
      this.snapshotAsked = true
      if (this.phase === 'subscribed' || this.phase === 'subscribing') this.subscribe()
    }
  }

  /** A handle closed; the last one's leaving unsubscribes on the next tick (a new handle meanwhile calls it off). */
  release (): void {
    if (--this.handles > 0 || this.releaseTimer !== undefined || this.phase === 'released') return
    this.releaseTimer = setTimeout(() => {
      this.releaseTimer = undefined
      if (this.handles > 0) return
      this.close()
      this.host.released(this)
      this.host.send({ type: 'unsubscribe', data: { subscriptionId: this.key } })
    }, 0)
  }

  close (): void {
    this.phase = 'released'
    clearTimeout(this.releaseTimer)
    clearTimeout(this.retryTimer)
  }

  subscribe (): void {
    const data: SubscribeOneRequest = { entityType: this.entityType, entityId: FEED, where: this.where }
    if (this.tenantId !== undefined) data.tenantId = this.tenantId
    if (this.snapshotAsked) data.snapshot = true
    if (this.host.send({ type: 'subscribe', id: this.key, data })) this.phase = 'subscribing'
  }

  onOpen (reconnected: boolean): void {
    // without a snapshot to replace them, the matches held may be stale: start again from none
    if (reconnected && !this.snapshotAsked) this.update({ entities: new Map() })
    this.subscribe()
  }

  onClose (): void {
    if (this.phase === 'released') return
    clearTimeout(this.retryTimer)
    this.phase = 'unsubscribed'
  }

  onSubscribed (snapshot: FeedSnapshotData | undefined): void {
    if (this.phase === 'released') return
    this.phase = 'subscribed'
    if (snapshot === undefined) return this.update({ status: 'ready', error: undefined })
    const entities = new Map<string, unknown>()
    for (const { entityId, tenantId, payload, version, position } of snapshot.entities) {
      if (payload === undefined || payload === null) continue
      entities.set(entityId, payload)
      this.host.snapshotted({ entityType: this.entityType, entityId, tenantId, payload, version, position })
    }
    this.update({ status: 'ready', entities, error: undefined })
  }

  onSubscriptionError (code: WireErrorCode, message: string): void {
    if (code === WireError.internal || code === WireError.rateLimited) return this.retry()
    this.phase = 'error'
    this.update({ status: 'error', error: { code, message } })
  }

  /** Changes may have been missed: the matches are read again (without a snapshot, only the status says so). */
  onResync (): void {
    if (this.phase !== 'subscribed') return
    if (this.snapshotAsked) this.subscribe()
    else this.update({})
  }

  onNotification (notification: NotificationMessage): void {
    if (this.phase !== 'subscribed' && (this.phase !== 'subscribing' || this.snapshotAsked)) return
    const { entityId, changeType, payload } = notification
    const entities = new Map(this.state.entities)
    if (changeType === 'left' || changeType === 'deleted' || payload === null) entities.delete(entityId)
    else if (payload !== undefined && (changeType === 'entered' || changeType === 'updated' || changeType === 'created')) entities.set(entityId, payload)
    else return
    this.update({ entities })
  }

  private retry (): void {
    this.phase = 'unsubscribed'
    clearTimeout(this.retryTimer)
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined
      if (this.phase !== 'released') this.subscribe()
    }, retryDelay(this.host.random()))
  }

  private update (change: Partial<LiveQueryState<unknown>>): void {
    this.state = { ...this.state, ...change, revision: this.state.revision + 1 }
    for (const w of this.watchers) w()
  }
}
