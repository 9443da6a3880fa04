/**
 * The one options schema. The plugin's options and the standalone server's config file have this shape; defaults
 * live here and nowhere else. Field names may grow, never change.
 */
import Type, { type Static, type TSchema } from 'typebox'
import { Compile } from 'typebox/compile'
import Value from 'typebox/value'
import { InvalidOptionsError } from './errors.js'

const AccessKind = Type.Enum(['public', 'authenticated', 'owner', 'admin'],
  { description: 'who may subscribe: anyone, any signed-in user, the owner of the entity, or an admin role' }
)
const PayloadMode = Type.Enum(['minimal', 'full', 'delta'], {
  description: '`minimal`: the client refetches (any table with an `id` column); `full`: the document rides in the notification; `delta`: the first notification a socket gets of an entity is `full`, the next ones an RFC 6902 patch from the document it was sent last (full whenever that is not proven, or the patch is not smaller). `full` and `delta` read the document from the table\'s `data` jsonb column (Marten\'s tables have one): a declared type whose table has none stops the start'
})

const Server = Type.Object(
  {
    host: Type.String({ default: '127.0.0.1', description: 'address the standalone server binds to' }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8080, description: 'standalone server port (0: any free port)' }),
    path: Type.String({ pattern: '^/', default: '/ws', description: 'WebSocket route' }),
    allowedOrigins: Type.Union([Type.Array(Type.String({ minLength: 1 })), Type.Null()], {
      default: null,
      description: 'browser origins allowed to open a socket (`https://app.example`); others get HTTP 403 before the upgrade; requests without an Origin header (servers) pass. null: no check'
    }),
    trustProxy: Type.Union([Type.Boolean(), Type.String(), Type.Array(Type.String()), Type.Integer({ minimum: 1 })], {
      default: false,
      description: 'standalone server: Fastify\'s `trustProxy` (true, a hop count, or proxy addresses/CIDRs): per-IP limits then count the client address from X-Forwarded-For instead of the proxy\'s. A host sets it on its own Fastify'
    })
  },
  { default: {}, additionalProperties: false }
)

const Database = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', description: 'name used by entities and as the @fastify/postgres pool name' }),
    url: Type.String({
      minLength: 1,
      description: 'postgres://… connection string, or `pglite://memory` / `pglite:///dir` for the embedded PGlite'
    }),
    schema: Type.Optional(Type.String({ minLength: 1, description: 'schema whose tables are watched in this database (default: capture.schema)' })),
    tenant: Type.Optional(Type.String({ minLength: 1, maxLength: 128, pattern: '^[^:]+$', description: 'database per tenant (Marten): every change of this database belongs to this tenant (no ":")' }))
  },
  { additionalProperties: false }
)

const Capture = Type.Object(
  {
    channel: Type.String({ minLength: 1, maxLength: 63, default: 'changefeed', description: 'NOTIFY channel shared by every database (may contain ":")' }),
    schema: Type.String({ default: 'public', description: 'schema whose tables are watched' }),
    tables: Type.Array(Type.String({ minLength: 1 }), { default: ['mt_doc_%'], description: 'LIKE patterns of watched tables (each needs an `id` column; `full` and `delta` types a `data` jsonb column too)' }),
    installTriggers: Type.Boolean({ default: true, description: 'apply sql/changefeed.sql and install triggers at start' }),
    mode: Type.Enum(['notify', 'outbox'], { default: 'notify', description: '`notify`: best effort, every gap signalled with `resync`; `outbox`: zero loss, the trigger also writes an outbox table and `since` replays from it' }),
    outbox: Type.Object({
      batchSize: Type.Integer({ minimum: 1, maximum: 10000, default: 500, description: 'outbox rows numbered and published per round' }),
      pollIntervalMs: Type.Integer({ minimum: 10, default: 1000, description: 'the leader also looks at the outbox this often (a NOTIFY wakes it at once)' }),
      retentionSeconds: Type.Number({ minimum: 1, default: 3600, description: 'published rows older than this are pruned (how far back `since` can resume)' }),
      maxRows: Type.Integer({ minimum: 1, default: 1000000, description: 'at most this many published rows are kept' }),
      pruneIntervalSeconds: Type.Number({ minimum: 1, default: 30, description: 'how often the leader prunes' }),
      maxReplay: Type.Integer({ minimum: 1, default: 1000, description: 'a `since` resume replays at most this many changes of one entity; more answers `recovered: false`' })
    }, { default: {}, additionalProperties: false }),
    stream: Type.Object({
      enabled: Type.Boolean({ default: false, description: 'also publish every change (watched or not) to a NATS JetStream stream for service consumers' }),
      url: Type.Optional(Type.String({ description: 'nats:// URL (default: bus.url when the bus is NATS)' })),
      name: Type.String({ pattern: '^[A-Za-z0-9_-]+$', default: 'CHANGEFEED', description: 'stream name' }),
      subjectPrefix: Type.String({ pattern: '^[A-Za-z0-9_-]+$', default: 'changefeed', description: 'subjects: <subjectPrefix>.<Type>.<id>' }),
      maxAgeSeconds: Type.Number({ minimum: 1, default: 86400, description: 'stream retention by age' }),
      maxBytes: Type.Integer({ minimum: -1, default: 1073741824, description: 'stream retention by size (-1: unlimited)' }),
      duplicateWindowSeconds: Type.Number({ minimum: 1, default: 120, description: 'a change published again (after a failover) within this window is dropped by position' })
    }, { default: {}, additionalProperties: false }),
    rescanIntervalSeconds: Type.Number({ minimum: 0, default: 60, description: 'how often to look for new watched tables (0: only at start)' }),
    reconnectMaxDelayMs: Type.Integer({ minimum: 10, default: 5000, description: 'upper bound of the listener reconnect backoff' }),
    leaderRetryMs: Type.Integer({ minimum: 50, default: 1000, description: 'with a shared bus: how often a follower tries to become the listener of a database' }),
    events: Type.Object({
      enabled: Type.Boolean({ default: false, description: 'capture Marten event appends as `appended` changes of the stream\'s aggregate' }),
      table: Type.String({ default: 'mt_events', description: 'the event table' }),
      streams: Type.String({ default: 'mt_streams', description: 'the stream table (its `type` names the aggregate)' }),
      database: Type.Optional(Type.String({ description: 'database whose events are captured (default: all)' })),
      schema: Type.Optional(Type.String({ minLength: 1, description: 'schema of the event store (Marten `Events.DatabaseSchemaName`; default: the database\'s schema)' })),
      types: Type.Record(Type.String(), Type.String(), { default: {}, description: 'mt_streams.type → entity type; unmapped stream types match an entity name ignoring case and _. A type named here is a stream\'s aggregate: no warning when it has no table of its own' }),
      untypedAs: Type.Optional(Type.String({ description: 'entity type of streams started without an aggregate type (mt_streams.type null); without it their appends are counted and logged, not delivered' }))
    }, { default: {}, additionalProperties: false }),
    probeIntervalSeconds: Type.Number({ minimum: 0, default: 15, description: 'how often the listener connection is checked with a query; one that does not answer within 5 s is replaced (0: never)' })
  },
  { default: {}, additionalProperties: false }
)

const Entity = Type.Object(
  {
    database: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1 })], {
      description: 'database name, or the names of the databases of its tenants (database per tenant); defaults to the only database when there is one'
    })),
    schema: Type.Optional(Type.String({ minLength: 1, description: 'schema of its table (default: its database\'s schema)' })),
    table: Type.Optional(Type.String({ description: 'table; defaults to Marten naming: mt_doc_<lowercased type name>. It needs an `id` column, and for `full` and `delta` a `data` jsonb column' })),
    tenanted: Type.Optional(Type.Boolean({ description: 'its entities belong to tenants; default: its table has a tenant_id column (Marten conjoined tenancy) or its databases have tenants. Set it for types only a host publishes' })),
    access: AccessKind,
    payload: Type.Optional(PayloadMode),
    ownerPath: Type.Optional(Type.Array(Type.String(), { description: 'path in the document holding the owner user id' })),
    feed: Type.Optional(Type.Boolean({ description: 'allow type-wide subscriptions (entityId "*") to every change of this type; public or admin types only' }))
  },
  { additionalProperties: false }
)

const Discovery = Type.Object(
  {
    enabled: Type.Boolean({ default: true, description: 'register the undeclared watched tables as entity types' }),
    access: Type.Union([AccessKind, Type.Null()], {
      default: null,
      description: 'access of discovered types; null: they cannot be subscribed to'
    }),
    payload: Type.Optional(PayloadMode)
  },
  { default: {}, additionalProperties: false }
)

const Bus = Type.Object(
  {
    provider: Type.Enum(['memory', 'redis', 'nats'], { default: 'memory', description: 'pub/sub between instances; `memory`: one process' }),
    url: Type.Optional(Type.String({ description: 'redis:// or nats:// URL of the broker (a Redis Cluster: one node, or several comma-separated)' })),
    cluster: Type.Boolean({ default: false, description: 'redis: the url is a node of a Redis Cluster (Redis 7): entity channels use sharded pub/sub (SPUBLISH/SSUBSCRIBE), each on the one shard that owns it' }),
    prefix: Type.String({ pattern: '^[A-Za-z0-9_.-]+$', default: 'changefeed', description: 'channel prefix: <prefix>:<Type>:<id>' }),
    instanceTtlSeconds: Type.Number({ minimum: 1, default: 15, description: 'a crashed instance\'s interest entries expire after this (heartbeat: a third of it)' })
  },
  { default: {}, additionalProperties: false }
)

const Jwt = Type.Object(
  {
    secret: Type.Optional(Type.String({ description: 'HMAC shared secret (HS256/384/512)' })),
    publicKey: Type.Optional(Type.String({ description: 'PEM public key (RS*/ES*/PS*/EdDSA)' })),
    jwksUrl: Type.Optional(Type.String({ description: 'JWKS endpoint (Clerk-style); keys are cached and rotated' })),
    issuer: Type.Optional(Type.String({ description: 'required `iss`: a token without it, or with another, is refused' })),
    audience: Type.Optional(Type.String({ description: 'required `aud` (the token may list several): a token without it, or without this one, is refused' })),
    requireExpiry: Type.Boolean({ default: true, description: 'refuse tokens without `exp` (on an open socket such a token would never expire)' }),
    algorithms: Type.Optional(Type.Array(Type.String({ pattern: '^(HS|RS|PS|ES)(256|384|512)$|^EdDSA$' }), {
      minItems: 1,
      description: 'allowed algorithms; default: HS* with a secret, the asymmetric ones with a key or JWKS; never `none`'
    })),
    userIdClaim: Type.String({ default: 'sub', description: 'claim holding the user id (dotted path)' }),
    tenantClaim: Type.Optional(Type.String({ description: 'claim holding the user\'s tenant (dotted path): a signed-in user then watches only its own tenant\'s entities of tenanted types, unless it has an admin role' })),
    rolesClaim: Type.String({ default: 'roles', description: 'claim holding the roles (dotted path, e.g. metadata.role)' })
  },
  { additionalProperties: false }
)

const Auth = Type.Object(
  {
    anonymous: Type.Boolean({ default: true, description: 'allow connections without credentials (public types only)' }),
    jwt: Type.Optional(Jwt),
    basic: Type.Optional(
      Type.Object(
        {
          accounts: Type.Array(
            Type.Object(
              {
                username: Type.String({ description: 'service account name' }),
                passwordHash: Type.String({ description: 'scrypt hash: scrypt$<N>$<r>$<p>$<salt>$<hash>' }),
                roles: Type.Array(Type.String(), { default: [], description: 'roles of the account' }),
                tenant: Type.Optional(Type.String({ description: 'the tenant the account belongs to (none: like a user without a tenant claim)' }))
              },
              { additionalProperties: false }
            )
          )
        },
        { additionalProperties: false }
      )
    ),
    adminRoles: Type.Array(Type.String(), { default: ['Admin'], description: 'roles that may watch `admin` types (and everything else)' })
  },
  { default: {}, additionalProperties: false }
)

const Limits = Type.Object(
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

const Telemetry = Type.Object(
  {
    prometheus: Type.Union([Type.Boolean(), Type.Object({
      public: Type.Boolean({ default: false, description: 'true: /metrics answers without credentials' })
    }, { additionalProperties: false })], {
      default: false,
      description: 'standalone server: serve metrics for Prometheus at /metrics. `true` (or `{ "public": false }`): for admin credentials only, as the statistics route (Basic or Bearer; a scraper signs in as an account with an admin role); `{ "public": true }`: without credentials (a network only Prometheus reaches)'
    }),
    otlpUrl: Type.Union([Type.String(), Type.Null()], { default: null, description: 'standalone server: OTLP/HTTP endpoint for metrics and traces (e.g. http://collector:4318)' }),
    healthPath: Type.Union([Type.String({ pattern: '^/' }), Type.Null()], { default: null, description: 'GET <path>/live and <path>/ready; null (the plugin\'s default): not registered. The standalone server\'s default: "/health"' }),
    statsPath: Type.Union([Type.String({ pattern: '^/' }), Type.Null()], { default: null, description: 'GET admin-only statistics; null (the plugin\'s default): not registered. The standalone server\'s default: "/changefeed/stats"' })
  },
  { default: {}, additionalProperties: false }
)

export const OptionsSchema = Type.Object(
  {
    server: Server,
    databases: Type.Array(Database, { default: [] }),
    capture: Capture,
    // a name outside the pattern matches no patternProperty: refused (TypeBox's Value.Default cannot take `false` here)
    entities: Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_.]*$' }), Entity, { default: {}, additionalProperties: Type.Never() }),
    discovery: Discovery,
    bus: Bus,
    auth: Auth,
    limits: Limits,
    telemetry: Telemetry
  },
  { additionalProperties: false }
)

/** `telemetry.prometheus` as the standalone server acts on it: whether /metrics is served, and to whom. */
export function prometheusOf (telemetry: ResolvedOptions['telemetry']): { enabled: boolean, public: boolean } {
  const { prometheus } = telemetry
  return typeof prometheus === 'boolean' ? { enabled: prometheus, public: false } : { enabled: true, public: prometheus.public }
}

/** The options as they are after defaults: what every part of the plugin receives. */
export type ResolvedOptions = Static<typeof OptionsSchema>
export type EntityOptions = Static<typeof Entity>
export type AccessKindName = Static<typeof AccessKind>
export type PayloadModeName = Static<typeof PayloadMode>

type DeepPartial<T> = T extends Array<infer U> ? Array<DeepPartial<U>> : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T

/** What a host passes to `fastify.register(changefeed, options)`: the config file's shape, every field optional. */
export type ChangefeedOptions = DeepPartial<ResolvedOptions>

const validator = Compile(OptionsSchema as TSchema)

interface SchemaError { keyword: string, instancePath: string, message: string, params: object }

/** One line per bad path: the most specific complaint, with the allowed values or the offending property. */
function describeErrors (errors: SchemaError[]): string {
  const specific = errors.filter((e) =>
    (e.keyword !== 'anyOf' || !errors.some((o) => o !== e && o.instancePath === e.instancePath)) &&
    // an unknown property is reported once, by its parent's additionalProperties error
    e.message !== 'schema is false')
  const lines = specific.map((e) => {
    const path = e.instancePath === '' ? '/' : e.instancePath
    const params = e.params as { allowedValues?: unknown[], additionalProperties?: unknown, requiredProperties?: unknown }
    if (e.keyword === 'enum' && params.allowedValues !== undefined) return `${path} must be one of ${params.allowedValues.map((v) => JSON.stringify(v)).join(', ')}`
    if (e.keyword === 'additionalProperties') return `${path} has an unknown property ${JSON.stringify(params.additionalProperties ?? params)}`
    if (e.keyword === 'required') return `${path} is missing ${JSON.stringify(params.requiredProperties ?? params)}`
    return `${path} ${e.message}`
  })
  return [...new Set(lines)].join('; ')
}

/**
 * Applies defaults to a copy of `input` and validates it. Throws CHANGEFEED_INVALID_OPTIONS naming every bad path
 * (e.g. `/entities/Team/access`). Never mutates the caller's object.
 */
export function resolveOptions (input: unknown): ResolvedOptions {
  const value = Value.Default(OptionsSchema, Value.Clone(input ?? {}))
  if (!validator.Check(value)) throw new InvalidOptionsError(describeErrors(validator.Errors(value)))
  const options = value as ResolvedOptions
  const names = new Set<string>()
  for (const db of options.databases) {
    if (names.has(db.name)) throw new InvalidOptionsError(`/databases: duplicate name "${db.name}"`)
    names.add(db.name)
  }
  const tenants = new Map<string, string>()
  for (const db of options.databases) {
    if (db.tenant === undefined) continue
    if (tenants.has(db.tenant)) throw new InvalidOptionsError(`/databases: tenant "${db.tenant}" has two databases`)
    tenants.set(db.tenant, db.name)
  }
  for (const [type, entity] of Object.entries(options.entities)) {
    if (entity.database === undefined && options.databases.length > 1) {
      throw new InvalidOptionsError(`/entities/${type}/database is required when there are several databases`)
    }
    const databases = entity.database === undefined ? [] : [entity.database].flat()
    for (const name of databases) {
      if (!names.has(name)) throw new InvalidOptionsError(`/entities/${type}/database "${name}" is not in /databases`)
    }
    const withTenant = databases.filter((name) => options.databases.some((db) => db.name === name && db.tenant !== undefined))
    if (databases.length > 1 && withTenant.length !== databases.length) {
      throw new InvalidOptionsError(`/entities/${type}/database: several databases must each have a tenant (database per tenant)`)
    }
  }
  const events = options.capture.events
  if (events.untypedAs !== undefined && options.entities[events.untypedAs] === undefined) {
    throw new InvalidOptionsError(`/capture/events/untypedAs "${events.untypedAs}" is not in /entities`)
  }
  const jwt = options.auth.jwt
  if (jwt !== undefined) {
    const sources = [jwt.secret, jwt.publicKey, jwt.jwksUrl].filter((v) => v !== undefined).length
    if (sources !== 1) throw new InvalidOptionsError('/auth/jwt needs exactly one of secret, publicKey, jwksUrl')
    if (jwt.jwksUrl !== undefined && !/^https?:\/\//.test(jwt.jwksUrl)) throw new InvalidOptionsError('/auth/jwt/jwksUrl must be an http(s) URL')
  }
  if (options.bus.provider === 'nats' && options.bus.url === undefined) {
    throw new InvalidOptionsError('/bus/url is required for provider "nats"')
  }
  const stream = options.capture.stream
  if (stream.enabled && stream.url === undefined) {
    if (options.bus.provider !== 'nats') throw new InvalidOptionsError('/capture/stream/url is required unless the bus is NATS')
    stream.url = options.bus.url
  }
  return options
}
