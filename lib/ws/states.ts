/**
 * Snapshots for subscriptions: the states of entities a socket subscribes to, read together with what they hold, so
 * that every later change arrives as a notification and none before it does.
 */
import { carriesDocument, type EntityType } from '../entities.js'
import { ownerIn } from '../route/notices.js'
import { SnapshotUnavailable, type SnapshotResult } from '../reads/snapshot.js'
import type { Carried } from './deferred.js'
import type { Subscription, Subscriptions } from './subscriptions.js'
import type { Refusal } from './target.js'
import { WireError, type EntitySnapshotData } from '../protocol/index.js'

/** States read for subscriptions (null: the owner the document names is not the socket's user), and what they carried. */
export interface ReadStates {
  states: Array<EntitySnapshotData | undefined | null>
  /** the live notifications the states hold already; null: none (a type with no table) */
  carried: Carried | null
}

/**
 * The states of subscribed entities (their live notifications held), in order; a `delta` type's subscription
 * takes each as the base of its next patch. A refusal when the read was refused (`rate_limited`) or impossible
 * (`bad_request`): the subscriptions ended. Rejects (the subscriptions ended) when the database failed.
 */
export async function readStates (subscriptions: Subscriptions, entity: EntityType, opened: Array<[string, Subscription]>): Promise<ReadStates | Refusal> {
  const [, first] = opened[0]
  for (const [channel] of opened) subscriptions.defer(channel)
  let result: SnapshotResult | null
  try {
    result = await subscriptions.services.snapshot(entity, first.tenantId, opened.map(([, s]) => s.entityId), subscriptions.socket.ip)
  } catch (err) {
    await Promise.all(opened.map(async ([channel]) => await subscriptions.end(channel)))
    if (!(err instanceof SnapshotUnavailable)) throw err
    return { code: WireError.badRequest, reason: err.message }
  }
  if (result === null) {
    await Promise.all(opened.map(async ([channel]) => await subscriptions.end(channel)))
    return { code: WireError.rateLimited, reason: 'too many snapshot reads; retry later' }
  }
  const { visibility } = result
  // a type only a host publishes has no state here: the reply goes without one
  if (visibility === null) return { states: opened.map(() => undefined), carried: null }
  const byId = new Map(result.entities.map((e) => [e.entityId, e.snapshot]))
  const states = await Promise.all(opened.map(async ([channel, subscription]) => {
    const snapshot = byId.get(subscription.entityId) ?? (carriesDocument(entity) ? { payload: null, version: null } : { version: null })
    // the owner was checked before the read: a document that names someone else now is not theirs to see
    if (subscriptions.foreign(ownerIn(entity, 'full', snapshot.payload))) {
      await subscriptions.end(channel)
      return null
    }
    // on a channel with history, at the position its sockets know
    if (snapshot.position !== undefined) snapshot.position = subscriptions.services.fanout.positionOf(channel, snapshot.position)
    if (subscription.base !== undefined) subscription.base = snapshot.position ?? null
    return snapshot
  }))
  return { states, carried: (meta) => visibility.saw(meta.txid) }
}
