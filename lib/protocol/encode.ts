/**
 * Every frame the server sends, built here and nowhere else: each encoder's object `satisfies` its message's schema
 * type (messages.ts), so a frame cannot drift from the protocol. Notifications are encoded once per change for every
 * socket that receives them; the two rewrites of an encoded notification (a filter's or feed's own change type and
 * subscriptionId; two held changes merged into one) are here too, beside the layout they rely on.
 */
import type { Static } from 'typebox'
import { mergeChangeType, type WireErrorCode } from './wire.js'
import type {
  Authenticated, ChangeTypeName, EntitySnapshotData, ErrorReply, FeedSnapshotData, Notification, PayloadTypeName, Pong,
  RequestIdValue, Resync, Subscribed, SubscribedMany, SubscriptionError, Unsubscribed, UnsubscribedMany, Watchers
} from './messages.js'
import type { Where } from './where.js'
import type { PatchOperation } from './patch.js'
import type { PresenceSnapshotData } from './presence.js'

/** An entity as replies name it: its type, id, and (when the request named one, or it is implied) its tenant. */
export interface EntityRef { entityType: string, entityId: string, tenantId?: string | null }

/** What a notification says of one change. */
export interface NotificationFields extends EntityRef {
  changeType: ChangeTypeName
  payloadType: PayloadTypeName
  /** the change's time, epoch ms */
  ts: number
  version?: string | null
  origin?: string | null
  payload?: unknown
  position?: string | null
  /** `delta`: the RFC 6902 patch from the document at `basePosition` to this one */
  patch?: readonly PatchOperation[]
  basePosition?: string
}

const refOf = (ref: EntityRef): { entityType: string, entityId: string, tenantId?: string } =>
  ref.tenantId === undefined || ref.tenantId === null
    ? { entityType: ref.entityType, entityId: ref.entityId }
    : { entityType: ref.entityType, entityId: ref.entityId, tenantId: ref.tenantId }

/** A reply: its request's id when it had one. */
function reply<T extends string, D> (id: RequestIdValue, type: T, data: D): { type: T, id?: string | number, data: D } {
  return id === undefined ? { type, data } : { type, id, data }
}

/** The notification frame. Its layout, which the rewrites below rely on: `{"type":"notification","data":{…}}`, with
 * `changeType` the first field that may hold a '"' before it is written. */
export function encodeNotification (n: NotificationFields): string {
  const data: Static<typeof Notification>['data'] = {
    ...refOf(n),
    changeType: n.changeType,
    payloadType: n.payloadType,
    timestamp: new Date(n.ts).toISOString()
  }
  if (n.version !== undefined && n.version !== null) data.version = n.version
  if (n.position !== undefined && n.position !== null) data.position = n.position
  if (n.origin !== undefined && n.origin !== null) data.origin = n.origin
  if (n.payloadType === 'full' || n.payloadType === 'events') data.payload = n.payload ?? null
  else if (n.payloadType === 'delta') {
    data.basePosition = n.basePosition
    data.patch = n.patch as Static<typeof Notification>['data']['patch']
  }
  return JSON.stringify({ type: 'notification', data } satisfies Static<typeof Notification>)
}

const CHANGE_TYPE = '"changeType":"'

/**
 * Reads a notification's changeType without parsing the frame: encodeNotification writes changeType before the
 * payload, and the keys and strings before it cannot hold an unescaped quote, so the first match is the frame's own.
 */
export function changeTypeOf (frame: string): string | undefined {
  const start = frame.indexOf(CHANGE_TYPE)
  if (start === -1) return undefined
  const from = start + CHANGE_TYPE.length
  const end = frame.indexOf('"', from)
  return end === -1 ? undefined : frame.slice(from, end)
}

const POSITION = '"position":"'
const BASE_POSITION = '"basePosition":"'

/** The frame with `value` in place of the string value of `field`, its first occurrence (see changeTypeOf). */
function replaceField (frame: string, field: string, value: string): string {
  const start = frame.indexOf(field)
  if (start === -1) return frame
  const from = start + field.length
  const end = frame.indexOf('"', from)
  return end === -1 ? frame : frame.slice(0, from) + value + frame.slice(end)
}

/**
 * A notification frame, already encoded, saying another position (and a patch's, another base): its channel's
 * (positions hold no character JSON escapes). The fields before `position` cannot hold an unescaped quote.
 */
export function atPosition (frame: string, position: string, basePosition?: string): string {
  const moved = replaceField(frame, POSITION, position)
  return basePosition === undefined ? moved : replaceField(moved, BASE_POSITION, basePosition)
}

/** A notification frame, already encoded, naming the subscription it is for (a feed's, a filtered feed's). */
export function withSubscriptionId (frame: string, subscriptionId: string): string {
  return frame.slice(0, -2) + ',"subscriptionId":' + JSON.stringify(subscriptionId) + '}}'
}

/**
 * A notification as one subscription receives it: with that subscription's change type (a filter's `entered` or
 * `left`) and its subscriptionId as the last field, so a socket holding several subscriptions of the type can tell.
 */
export function forSubscription (frame: string, changeType: string, subscriptionId: string): string {
  const own = changeTypeOf(frame)
  const typed = own === undefined || own === changeType ? frame : frame.replace(CHANGE_TYPE + own + '"', CHANGE_TYPE + changeType + '"')
  return withSubscriptionId(typed, subscriptionId)
}

/**
 * Two notifications of one entity held for a slow socket, as the one frame it gets: `last` with the net change type
 * (mergeChangeType), or null when they cancel out (created, then deleted, before the client heard of it).
 */
export function mergeNotifications (first: string, last: string): string | null {
  const a = changeTypeOf(first)
  const b = changeTypeOf(last)
  if (a === undefined || b === undefined) return last
  const net = mergeChangeType(a, b)
  if (net === null || net === b) return net === null ? null : last
  const message = JSON.parse(last) as Static<typeof Notification>
  message.data.changeType = net as ChangeTypeName
  return JSON.stringify(message)
}

/** Notification frames, already encoded, in one frame. */
export function encodeBatch (frames: readonly string[]): string {
  return `{"type":"batch","data":[${frames.join(',')}]}`
}

export function encodeError (id: RequestIdValue, code: WireErrorCode, error: string): string {
  return JSON.stringify(reply(id, 'error', { code, error }) satisfies Static<typeof ErrorReply>)
}

/** What a `subscribed` reply may add: the answer to `since`, the snapshot, a filtered feed's conditions. */
export interface SubscribedExtras {
  /** answers a subscribe with `since`: true when the missed changes follow, false when the client must refetch */
  recovered?: boolean
  snapshot?: EntitySnapshotData | FeedSnapshotData
  where?: Where
  /** answers a subscribe with `presence` */
  presence?: PresenceSnapshotData
  /** where a subscription that starts now starts (notify mode, a type with history) */
  position?: string
}

export function encodeSubscribed (id: RequestIdValue, subscriptionId: string, ref: EntityRef, extras: SubscribedExtras = {}): string {
  const data: Static<typeof Subscribed>['data'] = { subscriptionId, ...refOf(ref) }
  if (extras.where !== undefined) data.where = extras.where
  if (extras.recovered !== undefined) data.recovered = extras.recovered
  if (extras.snapshot !== undefined) data.snapshot = extras.snapshot
  if (extras.presence !== undefined) data.presence = extras.presence
  if (extras.position !== undefined) data.position = extras.position
  return JSON.stringify(reply(id, 'subscribed', data) satisfies Static<typeof Subscribed>)
}

/** The reply to a subscribe with `entityIds`. */
export function encodeSubscribedMany (id: RequestIdValue, entityType: string, tenantId: string | undefined, result: {
  subscribed: string[]
  errors: Array<{ entityId: string, code: WireErrorCode, error: string }>
  snapshots?: Record<string, EntitySnapshotData>
  positions?: Record<string, string>
}): string {
  const data: Static<typeof SubscribedMany>['data'] = tenantId === undefined
    ? { entityType, subscribed: result.subscribed, errors: result.errors }
    : { entityType, tenantId, subscribed: result.subscribed, errors: result.errors }
  if (result.snapshots !== undefined) data.snapshots = result.snapshots
  if (result.positions !== undefined) data.positions = result.positions
  return JSON.stringify(reply(id, 'subscribed', data) satisfies Static<typeof SubscribedMany>)
}

export function encodeUnsubscribedMany (id: RequestIdValue, entityType: string, tenantId: string | undefined, unsubscribed: string[]): string {
  const data: Static<typeof UnsubscribedMany>['data'] = tenantId === undefined ? { entityType, unsubscribed } : { entityType, tenantId, unsubscribed }
  return JSON.stringify(reply(id, 'unsubscribed', data) satisfies Static<typeof UnsubscribedMany>)
}

export function encodeSubscriptionError (id: RequestIdValue, ref: EntityRef, code: WireErrorCode, error: string): string {
  return JSON.stringify(reply(id, 'subscription_error', { ...refOf(ref), code, error }) satisfies Static<typeof SubscriptionError>)
}

export function encodeUnsubscribed (id: RequestIdValue, subscriptionId: string): string {
  return JSON.stringify(reply(id, 'unsubscribed', { subscriptionId }) satisfies Static<typeof Unsubscribed>)
}

export function encodeResync (reason: string, ref?: EntityRef): string {
  return JSON.stringify({ type: 'resync', data: ref === undefined ? { reason } : { reason, ...refOf(ref) } } satisfies Static<typeof Resync>)
}

export function encodeWatchers (ref: EntityRef, count: number): string {
  return JSON.stringify({ type: 'watchers', data: { ...refOf(ref), count } } satisfies Static<typeof Watchers>)
}

export function encodeAuthenticated (id: RequestIdValue, principal: { userId: string | null, roles: readonly string[], expiresAt: number | null }): string {
  return JSON.stringify(reply(id, 'authenticated', {
    userId: principal.userId,
    roles: [...principal.roles],
    expiresAt: principal.expiresAt === null ? null : new Date(principal.expiresAt).toISOString()
  }) satisfies Static<typeof Authenticated>)
}

const PONG = JSON.stringify({ type: 'pong' } satisfies Static<typeof Pong>)

/** The answer to a ping: its id echoed, as every request's is. */
export function encodePong (id: RequestIdValue): string {
  return id === undefined ? PONG : JSON.stringify({ type: 'pong', id } satisfies Static<typeof Pong>)
}
