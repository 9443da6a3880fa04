/**
 * A subscribe to one entity (or to a type's feed, `"*"`): resolves and opens it (or finds it open), then starts it
 * where the client asked — from now, from `since` (a replay of what it missed, when it can be given), or from a
 * snapshot of its state — and answers once: `subscribed` (the replay written right after it), or
 * `subscription_error`. Live notifications that came meanwhile follow, without those the reply already carried.
 */
import type { EntityType } from '../entities.js'
import { FEED } from '../route/channels.js'
import type { ReplayedFrames } from '../reads/replay.js'
import { replayedUpTo, type Carried } from './deferred.js'
import type { Reply } from './requests.js'
import type { Subscription, Subscriptions } from './subscriptions.js'
import { readStates } from './states.js'
import { isRefusal, resolveTarget, type Refusal } from './target.js'
import { seatRequest, takeSeat } from './presence.js'
import {
  WireError, encodeSubscribed, encodeSubscriptionError, subscriptionIdOf, withSubscriptionId, type EntityRef, type EntitySnapshotData, type SubscribeOneRequest
} from '../protocol/index.js'

/** How a subscription starts: its reply's fields, the replay written after it, and what the reply carried. */
export interface Start {
  recovered?: boolean
  snapshot?: EntitySnapshotData
  position?: string
  replay?: ReplayedFrames
  carried: Carried | null
}

export async function subscribeEntity (subscriptions: Subscriptions, reply: Reply, req: SubscribeOneRequest): Promise<void> {
  const { socket, services } = subscriptions
  const target = resolveTarget(services.registry, services.policy, socket.principal, req.entityType, req.tenantId)
  const ref: EntityRef = { entityType: isRefusal(target) ? req.entityType : target.entity.name, entityId: req.entityId, tenantId: isRefusal(target) ? req.tenantId : target.tenantId }
  const refuse = ({ code, reason }: Refusal): void => reply.send(encodeSubscriptionError(reply.id, ref, code, reason))
  if (isRefusal(target)) return refuse(target)
  const { entity, tenantId } = target
  const seat = seatRequest(subscriptions, entity, req, socket.principal)
  if (seat !== null && isRefusal(seat)) return refuse(seat)
  if (req.entityId === FEED && req.snapshot === true) {
    return refuse({ code: WireError.badRequest, reason: 'a feed has no one state: a filtered feed (where) gives the entities that match' })
  }
  // the reply names the subscription as the request did, and so do a feed's notifications
  const subscriptionId = subscriptionIdOf(entity.name, req.entityId, req.tenantId)
  const channel = services.fanout.channel(entity.name, req.entityId, tenantId)
  let subscription = subscriptions.get(channel)
  // one that starts now starts at the channel's position, read before it opens: a resume from it misses nothing
  const head = subscription === undefined && req.since === undefined && req.snapshot !== true ? await headOf(subscriptions, entity, req.entityId, tenantId) : null
  if (subscription === undefined) {
    let opened: Awaited<ReturnType<Subscriptions['open']>>
    try {
      opened = await subscriptions.open(entity, req.entityId, tenantId, { defer: req.since !== undefined || req.snapshot === true || head !== null, subscriptionId })
    } catch (err) {
      services.log.error({ err }, 'changefeed: bus subscribe failed')
      return reply.fail()
    }
    if (opened === null) return
    if (isRefusal(opened)) return refuse(opened)
    subscription = opened
  }
  // a client subscribing again may have lost its document (a patch that did not apply): the next frame is full
  if (subscription.base !== undefined) subscription.base = null
  const start = head !== null ? await startAt(subscriptions, entity, channel, subscription, head) : await startFrom(subscriptions, entity, channel, subscription, req)
  // a refused read ended the subscription itself; a close or an unsubscribe meanwhile leaves nothing to answer
  if (isRefusal(start)) return socket.isOpen ? refuse(start) : undefined
  // a socket closed meanwhile must not take a seat: nothing would give it back
  if (!subscriptions.isCurrent(channel, subscription)) return
  const presence = seat === null ? undefined : await takeSeat(subscriptions, channel, subscription, seat)
  if (!subscriptions.isCurrent(channel, subscription)) return
  reply.send(encodeSubscribed(reply.id, subscriptionId, subscription, { recovered: start.recovered, snapshot: start.snapshot, presence, position: start.position }))
  // a feed's notifications name its subscription
  if (start.replay !== undefined) socket.writeReplay(channel, req.entityId !== FEED ? start.replay : start.replay.map((r) => ({ ...r, frame: withSubscriptionId(r.frame, subscriptionId) })))
  subscriptions.releaseDeferred(channel, start.carried)
  if (req.watchers === true && !subscription.counted) {
    subscription.counted = true
    services.watcherCounts.add(socket, channel, subscription)
  }
}

/**
 * Where the subscription starts. With `since`: the missed notifications, oldest first, when they can all be given
 * (`recovered: true`), else `recovered: false` — the client refetches, or, with `snapshot` too, is given the state.
 * With `snapshot`: the state, read so that every later change arrives as a notification and none before it does.
 */
async function startFrom (subscriptions: Subscriptions, entity: EntityType, channel: string, subscription: Subscription, req: SubscribeOneRequest): Promise<Start | Refusal> {
  let recovered: boolean | undefined
  if (req.since !== undefined) {
    const replay = await replayOf(subscriptions, entity, channel, subscription, req.since)
    if (replay !== null) return { recovered: true, replay, carried: replayedUpTo(req.since, replay) }
    recovered = false
  }
  if (req.snapshot !== true) return { recovered, carried: null }
  const read = await readStates(subscriptions, entity, [[channel, subscription]])
  if (isRefusal(read)) return read
  const [state] = read.states
  if (state === null) return { code: WireError.forbidden, reason: 'only the owner may watch this entity' }
  return { recovered, snapshot: state, carried: read.carried }
}

/** The channel's position now (notify mode, a type with history); null without one, or when it cannot be read. */
export async function headOf (subscriptions: Subscriptions, entity: EntityType, entityId: string, tenantId: string | null): Promise<string | null> {
  const { services, socket } = subscriptions
  try {
    return await services.head?.(entity, entityId, tenantId) ?? null
  } catch (err) {
    services.log.warn({ connection: socket.id, err: (err as Error).message }, 'changefeed: the channel\'s position could not be read; the subscription starts without one')
    return null
  }
}

/**
 * A subscription that starts at `head`: what the channel got between that read and the opening follows the reply,
 * as a replay would. When that cannot be given it starts now, without a position, as it does without a history.
 */
export async function startAt (subscriptions: Subscriptions, entity: EntityType, channel: string, subscription: Subscription, head: string): Promise<Start> {
  const { socket, services } = subscriptions
  let frames: ReplayedFrames | null = null
  try {
    frames = await services.replay(entity, subscription.entityId, subscription.tenantId, head, socket.ip)
  } catch (err) {
    services.log.warn({ connection: socket.id, err: (err as Error).message }, 'changefeed: the channel\'s history could not be read; the subscription starts without a position')
  }
  if (frames === null || frames.some(({ owner }) => subscriptions.foreign(owner))) return { carried: null }
  return { position: head, replay: frames, carried: replayedUpTo(head, frames) }
}

/** The entity's notifications after `since`, none of them another owner's document; null when they cannot be given. */
async function replayOf (subscriptions: Subscriptions, entity: EntityType, channel: string, subscription: Subscription, since: string): Promise<ReplayedFrames | null> {
  const { socket, services } = subscriptions
  subscriptions.defer(channel)
  let frames: ReplayedFrames | null = null
  let outcome = 'not_recovered'
  try {
    frames = await services.replay(entity, subscription.entityId, subscription.tenantId, since, socket.ip)
  } catch (err) {
    outcome = 'failed'
    services.log.warn({ connection: socket.id, err: (err as Error).message }, 'changefeed: replay failed; the client refetches')
  }
  // the owner was checked against the document of now; what the entity was before may have been someone
  // else's: the client refetches what it may see (or, with `snapshot`, is given it)
  if (frames?.some(({ owner }) => subscriptions.foreign(owner)) === true) {
    services.log.info({ connection: socket.id, entityType: entity.name }, 'changefeed: a replay held another owner\'s documents; the client refetches')
    frames = null
    outcome = 'foreign'
  }
  if (frames !== null) outcome = 'recovered'
  services.counters.resumes[outcome] = (services.counters.resumes[outcome] ?? 0) + 1
  services.counters.replayed += frames?.length ?? 0
  return frames
}
