/**
 * A filtered feed (`"entityId": "*"` with `where`): the entities of the type whose document matches, joined to the
 * filter's group (lib/ws/filters.ts), answered once: `subscribed` (with the matching entities, on `snapshot`), or
 * `subscription_error`. The filter's frames start once the reply is written.
 */
import { carriesDocument } from '../entities.js'
import { FEED } from '../route/channels.js'
import { SnapshotUnavailable } from '../reads/snapshot.js'
import { FilterLimitError, type Filters } from './filters.js'
import type { Reply } from './requests.js'
import { filterKey, type Subscription, type Subscriptions } from './subscriptions.js'
import { isRefusal, resolveTarget, type Refusal } from './target.js'
import {
  WireError, canonicalWhere, conditionsOf, encodeSubscribed, encodeSubscriptionError, filterIdOf, subscriptionIdOf, whereProblem,
  type EntityRef, type SubscribeOneRequest, type Where
} from '../protocol/index.js'

export async function subscribeWhere (subscriptions: Subscriptions, reply: Reply, req: SubscribeOneRequest, where: Where): Promise<void> {
  const { socket, services, limits } = subscriptions
  const ref: EntityRef = { entityType: req.entityType, entityId: req.entityId, tenantId: req.tenantId }
  const refuse = ({ code, reason }: Refusal): void => reply.send(encodeSubscriptionError(reply.id, ref, code, reason))
  const target = resolveTarget(services.registry, services.policy, socket.principal, req.entityType, req.tenantId)
  // what the request is, before who may make it: a malformed filter is refused whoever asks
  if (isRefusal(target) && target.code === WireError.unknownEntityType) return refuse(target)
  const entity = services.registry.get(req.entityType)!
  if (req.entityId !== FEED) return refuse({ code: WireError.badRequest, reason: 'a filter (where) goes with entityId "*"' })
  if (req.since !== undefined || req.watchers === true) return refuse({ code: WireError.badRequest, reason: 'a filtered feed takes neither since nor watchers' })
  if (!carriesDocument(entity)) return refuse({ code: WireError.badRequest, reason: `${entity.name} notifications carry no document (payload "minimal"): it cannot be filtered` })
  const problem = whereProblem(where)
  if (problem !== null) return refuse({ code: WireError.badRequest, reason: problem })
  if (isRefusal(target)) return refuse(target)
  const { tenantId } = target
  const subscriptionId = subscriptionIdOf(entity.name, filterIdOf(where), req.tenantId)
  const feedChannel = services.fanout.channel(entity.name, FEED, tenantId)
  const key = filterKey(feedChannel, subscriptionId)
  const existing = subscriptions.get(key)
  // asked again with a snapshot: the filter starts over, so the state and the frames after it agree
  if (existing !== undefined && req.snapshot === true) await subscriptions.end(key)
  else if (existing !== undefined) return reply.send(encodeSubscribed(reply.id, subscriptionId, ref, { where: canonicalWhere(where) }))
  if (subscriptions.full) return refuse(subscriptions.tooMany)
  const denial = await services.policy.check(entity, FEED, tenantId, socket.principal)
  if (!socket.isOpen) return
  if (denial !== null) return refuse(denial)
  const receiver = subscriptions.feedWatcher(null)
  const subscription: Subscription = { entityType: entity.name, entityId: FEED, tenantId, receiver, counted: false, filter: { feedChannel, subscriptionId } }
  subscriptions.keep(key, subscription)
  let joined: Awaited<ReturnType<Filters['join']>> | null
  try {
    // a filter's reads are database reads a client asks for: the same budget as replays and snapshots
    joined = await services.limitRead(socket.ip, async () =>
      await services.filters.join(receiver, { entity, tenantId, feedChannel, subscriptionId, conditions: conditionsOf(where), snapshot: req.snapshot === true, holder: socket }))
  } catch (err) {
    subscriptions.forgo(key, subscription)
    if (err instanceof FilterLimitError) return refuse({ code: WireError.tooManyFilters, reason: err.message })
    if (err instanceof SnapshotUnavailable) return refuse({ code: WireError.badRequest, reason: err.message })
    services.log.error({ err }, 'changefeed: a filtered feed could not start')
    return reply.fail()
  }
  if (joined === null) {
    subscriptions.forgo(key, subscription)
    return refuse({ code: WireError.rateLimited, reason: 'too many database reads; retry later' })
  }
  if (!subscriptions.isCurrent(key, subscription)) {
    // closed or unsubscribed while the filter was joined: its end found no seat to leave, so leave it here
    receiver.close()
    return await services.filters.leave(receiver, feedChannel, subscriptionId, entity.name)
  }
  const snapshot = joined.entities === null
    ? undefined
    : { entities: joined.entities.map(({ entityId, tenantId, snapshot }) => tenantId === null ? { entityId, ...snapshot } : { entityId, tenantId, ...snapshot }) }
  const frame = encodeSubscribed(reply.id, subscriptionId, ref, { where: canonicalWhere(where), snapshot })
  // a reply the socket could not buffer would close it as a slow consumer
  if (frame.length > limits.maxBufferedBytes / 2) {
    await subscriptions.end(key)
    return refuse({ code: WireError.badRequest, reason: `the reply would be too large (${frame.length} bytes, limits.maxBufferedBytes / 2): narrow the filter, or subscribe without snapshot` })
  }
  reply.send(frame)
  joined.start()
}
