/**
 * The bus and the cluster interest store, built from `options.bus`: memory (one process), redis (through
 * @fastify/redis; a host's own client is reused when the host registered one and no url is given) or nats.
 */
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import fastifyRedis from '@fastify/redis'
import type { Redis } from 'ioredis'
import type { BusContext, PubSub } from './types.js'
import { MemoryBus } from './memory.js'
import { RedisBus, RedisInterest } from './redis.js'
import { NatsBus, NatsInterest, connectNats } from './nats.js'
import { LocalInterest, type InterestStore, type LocalSnapshot } from '../store/interest.js'
import type { LocalSubscriptionStore } from '../store/local.js'
import type { ResolvedOptions } from '../options.js'
import { InvalidOptionsError } from '../errors.js'

export type { PubSub, BusContext, BusMessageHandler } from './types.js'

export interface BusParts {
  bus: PubSub
  interest: InterestStore
  /** this instance's id in the cluster */
  instanceId: string
  close(): Promise<void>
}

async function redisClient (fastify: FastifyInstance, url: string | undefined): Promise<Redis> {
  const host = (fastify as unknown as { redis?: Redis }).redis
  if (url === undefined) {
    if (host === undefined || typeof host.duplicate !== 'function') throw new InvalidOptionsError('/bus/url is required unless the host registered @fastify/redis')
    return host
  }
  let client: Redis | undefined
  // an encapsulated scope: the client is ours, and a host's own @fastify/redis is untouched
  await fastify.register(async (scope) => {
    // no offline queue: a publish during an outage fails (and is covered by a resync) instead of arriving late
    await scope.register(fastifyRedis, { url, enableOfflineQueue: false, maxRetriesPerRequest: 1, connectionName: 'changefeed' })
    client = (scope as unknown as { redis: Redis }).redis
  })
  return client!
}

/** `close` may be called more than once; the work is done the first time. */
function once (close: () => Promise<void>): () => Promise<void> {
  let closing: Promise<void> | null = null
  return async () => { closing ??= close(); await closing }
}

export async function createBus (
  fastify: FastifyInstance, options: ResolvedOptions['bus'], context: BusContext, local: LocalSubscriptionStore<unknown>
): Promise<BusParts> {
  const instanceId = randomUUID()
  const ttlMs = options.instanceTtlSeconds * 1000
  const log = fastify.log
  const snapshot: LocalSnapshot = function * () {
    for (const [channel, entry] of local.channels()) yield { channel, entityType: entry.entityType, count: entry.watchers.size }
  }
  switch (options.provider) {
    case 'memory': {
      const bus = new MemoryBus(context)
      return { bus, interest: new LocalInterest(local), instanceId, close: once(async () => await bus.close()) }
    }
    case 'redis': {
      const publisher = await redisClient(fastify, options.url)
      const subscriber = publisher.duplicate({ enableOfflineQueue: true, connectionName: 'changefeed-subscriber' })
      const bus = new RedisBus(publisher, subscriber, context, log)
      const interest = new RedisInterest(publisher, options.prefix, instanceId, ttlMs, snapshot, log)
      await interest.start()
      return { bus, interest, instanceId, close: once(async () => { await interest.close(); await bus.close() }) }
    }
    case 'nats': {
      const nc = await connectNats(options.url!, log)
      const bus = new NatsBus(nc, context, log)
      const interest = new NatsInterest(nc, options.prefix, instanceId, ttlMs, snapshot, log)
      await interest.start()
      return {
        bus,
        interest,
        instanceId,
        close: once(async () => {
          await interest.close()
          await bus.close()
          if (!nc.isClosed()) await nc.close()
        })
      }
    }
  }
}
