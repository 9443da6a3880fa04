/**
 * The bus and the cluster interest store, built from `options.bus`: memory (one process), redis (through
 * @fastify/redis; a host's own client is reused when the host registered one and no url is given) or nats.
 */
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import fastifyRedis from '@fastify/redis'
import { Cluster, Redis } from 'ioredis'
import { CONNECT_TIMEOUT_MS, type BusContext, type PubSub } from './bus.js'
import { MemoryBus } from './memory.js'
import { RedisBus, RedisInterest, type RedisClient } from './redis.js'
import { NatsBus, NatsInterest, connectNats } from './nats.js'
import { LocalInterest, type InterestStore, type LocalSnapshot } from '../interest/interest.js'
import type { LocalSubscriptionStore } from '../interest/local.js'
import type { ResolvedOptions } from '../options.js'
import { BusUnavailableError, InvalidOptionsError } from '../errors.js'
import { redactCredentials } from '../auth/redact.js'

export type { PubSub, BusContext, BusMessageHandler } from './bus.js'

export interface BusParts {
  bus: PubSub
  interest: InterestStore
  /** this instance's id in the cluster */
  instanceId: string
  close(): Promise<void>
}

/** Connects `client` within CONNECT_TIMEOUT_MS, or fails naming the broker (@fastify/redis would wait until the
 * plugin timeout, and then blame itself). */
async function connected<C extends RedisClient> (client: C, url: string): Promise<C> {
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
  return client
}

/**
 * The publishing client (a host's @fastify/redis one when no url is given) and this bus's own subscriber. Ours have
 * no offline queue: a publish during an outage fails (and is covered by a resync) instead of arriving late.
 */
async function redisClients (fastify: FastifyInstance, url: string | undefined, cluster: boolean): Promise<{ publisher: RedisClient, subscriber: RedisClient }> {
  const host = (fastify as unknown as { redis?: Redis }).redis
  let publisher: RedisClient
  if (url === undefined) {
    if (host === undefined || typeof host.duplicate !== 'function') throw new InvalidOptionsError('/bus/url is required unless the host registered @fastify/redis')
    publisher = host
  } else {
    const options = { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 1, connectTimeout: CONNECT_TIMEOUT_MS, connectionName: 'changefeed' }
    const nodes = url.split(',').map((node) => node.trim())
    publisher = await connected(cluster ? new Cluster(nodes, { lazyConnect: true, enableOfflineQueue: false, redisOptions: options }) : new Redis(url, options), url)
    const client = publisher
    // an encapsulated scope: the client is ours (closed with the app), and a host's own @fastify/redis is untouched
    await fastify.register(async (scope) => {
      await scope.register(fastifyRedis, { client, closeClient: true })
    })
  }
  if (!cluster) {
    // not lazy like our publisher: it must be connected (and ready) before its first subscribe
    return { publisher, subscriber: (publisher as Redis).duplicate({ lazyConnect: false, enableOfflineQueue: true, connectionName: 'changefeed-subscriber' }) }
  }
  const nodes = (url ?? '').split(',').map((node) => node.trim())
  const subscriber = new Cluster(nodes, { lazyConnect: true, shardedSubscribers: true, redisOptions: { connectTimeout: CONNECT_TIMEOUT_MS, connectionName: 'changefeed-subscriber' } })
  return { publisher, subscriber: await connected(subscriber, url ?? '') }
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
      if (options.cluster && options.url === undefined) throw new InvalidOptionsError('/bus/url is required with bus.cluster')
      const { publisher, subscriber } = await redisClients(fastify, options.url, options.cluster)
      const bus = new RedisBus(publisher, subscriber, context, log, options.cluster)
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
