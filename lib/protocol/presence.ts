/**
 * Presence and signals on the wire: who is on an entity (a member is a user, with all its connections), the batched
 * events that keep a client's list current, and ephemeral signals between the sockets on an entity. The schemas
 * (messages.ts puts them in its unions) and the frames the server builds.
 */
import Type, { type Static } from 'typebox'
import { EntityId, EntityTypeName, Ref, RequestId, TenantId, reply, type RequestIdValue } from './fields.js'

/** `presence` on a subscribe: `true` watches who is there; `{info}` joins as a member with that info. */
export const SubscribePresence = Type.Union([Type.Boolean(), Type.Object({ info: Type.Optional(Type.Unknown()) }, { additionalProperties: false })])
const Target = { entityType: EntityTypeName, entityId: EntityId, tenantId: Type.Optional(TenantId) }
/** Sets this socket's info on an entity it joined. */
export const PresenceRequestData = Type.Object({ ...Target, info: Type.Unknown() }, { additionalProperties: false })
/** Sends a signal to the other sockets watching the entity's presence. */
export const SignalRequestData = Type.Object({ ...Target, data: Type.Unknown() }, { additionalProperties: false })

const Member = Type.Object({ userId: Type.String(), info: Type.Optional(Type.Unknown()), connections: Type.Integer({ minimum: 1 }) }, { additionalProperties: false })
const Joined = Type.Object({ userId: Type.String(), info: Type.Optional(Type.Unknown()) }, { additionalProperties: false })
/** Who is on the entity when the subscription began: at most maxMembers members; `count` is always all of them. */
export const PresenceSnapshot = Type.Object({ count: Type.Integer({ minimum: 0 }), members: Type.Array(Member), truncated: Type.Boolean() }, { additionalProperties: false })
/**
 * What changed since the last frame: lists only while the entity has at most maxMembers members (empty ones
 * omitted); `members` (the whole list, replacing the client's) when it falls back to maxMembers or fewer.
 */
export const PresenceEvent = Type.Object({
  type: Type.Literal('presence'),
  data: Type.Object({
    ...Ref,
    count: Type.Integer({ minimum: 0 }),
    joined: Type.Optional(Type.Array(Joined)),
    updated: Type.Optional(Type.Array(Joined)),
    left: Type.Optional(Type.Array(Type.Object({ userId: Type.String() }, { additionalProperties: false }))),
    members: Type.Optional(Type.Array(Member))
  }, { additionalProperties: false })
}, { additionalProperties: false })
export const PresenceSet = reply('presence_set', Ref)
export const SignalSent = Type.Object({ type: Type.Literal('signal_sent'), id: Type.Optional(RequestId) }, { additionalProperties: false })
export const SignalFrame = Type.Object({
  type: Type.Literal('signal'),
  data: Type.Object({ ...Ref, from: Type.Object({ userId: Type.String() }, { additionalProperties: false }), data: Type.Unknown() }, { additionalProperties: false })
}, { additionalProperties: false })

export type PresenceRequest = Static<typeof PresenceRequestData>
export type SignalRequest = Static<typeof SignalRequestData>
export type PresenceSnapshotData = Static<typeof PresenceSnapshot>
export type PresenceMember = Static<typeof Member>
export type PresenceEventData = Static<typeof PresenceEvent>['data']

/** An entity as presence frames name it. */
export interface PresenceRef { entityType: string, entityId: string, tenantId?: string | null }

const refOf = (ref: PresenceRef): Static<typeof PresenceSet>['data'] =>
  ref.tenantId === undefined || ref.tenantId === null
    ? { entityType: ref.entityType, entityId: ref.entityId }
    : { entityType: ref.entityType, entityId: ref.entityId, tenantId: ref.tenantId }

/** A presence event; `changes` holds only the non-empty lists (or `members`). */
export function encodePresenceEvent (ref: PresenceRef, count: number, changes: Omit<PresenceEventData, 'entityType' | 'entityId' | 'tenantId' | 'count'> = {}): string {
  return JSON.stringify({ type: 'presence', data: { ...refOf(ref), count, ...changes } } satisfies Static<typeof PresenceEvent>)
}

export function encodePresenceSet (id: RequestIdValue, ref: PresenceRef): string {
  const data = refOf(ref)
  return JSON.stringify((id === undefined ? { type: 'presence_set', data } : { type: 'presence_set', id, data }) satisfies Static<typeof PresenceSet>)
}

export function encodeSignalSent (id: RequestIdValue): string {
  return JSON.stringify((id === undefined ? { type: 'signal_sent' } : { type: 'signal_sent', id }) satisfies Static<typeof SignalSent>)
}

/** A signal as the other sockets receive it; `data` is the sender's JSON, already encoded (its size was measured). */
export function encodeSignal (ref: PresenceRef, userId: string, data: string): string {
  const frame = JSON.stringify({ type: 'signal', data: { ...refOf(ref), from: { userId }, data: null } } satisfies Static<typeof SignalFrame>)
  return frame.slice(0, -'null}}'.length) + data + '}}'
}
