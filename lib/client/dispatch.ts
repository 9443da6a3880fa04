/**
 * Acts on each frame from the server: hands it to the subscription, filter or request for many it concerns (the
 * receivers of receivers.ts), or to the client.
 */
import type { NotificationMessage } from '../protocol/messages.js'
import { FEED, WireError, subscriptionIdOf } from '../protocol/wire.js'
import { AUTH_ID, isFrame, type ServerFrame } from './frames.js'
import type { DispatchTarget, EntityReceiver, PresenceReceiver } from './receivers.js'
import { PRESENCE_ID } from './presence.js'

interface EntityRef { entityType: string, entityId: string, tenantId?: string }

/**
 * The keys of the subscriptions a frame about an entity concerns: its own (for a tenant's entity the tenant's and
 * the every-tenant one), and its type's feeds (entityId "*").
 */
function keysOf ({ entityType, entityId, tenantId }: EntityRef): { own: string[], feeds: string[] } {
  return tenantId === undefined
    ? { own: [subscriptionIdOf(entityType, entityId)], feeds: [subscriptionIdOf(entityType, FEED)] }
    : {
        own: [subscriptionIdOf(entityType, entityId, tenantId), subscriptionIdOf(entityType, entityId)],
        feeds: [subscriptionIdOf(entityType, FEED, tenantId), subscriptionIdOf(entityType, FEED)]
      }
}

/** The subscription a count names (the tenant's, else the one without a tenant). */
function subscriptionOf (ref: EntityRef, to: DispatchTarget): EntityReceiver | undefined {
  for (const key of keysOf(ref).own) {
    const subscription = to.subscriptions.get(key)
    if (subscription !== undefined) return subscription
  }
  return undefined
}

/** The presence a frame about an entity concerns. */
function presenceOf (ref: EntityRef, to: DispatchTarget): PresenceReceiver | undefined {
  for (const key of keysOf(ref).own) if (to.presences.has(key)) return to.presences.get(key)
}

/** The presence a reply answers (its request id names it), if it answers one. */
function presenceAsked (id: unknown, to: DispatchTarget): PresenceReceiver | undefined {
  return typeof id === 'string' && id.startsWith(PRESENCE_ID) ? to.presences.get(id.slice(PRESENCE_ID.length)) : undefined
}

/**
 * The subscription a reply answers: by the request id, which is its key (whatever name the server gives the
 * entity: a discovered type may be asked for in another letter case), else by the entity it names.
 */
function requestOf (id: string | number | undefined, ref: EntityRef, to: DispatchTarget): EntityReceiver | undefined {
  return to.subscriptions.get(String(id)) ?? subscriptionOf(ref, to)
}

/** Acts on one frame from the server. */
export function dispatch (frame: ServerFrame, to: DispatchTarget): void {
  switch (frame.type) {
    case 'batch':
      // a busy feed: several notifications in one frame
      for (const item of frame.data) if (isFrame(item)) dispatch(item, to)
      return
    case 'notification': {
      // the client's every-notification listeners (adapters' caches) hear of a change before the application does
      // a frame that names its subscription (a feed's, a filtered feed's) is that subscription's only: the entity's
      // own frame (which names none) comes on its own
      const { subscriptionId } = frame.data
      if (subscriptionId !== undefined) {
        to.notified(frame.data)
        const filter = to.filters.get(subscriptionId)
        if (filter !== undefined) return filter.onNotification(frame.data)
        return to.subscriptions.get(subscriptionId)?.onNotification(frame.data, false)
      }
      const { own, feeds } = keysOf(frame.data)
      // once per frame, as the first subscription that takes it made it (a patch: whole)
      let told = false
      const tell = (notification: NotificationMessage): void => {
        if (told) return
        told = true
        to.notified(notification)
      }
      for (const key of own) to.subscriptions.get(key)?.onNotification(frame.data, true, tell)
      for (const key of feeds) to.subscriptions.get(key)?.onNotification(frame.data, false, tell)
      // one no subscription took (a repeat, an entity not watched) reaches them too; a patch only when made whole
      if (frame.data.payloadType !== 'delta') tell(frame.data)
      return
    }
    case 'watchers':
      subscriptionOf(frame.data, to)?.onWatchers(frame.data.count)
      return
    case 'presence':
      return presenceOf(frame.data, to)?.onEvent(frame.data)
    case 'signal':
      return presenceOf(frame.data, to)?.onSignal(frame.data.from, frame.data.data)
    case 'subscribed': {
      const { data } = frame
      if (!('subscriptionId' in data)) return to.batches.answered(frame.id, data)
      if (String(frame.id).startsWith(PRESENCE_ID)) return presenceAsked(frame.id, to)?.onSubscribed(data.presence)
      const filter = to.filters.get(String(frame.id))
      if (filter !== undefined) return filter.onSubscribed(data.snapshot !== undefined && 'entities' in data.snapshot ? data.snapshot : undefined)
      requestOf(frame.id, data, to)?.onSubscribed(data.recovered, data.snapshot !== undefined && !('entities' in data.snapshot) ? data.snapshot : undefined, data.position)
      return
    }
    case 'subscription_error': {
      const { code, error } = frame.data
      if (String(frame.id).startsWith(PRESENCE_ID)) return presenceAsked(frame.id, to)?.onRefused(code, error, true)
      if (to.batches.refused(frame.id, code, error)) return
      ;(to.filters.get(String(frame.id)) ?? requestOf(frame.id, frame.data, to))?.onSubscriptionError(code, error)
      return
    }
    case 'authenticated':
      to.signedIn()
      for (const subscription of to.subscriptions.values()) subscription.onSignedIn()
      return
    case 'error': {
      const { code, error } = frame.data
      if (frame.id === AUTH_ID && code === WireError.unauthenticated) return to.tokenRefused()
      if (String(frame.id).startsWith(PRESENCE_ID)) return presenceAsked(frame.id, to)?.onRefused(code, error, false)
      if (typeof frame.id !== 'string' || to.batches.refused(frame.id, code, error)) return
      const filter = to.filters.get(frame.id)
      if (filter !== undefined && (code === WireError.rateLimited || code === WireError.badRequest)) return filter.onSubscriptionError(code, error)
      // a subscribe beyond the server's rate: send it again later rather than go without it
      if (code === WireError.rateLimited) to.subscriptions.get(frame.id)?.onRateLimited()
      // a subscribe the server could not read: the subscription's error
      if (code === WireError.badRequest) to.subscriptions.get(frame.id)?.onSubscriptionError(code, error)
      return
    }
    case 'resync': {
      const { data } = frame
      // a resync that names no entity concerns every subscription of the socket
      const targets = data.entityType === undefined || data.entityId === undefined
        ? [...to.subscriptions.values()]
        : keysOf({ entityType: data.entityType, entityId: data.entityId, tenantId: data.tenantId }).own.map((key) => to.subscriptions.get(key))
      for (const subscription of targets) subscription?.onResync(data.reason)
      // a gap in a type may have changed which of its entities match
      for (const filter of to.filters.values()) if (data.entityType === undefined || data.entityType === filter.entityType) filter.onResync()
    }
  }
}
