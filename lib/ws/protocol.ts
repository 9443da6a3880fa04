/**
 * The wire protocol of DESIGN.md §5: client messages as compiled TypeBox schemas, and the encoders of the
 * server's replies. Unknown top-level fields are ignored (newer clients may send more); `data` is strict.
 */
import Type, { type Static } from 'typebox'
import { Compile } from 'typebox/compile'
import type { WireErrorCode } from '../errors.js'

const RequestId = Type.Union([Type.String({ maxLength: 128 }), Type.Integer()])
const EntityTypeName = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z_][A-Za-z0-9_.]*$' })
/**
 * no control characters: they have no place in an id, and PostgreSQL refuses \\u0000 in text; no lone surrogates:
 * they have no UTF-8, so a broker channel or a query would carry U+FFFD instead, the id of another entity
 */
const EntityId = Type.String({ minLength: 1, maxLength: 512, pattern: '^[^\\u0000-\\u001f\\u007f\\ud800-\\udfff]+$' })

export const Envelope = Compile(Type.Object({
  type: Type.String({ minLength: 1, maxLength: 32 }),
  id: Type.Optional(RequestId),
  data: Type.Optional(Type.Unknown())
}))

/** a tenant id (Marten's tenant ids are strings); no ':', which ends the tenant in a subscriptionId */
const TenantId = Type.String({ minLength: 1, maxLength: 128, pattern: '^[^\\u0000-\\u001f\\u007f\\ud800-\\udfff:]+$' })

const SubscribeData = Type.Object({
  entityType: EntityTypeName,
  /** an entity id, or "*" for every entity of a feed type */
  entityId: EntityId,
  /** tenanted types: whose entity; without it, the signed-in user's own tenant (or every tenant for anonymous watchers of public types and admins) */
  tenantId: Type.Optional(TenantId),
  since: Type.Optional(Type.String({ maxLength: 128 })),
  /** push the number of watchers of the entity across the cluster when it changes */
  watchers: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

const UnsubscribeData = Type.Union([
  Type.Object({ subscriptionId: Type.String({ minLength: 1, maxLength: 700, pattern: '^[^\\u0000-\\u001f\\u007f\\ud800-\\udfff]+$' }) }, { additionalProperties: false }),
  Type.Object({ entityType: EntityTypeName, entityId: EntityId, tenantId: Type.Optional(TenantId) }, { additionalProperties: false })
])

const AuthData = Type.Object({ token: Type.String({ minLength: 1, maxLength: 16384 }) }, { additionalProperties: false })

export type SubscribeRequest = Static<typeof SubscribeData>
export type UnsubscribeRequest = Static<typeof UnsubscribeData>
export type AuthRequest = Static<typeof AuthData>

/** Validators of `data`, by message type. A type missing here is unknown. */
export const RequestData = {
  subscribe: Compile(SubscribeData),
  unsubscribe: Compile(UnsubscribeData),
  auth: Compile(AuthData)
} as const

export type RequestIdValue = string | number | undefined

/**
 * The subscriptionId: `<entityType>:<entityId>`, as the users' draft client computes it; a subscription that named
 * a tenant is `<entityType>@<tenantId>:<entityId>` (type names hold neither '@' nor ':').
 */
export function subscriptionIdOf (entityType: string, entityId: string, tenantId?: string): string {
  return tenantId === undefined ? entityType + ':' + entityId : entityType + '@' + tenantId + ':' + entityId
}

/** The parts of a subscriptionId, or null when it is not one. */
export function parseSubscriptionId (subscriptionId: string): { entityType: string, entityId: string, tenantId?: string } | null {
  const match = /^([A-Za-z_][A-Za-z0-9_.]*)(?:@([^:]+))?:(.+)$/s.exec(subscriptionId)
  if (match === null) return null
  return match[2] === undefined ? { entityType: match[1], entityId: match[3] } : { entityType: match[1], tenantId: match[2], entityId: match[3] }
}

/** What a notification says of one change. */
export interface NotificationFields {
  entityType: string
  entityId: string
  /** tenanted types only */
  tenantId?: string | null
  changeType: string
  payloadType: string
  /** the change's time, epoch ms */
  ts: number
  version?: string | null
  origin?: string | null
  payload?: unknown
  position?: string | null
}

/** The notification frame, encoded once for every watcher. */
export function encodeNotification (n: NotificationFields): string {
  const data: Record<string, unknown> = {
    entityType: n.entityType,
    entityId: n.entityId,
    changeType: n.changeType,
    payloadType: n.payloadType,
    timestamp: new Date(n.ts).toISOString()
  }
  if (n.tenantId !== undefined && n.tenantId !== null) data.tenantId = n.tenantId
  if (n.version !== undefined && n.version !== null) data.version = n.version
  if (n.position !== undefined && n.position !== null) data.position = n.position
  if (n.origin !== undefined && n.origin !== null) data.origin = n.origin
  if (n.payloadType === 'full' || n.payloadType === 'events') data.payload = n.payload ?? null
  return JSON.stringify({ type: 'notification', data })
}

function withId (id: RequestIdValue, body: Record<string, unknown>): string {
  return JSON.stringify(id === undefined ? body : { type: body.type, id, data: body.data })
}

export function encodeError (id: RequestIdValue, code: WireErrorCode, error: string): string {
  return withId(id, { type: 'error', data: { code, error } })
}

/** `recovered` answers a subscribe with `since`: true when the missed changes follow, false when the client must refetch. */
/** An entity as replies name it: its type, id, and (when the request named one, or it is implied) its tenant. */
export interface EntityRef { entityType: string, entityId: string, tenantId?: string | null }

const refOf = (ref: EntityRef): Record<string, unknown> =>
  ref.tenantId === undefined || ref.tenantId === null
    ? { entityType: ref.entityType, entityId: ref.entityId }
    : { entityType: ref.entityType, entityId: ref.entityId, tenantId: ref.tenantId }

/** `recovered` answers a subscribe with `since`: true when the missed changes follow, false when the client must refetch. */
export function encodeSubscribed (id: RequestIdValue, subscriptionId: string, ref: EntityRef, recovered?: boolean): string {
  const data: Record<string, unknown> = { subscriptionId, ...refOf(ref) }
  if (recovered !== undefined) data.recovered = recovered
  return withId(id, { type: 'subscribed', data })
}

export function encodeSubscriptionError (id: RequestIdValue, ref: EntityRef, code: WireErrorCode, error: string): string {
  return withId(id, { type: 'subscription_error', data: { ...refOf(ref), code, error } })
}

export function encodeUnsubscribed (id: RequestIdValue, subscriptionId: string): string {
  return withId(id, { type: 'unsubscribed', data: { subscriptionId } })
}

export function encodeResync (reason: string, ref?: EntityRef): string {
  return JSON.stringify({ type: 'resync', data: ref === undefined ? { reason } : { reason, ...refOf(ref) } })
}

export function encodeAuthenticated (id: RequestIdValue, principal: { userId: string | null, roles: readonly string[], expiresAt: number | null }): string {
  return withId(id, {
    type: 'authenticated',
    data: { userId: principal.userId, roles: principal.roles, expiresAt: principal.expiresAt === null ? null : new Date(principal.expiresAt).toISOString() }
  })
}

export const PONG = '{"type":"pong"}'
