/**
 * A host's direct publish (`fastify.changefeed.publish()`), checked and made a change like a captured one, so it
 * takes the same route from there (order, span, stream, delta). Its document is what the host gave: a payload makes
 * it `full` (a patch for a `delta` type), none `minimal`; nothing is read from a database.
 */
import type { Change } from '../capture/coalesce.js'
import type { EntityRegistry, EntityType } from '../entities.js'
import { InvalidChangeError, UnknownEntityTypeError } from '../errors.js'
import { CHANGE_TYPES, type ChangeType } from '../protocol/index.js'

/** What a host passes to `fastify.changefeed.publish()`. */
export interface PublishInput {
  entityType: string
  entityId: string
  changeType: ChangeType
  /** the tenant of the entity: required for tenanted types, refused for the others */
  tenantId?: string
  /** the document (JSON); when given the notification is `full` (or for a `delta` type a patch), otherwise `minimal` */
  payload?: unknown
  version?: string | number
}

/** The change a publish makes, and its type; throws CHANGEFEED_UNKNOWN_ENTITY_TYPE or CHANGEFEED_INVALID_CHANGE. */
export function publishedChange (registry: EntityRegistry, input: PublishInput, position: string): { entity: EntityType, change: Change } {
  const entity = registry.get(input?.entityType)
  if (entity === undefined) throw new UnknownEntityTypeError(String(input?.entityType))
  if (typeof input.entityId !== 'string' || input.entityId.length === 0) throw new InvalidChangeError('entityId must be a non-empty string')
  if (!(CHANGE_TYPES as readonly string[]).includes(input.changeType)) throw new InvalidChangeError(`changeType must be one of ${CHANGE_TYPES.join(', ')}`)
  const tenantId = input.tenantId ?? null
  if ((entity.tenancy === 'none') !== (tenantId === null)) {
    throw new InvalidChangeError(entity.tenancy === 'none' ? `${entity.name} is not tenanted: no tenantId` : `${entity.name} is tenanted: tenantId is required`)
  }
  const hasDoc = input.payload !== undefined
  const change: Change = {
    database: registry.databaseFor(entity, tenantId) ?? '',
    schema: entity.schema,
    table: entity.table,
    id: input.entityId,
    tenantId,
    changeType: input.changeType,
    // no transaction: nothing a snapshot read can have seen
    txid: '',
    position,
    version: input.version === undefined ? null : String(input.version),
    ts: Date.now(),
    origin: null,
    // a patch is made between documents as clients parse them (no Dates, no undefined): the JSON of the payload
    doc: hasDoc && entity.payload === 'delta' ? JSON.parse(JSON.stringify(input.payload)) as unknown : input.payload,
    hasDoc,
    published: true
  }
  return { entity, change }
}
