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
import { Held, type HeldHost } from './held.js'
import type { FilterReceiver } from './receivers.js'
import type { EntityState, LiveQueryState } from './types.js'

export interface FilterHost extends HeldHost {
  /** the snapshot's entities (the client tells its every-snapshot listeners) */
  snapshotted (state: EntityState): void
}

/** the state of a live query the server has not answered yet */
export const PENDING_QUERY: LiveQueryState<never> = Object.freeze<LiveQueryState<never>>({ status: 'pending', entities: new Map<string, never>(), revision: 0 })

/** Never `resuming`: while `subscribing` with a snapshot asked for, notifications wait for the reply (it holds them). */
export class Filter extends Held<LiveQueryState<unknown>> implements FilterReceiver {
  /** a handle wants the matches there are (a snapshot), not only those that change from now on */
  private snapshotAsked = false

  constructor (readonly entityType: string, readonly where: Where, readonly tenantId: string | undefined, protected override readonly host: FilterHost) {
    super(subscriptionIdOf(entityType, filterIdOf(where), tenantId), PENDING_QUERY, host)
  }

  /** A handle wants the matches now: on a filter that started without them, they are asked for. */
  askSnapshot (): void {
    if (this.snapshotAsked) return
    this.snapshotAsked = true
    if (this.phase === 'subscribed' || this.phase === 'subscribing') this.subscribe()
  }

  override subscribe (): void {
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
    const entities = new Map(this.snapshot.entities)
    if (changeType === 'left' || changeType === 'deleted' || payload === null) entities.delete(entityId)
    else if (payload !== undefined && (changeType === 'entered' || changeType === 'updated' || changeType === 'created')) entities.set(entityId, payload)
    else return
    this.update({ entities })
  }
}
