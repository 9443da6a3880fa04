/**
 * A subscribe with `entityIds`: each entity as if subscribed alone, and one reply for all, `subscribed` naming
 * those that were and the refused ones in its `errors` (with their states, on `snapshot`, read in one statement).
 */
import { FEED } from '../route/channels.js'
import type { Reply } from './requests.js'
import type { Subscription, Subscriptions } from './subscriptions.js'
import { readStates } from './states.js'
import { headOf, startAt } from './subscribe-entity.js'
import type { EntityType } from '../entities.js'
import { isRefusal, resolveTarget, type Refusal } from './target.js'
import { WireError, encodeSubscribedMany, type EntitySnapshotData, type SubscribeManyRequest, type WireErrorCode } from '../protocol/index.js'

type Errors = Array<{ entityId: string, code: WireErrorCode, error: string }>

export async function subscribeMany (subscriptions: Subscriptions, reply: Reply, req: SubscribeManyRequest): Promise<void> {
  const { socket, services } = subscriptions
  const ids = [...new Set(req.entityIds)]
  const errors: Errors = []
  const refuse = (entityIds: string[], { code, reason }: Refusal): void => { for (const entityId of entityIds) errors.push({ entityId, code, error: reason }) }
  const answer = (subscribed: string[], snapshots?: Record<string, EntitySnapshotData>, positions?: Record<string, string>): void =>
    reply.send(encodeSubscribedMany(reply.id, req.entityType, req.tenantId, { subscribed, errors, snapshots, positions }))
  const target = resolveTarget(services.registry, services.policy, socket.principal, req.entityType, req.tenantId)
  if (isRefusal(target)) {
    refuse(ids, target)
    return answer([])
  }
  const { entity, tenantId } = target
  const hold = req.snapshot === true
  const opened: Array<[string, Subscription]> = []
  // those that start now: at their channel's position, as one subscribed alone does (subscribe-entity.ts)
  const heads = new Map<string, string>()
  await Promise.all(ids.map(async (entityId) => {
    if (entityId === FEED) return refuse([entityId], { code: WireError.badRequest, reason: 'a feed ("*") is subscribed to alone' })
    const channel = services.fanout.channel(entity.name, entityId, tenantId)
    const existing = subscriptions.get(channel)
    if (existing !== undefined) {
      if (existing.base !== undefined) existing.base = null
      if (hold) subscriptions.defer(channel)
      return opened.push([channel, existing])
    }
    try {
      const head = hold ? null : await headOf(subscriptions, entity, entityId, tenantId)
      const result = await subscriptions.open(entity, entityId, tenantId, { defer: hold || head !== null })
      if (result === null) return
      if (isRefusal(result)) return refuse([entityId], result)
      opened.push([channel, result])
      if (head !== null) heads.set(channel, head)
    } catch (err) {
      services.log.error({ err }, 'changefeed: bus subscribe failed')
      refuse([entityId], { code: WireError.internal, reason: 'the server failed; retry' })
    }
  }))
  if (!socket.isOpen) return
  // in the order asked for
  const order = new Map(ids.map((id, i) => [id, i]))
  opened.sort(([, a], [, b]) => (order.get(a.entityId) ?? 0) - (order.get(b.entityId) ?? 0))
  const subscribed = opened.map(([, s]) => s.entityId)
  if (!hold || opened.length === 0) return await startAtHeads(subscriptions, entity, opened, heads, (positions) => answer(subscribed, undefined, positions))
  const read = await readStates(subscriptions, entity, opened)
  if (isRefusal(read)) {
    refuse(subscribed, read)
    return answer([])
  }
  const snapshots: Record<string, EntitySnapshotData> = {}
  const allowed: string[] = []
  for (const [i, entityId] of subscribed.entries()) {
    const state = read.states[i]
    if (state === null) {
      refuse([entityId], { code: WireError.forbidden, reason: 'only the owner may watch this entity' })
      continue
    }
    allowed.push(entityId)
    snapshots[entityId] = state ?? {}
  }
  answer(allowed, read.carried === null ? undefined : snapshots)
  for (const [channel, subscription] of opened) if (subscriptions.isCurrent(channel, subscription)) subscriptions.releaseDeferred(channel, read.carried)
}

/** Answers once the channels read at their position have what came since; then writes it, and what was held. */
async function startAtHeads (subscriptions: Subscriptions, entity: EntityType, opened: Array<[string, Subscription]>, heads: Map<string, string>, answer: (positions?: Record<string, string>) => void): Promise<void> {
  const starts = await Promise.all(opened.map(async ([channel, subscription]) => {
    const head = heads.get(channel)
    return head === undefined ? null : { channel, subscription, start: await startAt(subscriptions, entity, channel, subscription, head) }
  }))
  const positions: Record<string, string> = {}
  for (const s of starts) if (s?.start.position !== undefined) positions[s.subscription.entityId] = s.start.position
  if (subscriptions.socket.isOpen) answer(Object.keys(positions).length > 0 ? positions : undefined)
  for (const s of starts) {
    if (s === null || !subscriptions.isCurrent(s.channel, s.subscription)) continue
    if (s.start.replay !== undefined) subscriptions.socket.writeReplay(s.channel, s.start.replay)
    subscriptions.releaseDeferred(s.channel, s.start.carried)
  }
}
