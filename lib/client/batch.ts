/**
 * Requests for many entities at once. Subscribes made together (subscribeMany, useEntities, every subscription sent
 * again after a reconnect) go out as one `subscribe` with `entityIds` per type, tenant and snapshot choice (at most
 * 1000 ids each), and the reply is handed to each entity's subscription as if it had been asked for alone. Releases
 * within one tick go out as one `unsubscribe` with `entityIds`. A subscribe that carries anything of its own
 * (`since`, watcher counts) or names a feed goes alone, as does one with nothing to share a request with.
 */
import type { SubscribeManyRequest, SubscribeOneRequest, SubscribeRequest } from '../protocol/messages.js'
import { FEED, WireError, parseSubscriptionId, type WireErrorCode } from '../protocol/wire.js'
import type { ClientMessage, SubscribedManyData } from './frames.js'
import type { BatchReceiver, EntityReceiver } from './receivers.js'

/** the protocol's limit of ids in one request */
export const MAX_IDS = 1000

/** The request ids of batches: a subscription's key starts with a type name, which cannot start with '#'. */
const BATCH_ID = '#'

/** What the batcher needs of its client's socket. */
export interface BatchSocket {
  /** sends a frame; false when the socket is not open */
  write (message: ClientMessage): boolean
  /** whether a frame sent now would go out */
  writable (): boolean
}

export class Batcher implements BatchReceiver {
  /** the subscriptions of each request for many on its way, by entity id */
  private readonly pending = new Map<string, Map<string, EntityReceiver>>()
  /** within together(): the subscribes held back, by the request they may share */
  private collected: Map<string, Array<{ subscription: EntityReceiver, data: SubscribeOneRequest }>> | null = null
  /** unsubscribes waiting for the end of the tick, by the type (and tenant) they may share a request with */
  private readonly leaving = new Map<string, Map<string, string>>()
  private leaveTimer: ReturnType<typeof setTimeout> | undefined
  private next = 0

  constructor (private readonly socket: BatchSocket, private readonly subscriptions: ReadonlyMap<string, EntityReceiver>) {}

  /** Runs `fn`; the subscribes it sends that can share a request go out together when it returns. */
  together (fn: () => void): void {
    if (this.collected !== null) return fn()
    const collected = this.collected = new Map()
    try {
      fn()
    } finally {
      this.collected = null
    }
    for (const group of collected.values()) {
      for (let i = 0; i < group.length; i += MAX_IDS) this.subscribeMany(group.slice(i, i + MAX_IDS))
    }
  }

  /** Every frame of a subscription goes through here; returns whether it is sent (or will be). */
  send (message: ClientMessage): boolean {
    if (message.type === 'subscribe') {
      // an unsubscribe still waiting would end what this subscribe asks for
      const ref = parseSubscriptionId(message.id)
      if (ref !== null) this.leaving.get(groupOf(ref.entityType, ref.tenantId))?.delete(ref.entityId)
      const subscription = this.subscriptions.get(message.id)
      if (this.collected !== null && subscription !== undefined && batchable(message.data)) {
        if (!this.socket.writable()) return false
        const key = groupOf(message.data.entityType, message.data.tenantId) + '\0' + String(message.data.snapshot === true)
        const group = this.collected.get(key)
        if (group === undefined) this.collected.set(key, [{ subscription, data: message.data }])
        else group.push({ subscription, data: message.data })
        return true
      }
    } else if (message.type === 'unsubscribe' && 'subscriptionId' in message.data) {
      const ref = parseSubscriptionId(message.data.subscriptionId)
      if (ref !== null && ref.entityId !== FEED) {
        const key = groupOf(ref.entityType, ref.tenantId)
        const group = this.leaving.get(key) ?? new Map<string, string>()
        this.leaving.set(key, group.set(ref.entityId, message.data.subscriptionId))
        this.leaveTimer ??= setTimeout(() => this.leave(), 0)
        return true
      }
    }
    return this.socket.write(message)
  }

  /** The reply to a request for many: to each subscribed entity, and each refused one. */
  answered (id: unknown, data: SubscribedManyData): void {
    const members = this.take(id)
    if (members === undefined) return
    for (const entityId of data.subscribed) {
      const snapshots = data.snapshots ?? {}
      members.get(entityId)?.onSubscribed(undefined, Object.prototype.hasOwnProperty.call(snapshots, entityId) ? snapshots[entityId] : undefined, data.positions?.[entityId])
      members.delete(entityId)
    }
    for (const { entityId, code, error } of data.errors) {
      members.get(entityId)?.onSubscriptionError(code, error)
      members.delete(entityId)
    }
    // an id the reply did not name is asked for again
    for (const s of members.values()) s.onRateLimited()
  }

  /**
   * A request for many refused whole: for rate each is sent again later; any other code is each one's. False when
   * `id` is not a request for many.
   */
  refused (id: unknown, code: WireErrorCode, message: string): boolean {
    const members = this.take(id)
    if (members === undefined) return false
    for (const s of members.values()) {
      if (code === WireError.rateLimited) s.onRateLimited()
      else s.onSubscriptionError(code, message)
    }
    return true
  }

  /** The socket closed: the server holds none of it; what was waiting is sent again when it opens. */
  closed (): void {
    this.pending.clear()
    this.leaving.clear()
    clearTimeout(this.leaveTimer)
    this.leaveTimer = undefined
  }

  private take (id: unknown): Map<string, EntityReceiver> | undefined {
    const members = typeof id === 'string' ? this.pending.get(id) : undefined
    if (members !== undefined) this.pending.delete(id as string)
    return members
  }

  private subscribeMany (group: Array<{ subscription: EntityReceiver, data: SubscribeOneRequest }>): void {
    const [{ subscription, data: first }] = group
    let request: SubscribeRequest = first
    let id = subscription.key
    if (group.length > 1) {
      id = BATCH_ID + String(++this.next)
      const many: SubscribeManyRequest = { entityType: first.entityType, entityIds: group.map(({ data }) => data.entityId) }
      if (first.tenantId !== undefined) many.tenantId = first.tenantId
      if (first.snapshot === true) many.snapshot = true
      request = many
      this.pending.set(id, new Map(group.map(({ subscription }) => [subscription.entityId, subscription])))
    }
    if (!this.socket.write({ type: 'subscribe', id, data: request })) {
      // closed since: each is sent again when it opens
      this.pending.delete(id)
    }
  }

  private leave (): void {
    this.leaveTimer = undefined
    for (const [key, group] of this.leaving) {
      const [entityType, tenantId] = key.split('\0')
      if (group.size === 1) {
        for (const subscriptionId of group.values()) this.socket.write({ type: 'unsubscribe', data: { subscriptionId } })
        continue
      }
      const ids = [...group.keys()]
      for (let i = 0; i < ids.length; i += MAX_IDS) {
        const entityIds = ids.slice(i, i + MAX_IDS)
        this.socket.write({ type: 'unsubscribe', data: tenantId === '' ? { entityType, entityIds } : { entityType, entityIds, tenantId } })
      }
    }
    this.leaving.clear()
  }
}

function groupOf (entityType: string, tenantId: string | undefined): string {
  return entityType + '\0' + (tenantId ?? '')
}

/** A subscribe that says nothing of its own beyond the entity (and the snapshot, which its group shares). */
function batchable (data: SubscribeRequest): data is SubscribeOneRequest {
  return 'entityId' in data && data.entityId !== FEED && data.since === undefined && data.watchers !== true && data.where === undefined
}
