/**
 * Presence requests of a socket: `presence` on a subscribe (join as a member, or watch), setting its info
 * (`presence`), and `signal`. Each names an entity as a subscribe does; the socket must hold its subscription (a
 * signal or an info only from a member). Sizes are those of the JSON of `info` and `data`.
 */
import type { EntityType } from '../entities.js'
import type { Principal } from '../auth/principal.js'
import type { PresenceSettings, SignalSettings } from '../presence/options.js'
import type { Reply } from './requests.js'
import type { Subscription, Subscriptions } from './subscriptions.js'
import { isRefusal, resolveTarget, type Refusal } from './target.js'
import {
  FEED, WireError, encodeError, encodePresenceSet, encodeSignalSent, type PresenceRequest, type PresenceSnapshotData, type SignalRequest, type SubscribeOneRequest
} from '../protocol/index.js'

/** What a subscribe's `presence` asks for, checked: the seat to take once subscribed, or (`leave`) to give it up. */
export type SeatRequest = { presence: PresenceSettings, signals: SignalSettings | null, userId: string | null, info: unknown } | { leave: true }

const bytesOf = (value: unknown): number => Buffer.byteLength(JSON.stringify(value) ?? '')

/**
 * A subscribe's `presence`, checked before it subscribes: null when it asks for none. `false` leaves the entity's
 * presence and keeps the subscription.
 */
export function seatRequest (subscriptions: Subscriptions, entity: EntityType, req: SubscribeOneRequest, principal: Principal): SeatRequest | Refusal | null {
  const asked = req.presence
  if (asked === undefined) return null
  if (asked === false) return { leave: true }
  const settings = subscriptions.services.presence.settingsOf(entity.name)
  if (settings === null || req.entityId === FEED) return { code: WireError.badRequest, reason: `entity type "${entity.name}" has no presence${req.entityId === FEED ? ' on a feed' : ''}` }
  if (asked === true) return { ...settings, userId: null, info: undefined }
  if (principal.userId === null) return { code: WireError.unauthenticated, reason: 'only a signed-in user can join; watch with "presence": true' }
  if (asked.info !== undefined && bytesOf(asked.info) > settings.presence.infoMaxBytes) return { code: WireError.tooLarge, reason: `info is at most ${settings.presence.infoMaxBytes} bytes of JSON` }
  return { ...settings, userId: principal.userId, info: asked.info }
}

/** Takes the seat once the subscription is open: the members for the `subscribed` reply (none after a leave). */
export async function takeSeat (subscriptions: Subscriptions, channel: string, subscription: Subscription, seat: SeatRequest): Promise<PresenceSnapshotData | undefined> {
  if ('leave' in seat) {
    subscriptions.services.presence.leave(subscriptions.socket, channel)
    delete subscription.presence
    return undefined
  }
  subscription.presence = true
  return await subscriptions.services.presence.enter(subscriptions.socket, channel, subscription, seat.presence, seat.signals, seat.userId, seat.info)
}

/** A `presence` (set info) or `signal` request: its one reply. */
export async function presenceRequest (subscriptions: Subscriptions, reply: Reply, type: 'presence' | 'signal', req: PresenceRequest | SignalRequest): Promise<void> {
  const { socket, services } = subscriptions
  const target = resolveTarget(services.registry, services.policy, socket.principal, req.entityType, req.tenantId)
  const fail = (code: string, reason: string): void => reply.send(encodeError(reply.id, code as Refusal['code'], reason))
  if (isRefusal(target)) return fail(target.code, target.reason)
  const channel = services.fanout.channel(target.entity.name, req.entityId, target.tenantId)
  const settings = services.presence.settingsOf(target.entity.name)
  if (settings === null) return fail(WireError.badRequest, `entity type "${target.entity.name}" has no presence`)
  const ref = { entityType: target.entity.name, entityId: req.entityId, tenantId: target.tenantId }
  if (type === 'presence') {
    const { info } = req as PresenceRequest
    if (bytesOf(info) > settings.presence.infoMaxBytes) return fail(WireError.tooLarge, `info is at most ${settings.presence.infoMaxBytes} bytes of JSON`)
    const code = services.presence.setInfo(socket, channel, info)
    return code === null ? reply.send(encodePresenceSet(reply.id, ref)) : fail(code, refusalOf(code))
  }
  if (settings.signals === null) return fail(WireError.badRequest, `entity type "${target.entity.name}" has no signals`)
  const data = JSON.stringify((req as SignalRequest).data) ?? 'null'
  if (Buffer.byteLength(data) > settings.signals.maxBytes) return fail(WireError.tooLarge, `a signal's data is at most ${settings.signals.maxBytes} bytes of JSON`)
  const code = services.presence.signal(socket, channel, data)
  return code === null ? reply.send(encodeSignalSent(reply.id)) : fail(code, refusalOf(code))
}

function refusalOf (code: string): string {
  if (code === WireError.notMember) return 'join the entity\'s presence first (subscribe with "presence": {"info": …})'
  if (code === WireError.rateLimited) return 'too many presence updates or signals; slow down'
  return 'not possible on this entity'
}
