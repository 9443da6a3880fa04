/** The fields many messages share: a request's id, an entity's type, id and tenant, and how a reply is shaped. */
import Type from 'typebox'
import { WireError } from './wire.js'

export type RequestIdValue = string | number | undefined
export const RequestId = Type.Union([Type.String({ maxLength: 128 }), Type.Integer()])
export const EntityTypeName = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z_][A-Za-z0-9_.]*$' })
/**
 * no control characters: they have no place in an id, and PostgreSQL refuses \u0000 in text; no lone surrogates:
 * they have no UTF-8, so a broker channel or a query would carry U+FFFD instead, the id of another entity
 */
export const EntityId = Type.String({ minLength: 1, maxLength: 512, pattern: '^[^\\u0000-\\u001f\\u007f\\ud800-\\udfff]+$' })
/** a tenant id (Marten's tenant ids are strings); no ':', which ends the tenant in a subscriptionId */
export const TenantId = Type.String({ minLength: 1, maxLength: 128, pattern: '^[^\\u0000-\\u001f\\u007f\\ud800-\\udfff:]+$' })

/** An entity as replies name it: its type, id, and (tenanted types) its tenant. */
export const Ref = {
  entityType: Type.String(),
  entityId: Type.String(),
  tenantId: Type.Optional(Type.String())
}
export const ErrorCode = Type.Enum(Object.values(WireError))
export const reply = <K extends string, T extends Record<string, Parameters<typeof Type.Object>[0][string]>>(type: K, data: T) =>
  Type.Object({ type: Type.Literal(type), id: Type.Optional(RequestId), data: Type.Object(data, { additionalProperties: false }) }, { additionalProperties: false })
