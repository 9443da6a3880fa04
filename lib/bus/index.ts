/**
 * The broker the bus runs on, from `options.bus`: none (memory, one process), Redis (through @fastify/redis; a
 * host's own client is reused when the host registered one and no url is given) or NATS; and the bus on it. The
 * cluster interest store uses the same broker (lib/interest/index.ts).
 */
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import fastifyRedis from '@fastify/redis'
import { Cluster, Redis } from 'ioredis'
import type { NatsConnection } from 'nats'
import { CONNECT_TIMEOUT_MS, type PubSub } from './bus.js'
import { MemoryBus } from './memory.js'
import { RedisBus, type RedisClient } from './redis.js'
import { NatsBus, connectNats } from './nats.js'
import type { ResolvedOptions } from '../options.js'
import { BusUnavailableError, InvalidOptionsError } from '../errors.js'
import { redactCredentials } from '../auth/redact.js'

export type { PubSub, BusMessageHandler, BusGapHandler } from './bus.js'

/** The connections to the broker: none for the memory bus. `close` ends what this plugin opened. */
export type Broker =
  | { provider: 'memory', close(): Promise<void> }
  | { provider: 'redis', publisher: RedisClient, subscriber: RedisClient, cluster: boolean, close(): Promise<void> }
  | { provider: 'nats', nc: NatsConnection, close(): Promise<void> }

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

/** Connects to the broker `options` name; fails with CHANGEFEED_BUS_UNAVAILABLE naming it (never its password). */
export async function openBroker (fastify: FastifyInstance, options: ResolvedOptions['bus']): Promise<Broker> {
  switch (options.provider) {
    case 'memory':
      return { provider: 'memory', close: async () => {} }
    case 'redis': {
      if (options.cluster && options.url === undefined) throw new InvalidOptionsError('/bus/url is required with bus.cluster')
      const { publisher, subscriber } = await redisClients(fastify, options.url, options.cluster)
      // the publisher is closed with the app (our @fastify/redis scope) or by the host; the subscriber is ours
      return { provider: 'redis', publisher, subscriber, cluster: options.cluster, close: async () => { subscriber.disconnect() } }
    }
    case 'nats': {
      const nc = await connectNats(options.url!, fastify.log)
      return { provider: 'nats', nc, close: async () => { if (!nc.isClosed()) await nc.close() } }
    }
  }
}

/** The bus on the broker; `prefix` names the keys it keeps besides its channels' (bus.prefix). */
export function createBus (broker: Broker, log: FastifyBaseLogger, prefix = 'changefeed'): PubSub {
  switch (broker.provider) {
    case 'memory': return new MemoryBus()
    case 'redis': return new RedisBus(broker.publisher, broker.subscriber, log, { sharded: broker.cluster, prefix })
    case 'nats': return new NatsBus(broker.nc, log, prefix)
  }
}
