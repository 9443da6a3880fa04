/**
 * Every frame the server sends, built here and nowhere else (their shapes: messages.ts). Notifications are encoded
 * once per change, for every socket that receives them.
 */
import type { WireErrorCode } from './wire.js'
import type { EntitySnapshotData, FeedSnapshotData, RequestIdValue } from './messages.js'
import type { Where } from './where.js'
import type { PatchOperation } from './patch.js'

/** An entity as replies name it: its type, id, and (when the request named one, or it is implied) its tenant. */
export interface EntityRef { entityType: string, entityId: string, tenantId?: string | null }

/** What a notification says of one change. */
export interface NotificationFields extends EntityRef {
  changeType: string
  payloadType: string
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

const refOf = (ref: EntityRef): Record<string, unknown> =>
  ref.tenantId === undefined || ref.tenantId === null
    ? { entityType: ref.entityType, entityId: ref.entityId }
    : { entityType: ref.entityType, entityId: ref.entityId, tenantId: ref.tenantId }

function withId (id: RequestIdValue, type: string, data: Record<string, unknown>): string {
  return JSON.stringify(id === undefined ? { type, data } : { type, id, data })
}

export function encodeNotification (n: NotificationFields): string {
  const data: Record<string, unknown> = {
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
    data.patch = n.patch
  }
  return JSON.stringify({ type: 'notification', data })
}

/** A notification frame, already encoded, naming the subscription it is for (a feed's, a filtered feed's). */
export function withSubscriptionId (frame: string, subscriptionId: string): string {
  return frame.slice(0, -2) + ',"subscriptionId":' + JSON.stringify(subscriptionId) + '}}'
}

/** Notification frames, already encoded, in one frame. */
export function encodeBatch (frames: readonly string[]): string {
  return `{"type":"batch","data":[${frames.join(',')}]}`
}

export function encodeError (id: RequestIdValue, code: WireErrorCode, error: string): string {
  return withId(id, 'error', { code, error })
}

/** What a `subscribed` reply may add: the answer to `since`, the snapshot, a filtered feed's conditions. */
export interface SubscribedExtras {
  /** answers a subscribe with `since`: true when the missed changes follow, false when the client must refetch */
  recovered?: boolean
  snapshot?: EntitySnapshotData | FeedSnapshotData
  where?: Where
}

export function encodeSubscribed (id: RequestIdValue, subscriptionId: string, ref: EntityRef, extras: SubscribedExtras = {}): string {
  const data: Record<string, unknown> = { subscriptionId, ...refOf(ref) }
  if (extras.where !== undefined) data.where = extras.where
  if (extras.recovered !== undefined) data.recovered = extras.recovered
  if (extras.snapshot !== undefined) data.snapshot = extras.snapshot
  return withId(id, 'subscribed', data)
}

/** The reply to a subscribe with `entityIds`. */
export function encodeSubscribedMany (id: RequestIdValue, entityType: string, tenantId: string | undefined, result: {
  subscribed: string[]
  errors: Array<{ entityId: string, code: WireErrorCode, error: string }>
  snapshots?: Record<string, EntitySnapshotData>
}): string {
  const data: Record<string, unknown> = tenantId === undefined ? { entityType } : { entityType, tenantId }
  data.subscribed = result.subscribed
  data.errors = result.errors
  if (result.snapshots !== undefined) data.snapshots = result.snapshots
  return withId(id, 'subscribed', data)
}

export function encodeUnsubscribedMany (id: RequestIdValue, entityType: string, tenantId: string | undefined, unsubscribed: string[]): string {
  return withId(id, 'unsubscribed', tenantId === undefined ? { entityType, unsubscribed } : { entityType, tenantId, unsubscribed })
}

export function encodeSubscriptionError (id: RequestIdValue, ref: EntityRef, code: WireErrorCode, error: string): string {
  return withId(id, 'subscription_error', { ...refOf(ref), code, error })
}

export function encodeUnsubscribed (id: RequestIdValue, subscriptionId: string): string {
  return withId(id, 'unsubscribed', { subscriptionId })
}

export function encodeResync (reason: string, ref?: EntityRef): string {
  return JSON.stringify({ type: 'resync', data: ref === undefined ? { reason } : { reason, ...refOf(ref) } })
}

export function encodeWatchers (ref: EntityRef, count: number): string {
  return JSON.stringify({ type: 'watchers', data: { ...refOf(ref), count } })
}

export function encodeAuthenticated (id: RequestIdValue, principal: { userId: string | null, roles: readonly string[], expiresAt: number | null }): string {
  return withId(id, 'authenticated', {
    userId: principal.userId,
    roles: principal.roles,
    expiresAt: principal.expiresAt === null ? null : new Date(principal.expiresAt).toISOString()
  })
}

export const PONG = '{"type":"pong"}'
