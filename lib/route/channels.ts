/**
 * Where an entity's changes travel on the bus. An entity is (type, tenant, id):
 *   <prefix>:<Type>:<id>              an entity of an untenanted type; for a tenanted type, every tenant's entity
 *                                     with that id (anonymous watchers of public types, admins)
 *   <prefix>:<Type>@<tenant>:<id>     one tenant's entity (the tenant URI-encoded, so it holds no ':')
 *   <prefix>:<Type>:* and <prefix>:<Type>@<tenant>:*     the type's feed, all tenants' or one tenant's
 * Type names cannot contain '@' or ':', so no two of these can be the same string.
 */
import type { EntityType } from '../entities.js'
import { FEED } from '../protocol/wire.js'

export { FEED }

/**
 * Where the instance that listens to a database tells the others that its tables changed (an event trigger's note:
 * a table made, dropped or rebuilt, or its table of tenant databases written): the message is the database's name.
 */
export const tablesChannelOf = (prefix: string): string => prefix + ':$tables'

export function channelOf (prefix: string, entityType: string, entityId: string, tenantId: string | null = null): string {
  return tenantId === null
    ? prefix + ':' + entityType + ':' + entityId
    : prefix + ':' + entityType + '@' + encodeURIComponent(tenantId) + ':' + entityId
}

/**
 * Every channel a change of (entity, tenant, id) is published on, in this order: the entity's own channel (the
 * tenant's, when it has one: the key of the entity's order), every tenant's entity channel (tenanted types), then
 * the type's feeds (the tenant's, every tenant's).
 */
export function channelsOf (prefix: string, entity: EntityType, entityId: string, tenantId: string | null): string[] {
  const channels = [channelOf(prefix, entity.name, entityId, tenantId)]
  if (tenantId !== null) channels.push(channelOf(prefix, entity.name, entityId))
  if (entity.feed) {
    if (tenantId !== null) channels.push(channelOf(prefix, entity.name, FEED, tenantId))
    channels.push(channelOf(prefix, entity.name, FEED))
  }
  return channels
}
