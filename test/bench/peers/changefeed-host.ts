/**
 * fastify-changefeed as a host mounts it: a Fastify app registers the plugin (memory, Redis, Redis Cluster or NATS
 * bus) and, for every change that arrives on a plain Redis channel, calls `app.changefeed.publish()` — the path of a
 * host's live feed. BENCH_BUS: memory | redis | redis-cluster | nats; BENCH_BUS_URL for the last three.
 */
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import changefeed from '../../../lib/index.js'

const port = Number(process.env.PORT)
const channel = process.env.BENCH_CHANNEL ?? 'bench:host'
const kind = process.env.BENCH_BUS ?? 'memory'
const url = process.env.BENCH_BUS_URL
const bus = kind === 'memory'
  ? { provider: 'memory' as const }
  : kind === 'nats'
    ? { provider: 'nats' as const, url }
    : { provider: 'redis' as const, url, cluster: kind === 'redis-cluster', prefix: `bench${process.pid}` }

const app = Fastify({ logger: { level: 'warn' } })
await app.register(changefeed, {
  entities: { Match: { access: 'public', payload: 'full' } },
  bus,
  limits: { maxConnectionsPerIp: 200_000, subscribeRatePerSecond: 1000 }
})
await app.listen({ host: '127.0.0.1', port })

const changes = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
await changes.subscribe(channel)
changes.on('message', (_channel: string, message: string) => {
  const { entityId, payload } = JSON.parse(message) as { entityId: string, payload: unknown }
  app.changefeed.publish({ entityType: 'Match', entityId, changeType: 'updated', payload }).catch((err: Error) => app.log.error({ err }, 'bench: publish failed'))
})
process.on('SIGTERM', () => { changes.disconnect(); void app.close().then(() => process.exit(0)) })
process.send?.({ listening: port })
