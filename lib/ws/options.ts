/** The limits the sockets are held to (part of lib/options.ts). */
import Type from 'typebox'

export const Limits = Type.Object(
  {
    maxSubscriptionsPerConnection: Type.Integer({ minimum: 1, default: 100, description: 'past it: `too_many_subscriptions`' }),
    subscribeRatePerSecond: Type.Number({ exclusiveMinimum: 0, default: 20, description: 'subscribe/unsubscribe token bucket rate; burst: maxSubscriptionsPerConnection + this; excess: `rate_limited`' }),
    maxMessageBytes: Type.Integer({ minimum: 256, default: 4096, description: 'largest inbound frame; larger closes with 1009' }),
    pingIntervalSeconds: Type.Number({ minimum: 0, default: 30, description: 'server WebSocket ping interval (0: none); each socket is pinged once per interval, a tenth of the sockets at a time' }),
    idleTimeoutSeconds: Type.Number({ minimum: 0, default: 90, description: 'nothing heard (frame or pong) for this long closes with 4408' }),
    maxConnectionsPerUser: Type.Integer({ minimum: 1, default: 20, description: 'past it: close 4429' }),
    maxConnectionsPerIp: Type.Integer({ minimum: 1, default: 1000, description: 'past it: close 4429' }),
    maxBufferedBytes: Type.Integer({ minimum: 1024, default: 1048576, description: 'a socket buffering more is a slow consumer: closed with 4409' }),
    conflateAboveBytes: Type.Integer({ minimum: 0, default: 262144, description: 'past this many bytes buffered, a socket\'s notifications are held and conflated: the latest state per entity' }),
    maxHeldFrames: Type.Integer({ minimum: 1, default: 1000, description: 'a socket holding more frames than this while it reads slowly is a slow consumer' }),
    maxBadFramesPerMinute: Type.Integer({ minimum: 1, default: 100, description: 'more bad frames than this closes with 1008' }),
    feedMessagesPerSecond: Type.Number({ exclusiveMinimum: 0, default: 10, description: 'a type-wide (feed) subscription past this rate gets its frames batched' }),
    feedBatchIntervalMs: Type.Integer({ minimum: 10, default: 500, description: 'how often a batched feed is flushed as one `batch` frame' }),
    watcherCountIntervalMs: Type.Integer({ minimum: 100, default: 1000, description: 'how often watcher counts are checked and pushed when changed' }),
    authTimeoutSeconds: Type.Number({ minimum: 1, default: 10, description: 'with auth.anonymous false: a socket that opened without credentials must send an `auth` message within this time, else 4401' }),
    maxAuthFailuresPerMinute: Type.Integer({ minimum: 1, default: 30, description: 'failed sign-ins per IP address per minute before further attempts are refused unchecked' }),
    authMessagesPerMinute: Type.Number({ exclusiveMinimum: 0, default: 6, description: 'in-band `auth` messages (sign-in, token refresh) per connection: a token bucket of a minute\'s worth, refilled at this rate; excess: `error` with `rate_limited`, counted as a bad frame (a client refreshes a token once per lifetime)' }),
    deltaCacheBytes: Type.Integer({ minimum: 0, default: 16777216, description: '`delta` types: the publisher keeps the last document of each changed entity, up to this many bytes of JSON (least recently changed dropped first), to make the next change\'s patch; a document not kept goes out `full` (0: always full)' }),
    replaysPerIpPerSecond: Type.Number({ exclusiveMinimum: 0, default: 100, description: '`since` replays and `snapshot` reads per IP address (burst: ten seconds\' worth; across the server at most 16 run at once); past it a replay is answered `recovered: false` (the client refetches), a snapshot `rate_limited`' }),
    maxFiltersPerType: Type.Integer({ minimum: 1, default: 1000, description: 'filtered feeds (`where`): different filters of one entity type held by this server (sockets asking for the same conditions share one); past it: `too_many_filters`' }),
    maxFiltersPerConnection: Type.Integer({ minimum: 1, default: 20, description: 'filtered feeds one connection may hold; past it: `too_many_filters`' }),
    maxFiltersPerIp: Type.Integer({ minimum: 1, default: 100, description: 'different filters the connections of one client address may hold on this server, all types together (sockets of that address sharing one count it once), so one client cannot take a type\'s maxFiltersPerType or make every change cost more than its share; past it: `too_many_filters`' }),
    maxFilterMatches: Type.Integer({ minimum: 1, default: 1000, description: 'filtered feeds: a filter matching more entities than this is refused (`bad_request`: narrow it)' })
  },
  { default: {}, additionalProperties: false }
)
