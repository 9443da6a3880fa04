/**
 * What every request about entities starts with: the entity type it names (declared, or discovered with an access
 * rule) and the tenant it watches for this principal, or why it may name neither (lib/auth/policy.ts decides).
 */
import type { EntityRegistry, EntityType } from '../entities.js'
import type { AccessPolicy } from '../auth/policy.js'
import type { Principal } from '../auth/principal.js'
import { WireError, type WireErrorCode } from '../protocol/index.js'

/** The type a request names, and the tenant whose entities it watches (null: every tenant's, or an untenanted type). */
export interface Target { entity: EntityType, tenantId: string | null }

/** Why a request is refused: the code and reason of its `subscription_error` (or its batch's errors). */
export interface Refusal { code: WireErrorCode, reason: string }

export const isRefusal = (value: object): value is Refusal => 'code' in value

/** Whether a type can be subscribed to: declared, or discovered with an access rule. */
export function subscribable (entity: EntityType | undefined): entity is EntityType {
  return entity !== undefined && (entity.access !== null || entity.declared)
}

/** The target of a request naming `entityType` (and `tenantId`, as asked), or its refusal. */
export function resolveTarget (registry: EntityRegistry, policy: AccessPolicy, principal: Principal, entityType: string, tenantId: string | undefined): Target | Refusal {
  const entity = registry.get(entityType)
  if (!subscribable(entity)) return { code: WireError.unknownEntityType, reason: `unknown entity type "${entityType}"` }
  const scope = policy.scope(entity, tenantId, principal)
  return isRefusal(scope) ? scope : { entity, tenantId: scope.tenantId }
}
