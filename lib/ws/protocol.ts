/**
 * The wire protocol of DESIGN.md §5: client messages as compiled TypeBox schemas, and the encoders of the
 * server's replies. Unknown top-level fields are ignored (newer clients may send more); `data` is strict.
 */
import Type, { type Static } from 'typebox'
import { Compile } from 'typebox/compile'
import type { WireErrorCode } from '../errors.js'

const RequestId = Type.Union([Type.String({ maxLength: 128 }), Type.Integer()])
const EntityTypeName = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z_][A-Za-z0-9_.]*$' })
/** no control characters: they have no place in an id, and PostgreSQL refuses \\u0000 in text */
const EntityId = Type.String({ minLength: 1, maxLength: 512, pattern: '^[^\\u0000-\\u001f\\u007f]+$' })

export const Envelope = Compile(Type.Object({
  type: Type.String({ minLength: 1, maxLength: 32 }),
  id: Type.Optional(RequestId),
  data: Type.Optional(Type.Unknown())
}))

const SubscribeData = Type.Object({
  entityType: EntityTypeName,
  /** an entity id, or "*" for every entity of a feed type */
  entityId: EntityId,
  since: Type.Optional(Type.String({ maxLength: 128 })),
  /** push the number of watchers of the entity across the cluster when it changes */
  watchers: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

const UnsubscribeData = Type.Union([
  Type.Object({ subscriptionId: Type.String({ minLength: 1, maxLength: 700, pattern: '^[^\\u0000-\\u001f\\u007f]+$' }) }, { additionalProperties: false }),
  Type.Object({ entityType: EntityTypeName, entityId: EntityId }, { additionalProperties: false })
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

/** The subscriptionId of DESIGN.md §5: `<entityType>:<entityId>`, as the users' draft client computes it. */
export function subscriptionIdOf (entityType: string, entityId: string): string {
  return entityType + ':' + entityId
}

function withId (id: RequestIdValue, body: Record<string, unknown>): string {
  return JSON.stringify(id === undefined ? body : { type: body.type, id, data: body.data })
}

export function encodeError (id: RequestIdValue, code: WireErrorCode, error: string): string {
  return withId(id, { type: 'error', data: { code, error } })
}

/** `recovered` answers a subscribe with `since`: true when the missed changes follow, false when the client must refetch. */
export function encodeSubscribed (id: RequestIdValue, subscriptionId: string, entityType: string, entityId: string, recovered?: boolean): string {
  return withId(id, { type: 'subscribed', data: recovered === undefined ? { subscriptionId, entityType, entityId } : { subscriptionId, entityType, entityId, recovered } })
}

export function encodeSubscriptionError (id: RequestIdValue, entityType: string, entityId: string, code: WireErrorCode, error: string): string {
  return withId(id, { type: 'subscription_error', data: { entityType, entityId, code, error } })
}

export function encodeUnsubscribed (id: RequestIdValue, subscriptionId: string): string {
  return withId(id, { type: 'unsubscribed', data: { subscriptionId } })
}

export function encodeResync (reason: string, entityType?: string, entityId?: string): string {
  return JSON.stringify({ type: 'resync', data: entityType === undefined ? { reason } : { reason, entityType, entityId } })
}

export function encodeAuthenticated (id: RequestIdValue, principal: { userId: string | null, roles: readonly string[], expiresAt: number | null }): string {
  return withId(id, {
    type: 'authenticated',
    data: { userId: principal.userId, roles: principal.roles, expiresAt: principal.expiresAt === null ? null : new Date(principal.expiresAt).toISOString() }
  })
}

export const PONG = '{"type":"pong"}'
