/** A subscribe request, by kind: many entities, a filtered feed, or one entity (or a feed). */
import type { Reply } from './requests.js'
import type { Subscriptions } from './subscriptions.js'
import { subscribeEntity } from './subscribe-entity.js'
import { subscribeMany } from './subscribe-many.js'
import { subscribeWhere } from './subscribe-where.js'
import type { SubscribeRequest } from '../protocol/index.js'

export async function subscribe (subscriptions: Subscriptions, reply: Reply, req: SubscribeRequest): Promise<void> {
  if ('entityIds' in req) return await subscribeMany(subscriptions, reply, req)
  if (req.where !== undefined) return await subscribeWhere(subscriptions, reply, req, req.where)
  await subscribeEntity(subscriptions, reply, req)
}
