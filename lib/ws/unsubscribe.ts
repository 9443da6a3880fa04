/**
 * An unsubscribe (by subscriptionId, by type and id, with `where` for a filtered feed, or `entityIds` for many):
 * ends what it names, and is always answered `unsubscribed` — unsubscribing from something not watched is not an
 * error, since reference-counting clients may do it twice.
 */
import { Compile } from 'typebox/compile'
import { FEED } from '../route/channels.js'
import type { EntityType } from '../entities.js'
import type { Reply } from './requests.js'
import { filterKey, type Subscriptions } from './subscriptions.js'
import { isRefusal, resolveTarget } from './target.js'
import {
  WhereSchema, encodeUnsubscribed, encodeUnsubscribedMany, filterIdOf, parseFilterId, parseSubscriptionId, subscriptionIdOf,
  type UnsubscribeRequest, type Where
} from '../protocol/index.js'

const WhereCheck = Compile(WhereSchema)

export async function unsubscribe (subscriptions: Subscriptions, reply: Reply, req: UnsubscribeRequest): Promise<void> {
  const { socket, services } = subscriptions
  const targetOf = (entityType: string, tenantId: string | undefined): ReturnType<typeof resolveTarget> =>
    resolveTarget(services.registry, services.policy, socket.principal, entityType, tenantId)
  if ('entityIds' in req) {
    const target = targetOf(req.entityType, req.tenantId)
    if (!isRefusal(target)) {
      await Promise.all(req.entityIds.map(async (id) => await subscriptions.end(keyOf(subscriptions, target.entity, id, target.tenantId, req.tenantId))))
    }
    return reply.send(encodeUnsubscribedMany(reply.id, req.entityType, req.tenantId, [...new Set(req.entityIds)]))
  }
  const named = 'subscriptionId' in req ? parseSubscriptionId(req.subscriptionId) : req
  const target = named === null ? null : targetOf(named.entityType, named.tenantId)
  if (named !== null && target !== null && !isRefusal(target)) {
    await subscriptions.end(keyOf(subscriptions, target.entity, named.entityId, target.tenantId, named.tenantId, (named as { where?: Where }).where))
  }
  const subscriptionId = 'subscriptionId' in req
    ? req.subscriptionId
    : subscriptionIdOf(services.registry.get(req.entityType)?.name ?? req.entityType, req.where === undefined ? req.entityId : filterIdOf(req.where), req.tenantId)
  reply.send(encodeUnsubscribed(reply.id, subscriptionId))
}

/**
 * The key a subscription is held by: its channel, or for a filtered feed (`where`, or an entity id `*{…}` from a
 * subscriptionId) the feed channel and the filter. `named`: the tenant as the request named it.
 */
function keyOf (subscriptions: Subscriptions, entity: EntityType, entityId: string, tenantId: string | null, named: string | undefined, where?: Where): string {
  const filter = where ?? parseFilterId(entityId)
  const channel = subscriptions.services.fanout.channel(entity.name, filter === null ? entityId : FEED, tenantId)
  if (filter === null || !WhereCheck.Check(filter)) return channel
  return filterKey(channel, subscriptionIdOf(entity.name, filterIdOf(filter), named))
}
