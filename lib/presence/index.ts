/** Presence on the bus's broker: the store beside it (none, Redis, NATS KV), and this instance's rooms. */
import type { FastifyBaseLogger } from 'fastify'
import type { Broker } from '../bus/index.js'
import type { PubSub } from '../bus/bus.js'
import type { InterestStore } from '../interest/interest.js'
import { ClusterInterest } from '../interest/cluster.js'
import type { Fanout } from '../ws/fanout.js'
import type { ResolvedOptions } from '../options.js'
import { Presence } from './presence.js'
import { LocalPresenceStore, type PresenceStore } from './store.js'
import { RedisPresenceStore } from './redis.js'
import { NatsPresenceStore } from './nats.js'

export { Presence } from './presence.js'

/** This instance's presence; messages on entity channels in its layout reach it through `fanout`; closed with `closers`. */
export function createPresence (broker: Broker, bus: PubSub, interest: InterestStore, fanout: Fanout, options: ResolvedOptions, instanceId: string, log: FastifyBaseLogger, closers: { add(close: () => unknown): void }): Presence {
  const ttlMs = options.bus.instanceTtlSeconds * 1000
  let store: PresenceStore = new LocalPresenceStore()
  if (interest instanceof ClusterInterest) {
    const live = async (): Promise<Set<string>> => await interest.liveInstances()
    if (broker.provider === 'redis') store = new RedisPresenceStore(broker.publisher, options.bus.prefix, instanceId, ttlMs, live)
    if (broker.provider === 'nats') store = new NatsPresenceStore(broker.nc, options.bus.prefix, instanceId, live)
  }
  const presence = new Presence(store, broker.provider === 'memory' ? null : bus, instanceId, log, options.entities, Math.max(100, Math.floor(ttlMs / 3)))
  fanout.onPresence = presence.onBusMessage
  closers.add(() => presence.close())
  return presence
}
