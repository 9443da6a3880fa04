/** The options of the bus between instances (part of lib/options.ts). */
import Type from 'typebox'

export const Bus = Type.Object(
  {
    provider: Type.Enum(['memory', 'redis', 'nats'], { default: 'memory', description: 'pub/sub between instances; `memory`: one process' }),
    url: Type.Optional(Type.String({ description: 'redis:// or nats:// URL of the broker (a Redis Cluster: one node, or several comma-separated)' })),
    cluster: Type.Boolean({ default: false, description: 'redis: the url is a node of a Redis Cluster (Redis 7): entity channels use sharded pub/sub (SPUBLISH/SSUBSCRIBE), each on the one shard that owns it' }),
    prefix: Type.String({ pattern: '^[A-Za-z0-9_.-]+$', default: 'changefeed', description: 'channel prefix: <prefix>:<Type>:<id>' }),
    instanceTtlSeconds: Type.Number({ minimum: 1, default: 15, description: 'a crashed instance\'s interest entries expire after this (heartbeat: a third of it)' })
  },
  { default: {}, additionalProperties: false }
)
