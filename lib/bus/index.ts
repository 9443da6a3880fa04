/**
 * The bus and the cluster interest store, built from `options.bus`: memory (one process), redis (through
 * @fastify/redis; a host's own client is reused when the host registered one and no url is given) or nats.
 */
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import fastifyRedis from '@fastify/redis'
import { Redis } from 'ioredis'
import { CONNECT_TIMEOUT_MS, type BusContext, type PubSub } from './types.js'
import { MemoryBus } from './memory.js'
import { RedisBus, RedisInterest } from './redis.js'
import { NatsBus, NatsInterest, connectNats } from './nats.js'
import { LocalInterest, type InterestStore, type LocalSnapshot } from '../store/interest.js'
import type { LocalSubscriptionStore } from '../store/local.js'
import type { ResolvedOptions } from '../options.js'
import { BusUnavailableError, InvalidOptionsError } from '../errors.js'
import { redactCredentials } from '../auth/redact.js'

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
  // no offline queue: a publish during an outage fails (and is covered by a resync) instead of arriving late
  const client = new Redis(url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 1, connectTimeout: CONNECT_TIMEOUT_MS, connectionName: 'changefeed' })
  // connected here, within a bound: @fastify/redis would wait for a broker that is down until the plugin timeout,
  // and then blame itself
  let reason: string | null = null
  const remember = (err: Error): void => { reason = err.message }
  client.on('error', remember)
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([client.connect(), new Promise((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${CONNECT_TIMEOUT_MS} ms`)), CONNECT_TIMEOUT_MS) })])
  } catch (err) {
    client.disconnect()
    throw new BusUnavailableError('Redis', redactCredentials(url), reason ?? (err as Error).message)
  } finally {
    clearTimeout(timer)
  }
  client.off('error', remember)
  // an encapsulated scope: the client is ours (closed with the app), and a host's own @fastify/redis is untouched
  await fastify.register(async (scope) => {
    await scope.register(fastifyRedis, { client, closeClient: true })
  })
  return client
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
      // not lazy like our publisher: it must be connected (and ready) before its first subscribe
      const subscriber = publisher.duplicate({ lazyConnect: false, enableOfflineQueue: true, connectionName: 'changefeed-subscriber' })
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
