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

const size = Type.Integer({ minimum: 0, default: 100, description: 'notifications kept per channel (entity, feed) for `since` resumes in notify mode (0: none)' })
const ttlSeconds = Type.Number({ exclusiveMinimum: 0, default: 300, description: 'a channel\'s history is dropped this long after its last notification' })

/** How much of each channel's past the bus keeps (notify mode): what a reconnect resumes from without a read. */
export const History = Type.Object({ size, ttlSeconds }, { default: {}, additionalProperties: false })

/** A type's own history: `false` (none), or limits of its own (each field defaulting to the top-level one). */
export const EntityHistory = Type.Union([
  Type.Literal(false),
  Type.Object({ size: Type.Optional(Type.Integer({ minimum: 0 })), ttlSeconds: Type.Optional(Type.Number({ exclusiveMinimum: 0 })) }, { additionalProperties: false })
], { description: 'this type\'s channel history: `false` for none, or `{ size, ttlSeconds }` in place of the top-level `history`' })

/** Deploys: how sockets are handed to the other instances (SIGTERM, or the decorator's `drain()`). */
export const Shutdown = Type.Object({
  drainSeconds: Type.Number({ minimum: 0, default: 10, description: 'a draining instance closes its sockets with 1012 in slices spread over this long (0: all at once), each close telling its client when to come back' })
}, { default: {}, additionalProperties: false })
