/**
 * The interest store on the bus's broker: this instance's own store with the memory bus, Redis keys, or a NATS
 * JetStream key-value bucket.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Broker } from '../bus/index.js'
import type { ResolvedOptions } from '../options.js'
import { LocalInterest, type InterestStore, type LocalSnapshot } from './interest.js'
import type { LocalSubscriptionStore } from './local.js'
import { RedisInterest } from './redis.js'
import { NatsInterest } from './nats.js'

export type { InterestStore, InterestUpdate } from './interest.js'

/**
 * Started: a cluster store has registered this instance (`instanceId`) and written what `local` holds. `lingerMs`:
 * how long a channel of a type counts as watched after its last watcher left (the memory bus: lib/interest/interest.ts).
 */
export async function createInterest (broker: Broker, options: ResolvedOptions['bus'], instanceId: string, local: LocalSubscriptionStore<unknown>, log: FastifyBaseLogger, lingerMs?: (entityType: string) => number): Promise<InterestStore> {
  if (broker.provider === 'memory') return new LocalInterest(local, lingerMs)
  const ttlMs = options.instanceTtlSeconds * 1000
  const snapshot: LocalSnapshot = function * () {
    for (const [channel, entry] of local.channels()) yield { channel, entityType: entry.entityType, count: entry.receivers.size }
  }
  const interest = broker.provider === 'redis'
    ? new RedisInterest(broker.publisher, options.prefix, instanceId, ttlMs, snapshot, log)
    : new NatsInterest(broker.nc, options.prefix, instanceId, ttlMs, snapshot, log)
  await interest.start()
  return interest
}
