/**
 * Every message of the wire protocol as a TypeBox schema, and its type. The server validates what clients send
 * with the compiled validators here; the tests check every frame the server sends with `ServerMessageValidator`;
 * the client SDK imports the types only (no runtime dependency). Unknown top-level fields of a client message are
 * ignored (newer clients may send more); its `data` is strict.
 */
import Type, { type Static } from 'typebox'
import { Compile } from 'typebox/compile'
import { CHANGE_TYPES, FILTER_CHANGE_TYPES, WireError, type WireErrorCode } from './wire.js'
import { WHERE_LIMITS } from './where.js'

import { EntityId, EntityTypeName, ErrorCode, Ref, RequestId, TenantId, reply, type RequestIdValue } from './fields.js'
import { PresenceEvent, PresenceRequestData, PresenceSet, PresenceSnapshot, SignalFrame, SignalRequestData, SignalSent, SubscribePresence } from './presence.js'

// ------------------------------------------------------------------ client → server

/** Every client message: a type, an optional id echoed in the reply, and the type's data. */
export const ClientEnvelope = Type.Object({
  type: Type.String({ minLength: 1, maxLength: 32 }),
  id: Type.Optional(RequestId),
  data: Type.Optional(Type.Unknown())
})

/**
 * A filtered feed's condition value: equality with a JSON scalar, or (an array) with any of them. Strings as ids are:
 * no control characters and no lone surrogates, which PostgreSQL's jsonb cannot hold.
 */
const WhereScalar = Type.Union([Type.String({ maxLength: WHERE_LIMITS.string, pattern: '^[^\\u0000-\\u001f\\u007f\\ud800-\\udfff]*$' }), Type.Number(), Type.Boolean(), Type.Null()])
/**
 * A filtered feed's conditions: every one must hold. Keys are top-level or dotted paths into the document
 * (`"teamId"`, `"venue.city"`); a value is compared for JSON equality, an array means any of its values. The sizes
 * are WHERE_LIMITS (where.ts): what one filter may cost the server per change.
 */
export const WhereSchema = Type.Record(
  // a record's keys are checked by their pattern alone: the length is in it
  Type.String({ pattern: `^(?=.{1,${WHERE_LIMITS.pathLength}}$)[A-Za-z_$][A-Za-z0-9_$]*(\\.[A-Za-z_$][A-Za-z0-9_$]*){0,${WHERE_LIMITS.depth - 1}}$` }),
  Type.Union([WhereScalar, Type.Array(WhereScalar, { minItems: 1, maxItems: WHERE_LIMITS.values })]),
  { minProperties: 1, maxProperties: WHERE_LIMITS.conditions, additionalProperties: false })

/** A subscribe to one entity, a feed ("*"), or a filtered feed ("*" with `where`). */
export const SubscribeOneData = Type.Object({
  entityType: EntityTypeName,
  /** an entity id, or "*" for every entity of a feed type */
  entityId: EntityId,
  /** tenanted types: whose entity; without it, the signed-in user's own tenant (or every tenant for anonymous watchers of public types and admins) */
  tenantId: Type.Optional(TenantId),
  /** the last position seen: the missed changes are replayed when they can be (outbox mode) */
  since: Type.Optional(Type.String({ maxLength: 128 })),
  /** push the number of watchers of the entity across the cluster when it changes */
  watchers: Type.Optional(Type.Boolean()),
  /** the reply carries the current state, read so that every later change arrives as a notification and none before it does */
  snapshot: Type.Optional(Type.Boolean()),
  /** with entityId "*": only the entities whose document matches (`full` and `delta` types), with entered/left */
  where: Type.Optional(WhereSchema),
  /** `true`: watch who is on the entity; `{info}`: join as a member (signed-in users, types with presence) */
  presence: Type.Optional(SubscribePresence)
}, { additionalProperties: false })

/** A subscribe to many entities of one type in one request (at most limits.maxSubscriptionsPerConnection): one reply for all. */
export const SubscribeManyData = Type.Object({
  entityType: EntityTypeName,
  entityIds: Type.Array(EntityId, { minItems: 1, maxItems: 1000 }),
  tenantId: Type.Optional(TenantId),
  snapshot: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

export const SubscribeData = Type.Union([SubscribeOneData, SubscribeManyData])

export const UnsubscribeData = Type.Union([
  Type.Object({ subscriptionId: Type.String({ minLength: 1, maxLength: 4096, pattern: '^[^\\u0000-\\u001f\\u007f\\ud800-\\udfff]+$' }) }, { additionalProperties: false }),
  Type.Object({ entityType: EntityTypeName, entityId: EntityId, tenantId: Type.Optional(TenantId), where: Type.Optional(WhereSchema) }, { additionalProperties: false }),
  Type.Object({ entityType: EntityTypeName, entityIds: Type.Array(EntityId, { minItems: 1, maxItems: 1000 }), tenantId: Type.Optional(TenantId) }, { additionalProperties: false })
])

export const AuthData = Type.Object({ token: Type.String({ minLength: 1, maxLength: 16384 }) }, { additionalProperties: false })

export type SubscribeRequest = Static<typeof SubscribeData>
export type SubscribeOneRequest = Static<typeof SubscribeOneData>
export type SubscribeManyRequest = Static<typeof SubscribeManyData>
export type WhereConditions = Static<typeof WhereSchema>
export type UnsubscribeRequest = Static<typeof UnsubscribeData>
export type AuthRequest = Static<typeof AuthData>
export type { PresenceRequest, SignalRequest } from './presence.js'
export type { RequestIdValue } from './fields.js'

const WhereValidator = Compile(WhereSchema)
const { conditions, depth, pathLength, string, values } = WHERE_LIMITS

/** Why a request's `where` is refused, naming the limits; null when it has none, or one the protocol allows. */
export function whereRefusal (data: unknown): string | null {
  const where = data !== null && typeof data === 'object' ? (data as { where?: unknown }).where : undefined
  if (where === undefined || WhereValidator.Check(where)) return null
  return `where: 1 to ${conditions} conditions, each a dotted path of at most ${depth} names and ${pathLength} characters, and a JSON scalar (a string of at most ${string} characters, without control characters) or a list of 1 to ${values} of them`
}

/** The compiled validators of client messages: the envelope, then `data` by type (a type missing here is unknown). */
export const Envelope = Compile(ClientEnvelope)
export const RequestData = {
  subscribe: Compile(SubscribeData),
  unsubscribe: Compile(UnsubscribeData),
  auth: Compile(AuthData),
  presence: Compile(PresenceRequestData),
  signal: Compile(SignalRequestData)
} as const

/** Every message a client sends; the server reads them with `readClientMessage`, the SDK sends them. */
export type ClientMessage =
  | { type: 'subscribe', id?: string | number, data: SubscribeRequest }
  | { type: 'unsubscribe', id?: string | number, data: UnsubscribeRequest }
  | { type: 'auth', id?: string | number, data: AuthRequest }
  | { type: 'ping', id?: string | number }
  | { type: 'presence', id?: string | number, data: Static<typeof PresenceRequestData> }
  | { type: 'signal', id?: string | number, data: Static<typeof SignalRequestData> }

/** Why a frame is no message of the protocol: its `error` reply (the request's id when it could be read). */
export interface Unreadable { id: RequestIdValue, code: WireErrorCode, error: string }

const NEEDS: Record<keyof typeof RequestData, string> = {
  subscribe: 'subscribe needs data {entityType, entityId or entityIds, tenantId?, since?, snapshot?, where?, watchers?}',
  unsubscribe: 'unsubscribe needs data {subscriptionId}, {entityType, entityId, where?} or {entityType, entityIds}',
  auth: 'auth needs data {token}',
  presence: 'presence needs data {entityType, entityId, tenantId?, info}',
  signal: 'signal needs data {entityType, entityId, tenantId?, data}'
}

/** A client's text frame as a message of the protocol, or why it is none. */
export function readClientMessage (text: string): ClientMessage | Unreadable {
  let message: unknown
  try {
    message = JSON.parse(text)
  } catch {
    return { id: undefined, code: WireError.invalidJson, error: 'frame is not JSON' }
  }
  if (!Envelope.Check(message)) return { id: requestIdOf(message), code: WireError.badRequest, error: 'expected {"type": string, "id"?: string | integer, "data"?: object}' }
  const { type, id, data } = message
  if (type === 'ping') return id === undefined ? { type } : { type, id }
  if (!Object.hasOwn(RequestData, type)) return { id, code: WireError.badRequest, error: `unknown message type "${type.slice(0, 32)}"` }
  const kind = type as keyof typeof RequestData
  if (!RequestData[kind].Check(data)) return { id, code: WireError.badRequest, error: (kind === 'subscribe' || kind === 'unsubscribe' ? whereRefusal(data) : null) ?? NEEDS[kind] }
  return (id === undefined ? { type, data } : { type, id, data }) as ClientMessage
}

export const isUnreadable = (read: ClientMessage | Unreadable): read is Unreadable => 'code' in read

/** The id of a message that is not one of the protocol, when it has a usable one. */
function requestIdOf (message: unknown): RequestIdValue {
  if (message === null || typeof message !== 'object') return undefined
  const id = (message as { id?: unknown }).id
  return (typeof id === 'string' && id.length <= 128) || Number.isInteger(id) ? id as string | number : undefined
}

// ------------------------------------------------------------------ server → client

/**
 * An entity's state when its subscription began: every change after it arrives as a notification, none before it
 * does. `payload` (`full` and `delta` types): the document, null when there is none; `position`: that of the change
 * that wrote it, when known (a `delta` type's next patch may apply to it).
 */
export const EntitySnapshot = Type.Object({
  payload: Type.Optional(Type.Unknown()),
  version: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  position: Type.Optional(Type.String())
}, { additionalProperties: false })
/** A filtered feed's snapshot: the entities that match now. */
export const FeedSnapshot = Type.Object({
  entities: Type.Array(Type.Object({ entityId: Type.String(), tenantId: Type.Optional(Type.String()), ...EntitySnapshot.properties }, { additionalProperties: false }))
}, { additionalProperties: false })

export const Subscribed = reply('subscribed', {
  subscriptionId: Type.String(),
  ...Ref,
  /** a filtered feed: its conditions as the server holds them (the subscriptionId names them too) */
  where: Type.Optional(WhereSchema),
  /** answers a subscribe with `since`: true when the missed changes follow, false when the client must refetch */
  recovered: Type.Optional(Type.Boolean()),
  /** answers a subscribe with `snapshot` (with `since`: only when not recovered) */
  snapshot: Type.Optional(Type.Union([EntitySnapshot, FeedSnapshot])),
  /** answers a subscribe with `presence`: who is on the entity now */
  presence: Type.Optional(PresenceSnapshot),
  /**
   * answers a subscribe without `since` or `snapshot` (notify mode, a type with history): where the subscription
   * starts; sent as `since` when no notification came before a reconnect, it resumes like the last one's position
   */
  position: Type.Optional(Type.String())
})
/** The reply to a subscribe with `entityIds`: the ids now watched, the refused ones, and (with `snapshot`) their states. */
export const SubscribedMany = reply('subscribed', {
  entityType: Type.String(),
  tenantId: Type.Optional(Type.String()),
  subscribed: Type.Array(Type.String()),
  errors: Type.Array(Type.Object({ entityId: Type.String(), code: Type.Enum(Object.values(WireError)), error: Type.String() }, { additionalProperties: false })),
  snapshots: Type.Optional(Type.Record(Type.String(), EntitySnapshot)),
  /** where the subscriptions that start now start (notify mode, a type with history), by entity id: as `subscribed.position` */
  positions: Type.Optional(Type.Record(Type.String(), Type.String()))
})
export const SubscriptionError = reply('subscription_error', { ...Ref, code: ErrorCode, error: Type.String() })
export const Unsubscribed = reply('unsubscribed', { subscriptionId: Type.String() })
export const UnsubscribedMany = reply('unsubscribed', { entityType: Type.String(), tenantId: Type.Optional(Type.String()), unsubscribed: Type.Array(Type.String()) })
export const Authenticated = reply('authenticated', {
  userId: Type.Union([Type.String(), Type.Null()]),
  roles: Type.Array(Type.String()),
  expiresAt: Type.Union([Type.String(), Type.Null()])
})
export const ErrorReply = reply('error', { code: ErrorCode, error: Type.String() })

/** `entered` and `left`: filtered feeds only, an entity that began or stopped matching */
export const ChangeTypeSchema = Type.Enum([...CHANGE_TYPES, ...FILTER_CHANGE_TYPES])
export const PayloadType = Type.Enum(['minimal', 'full', 'events', 'delta'])

/** One RFC 6902 operation of a `delta` notification's patch (the server writes add, remove and replace). */
export const PatchOperationSchema = Type.Union([
  Type.Object({ op: Type.Enum(['add', 'replace']), path: Type.String(), value: Type.Unknown() }, { additionalProperties: false }),
  Type.Object({ op: Type.Literal('remove'), path: Type.String() }, { additionalProperties: false })
])

export const NotificationData = Type.Object({
  ...Ref,
  changeType: ChangeTypeSchema,
  payloadType: PayloadType,
  /** the change's time (the trigger's clock, or the publish call's), ISO 8601 */
  timestamp: Type.String(),
  /** Marten's mt_version, or the version a host published */
  version: Type.Optional(Type.String()),
  /** where the change stands: compare for equality; send the last one as `since` */
  position: Type.Optional(Type.String()),
  /** the writer's tag (changefeed.origin) */
  origin: Type.Optional(Type.String()),
  /** `full`: the document (null when deleted); `events`: the appended events */
  payload: Type.Optional(Type.Unknown()),
  /** `delta`: the position of the document the patch applies to (the last one this socket was sent of the entity) */
  basePosition: Type.Optional(Type.String()),
  /** `delta`: the RFC 6902 patch from the document at `basePosition` to this change's */
  patch: Type.Optional(Type.Array(PatchOperationSchema)),
  /**
   * feeds and filtered feeds: the subscription the notification is for (a socket may hold a feed and its entity, or
   * several filters of one type); an entity's own notifications have none
   */
  subscriptionId: Type.Optional(Type.String())
}, { additionalProperties: false })
export const Notification = Type.Object({ type: Type.Literal('notification'), data: NotificationData }, { additionalProperties: false })
/** a busy feed: several notifications in one frame */
export const Batch = Type.Object({ type: Type.Literal('batch'), data: Type.Array(Notification) }, { additionalProperties: false })
export const Watchers = Type.Object({
  type: Type.Literal('watchers'),
  data: Type.Object({ ...Ref, count: Type.Integer({ minimum: 0 }) }, { additionalProperties: false })
}, { additionalProperties: false })
/** changes may have been missed (of one entity, or of every watched entity when it names none): refetch */
export const Resync = Type.Object({
  type: Type.Literal('resync'),
  data: Type.Object({ reason: Type.String(), entityType: Type.Optional(Type.String()), entityId: Type.Optional(Type.String()), tenantId: Type.Optional(Type.String()) }, { additionalProperties: false })
}, { additionalProperties: false })
/** the answer to a ping, with the ping's id when it had one */
export const Pong = Type.Object({ type: Type.Literal('pong'), id: Type.Optional(RequestId) }, { additionalProperties: false })

export const ServerMessageSchema = Type.Union([Subscribed, SubscribedMany, SubscriptionError, Unsubscribed, UnsubscribedMany, Authenticated, ErrorReply, Notification, Batch, Watchers, Resync, Pong, PresenceEvent, PresenceSet, SignalSent, SignalFrame])
export type ServerMessage = Static<typeof ServerMessageSchema>
export type NotificationMessage = Static<typeof NotificationData>
export type ChangeTypeName = Static<typeof ChangeTypeSchema>
export type EntitySnapshotData = Static<typeof EntitySnapshot>
export type FeedSnapshotData = Static<typeof FeedSnapshot>
export type PayloadTypeName = Static<typeof PayloadType>

/** Validates a frame the server sent (tests). */
export const ServerMessageValidator = Compile(ServerMessageSchema)
