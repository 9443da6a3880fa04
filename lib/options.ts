/**
 * The one options schema. The plugin's options and the standalone server's config file have this shape; defaults
 * live here and in the parts it is made of (each stage's own: capture/options.ts, bus/options.ts, auth/options.ts,
 * ws/options.ts) and nowhere else. Field names may grow, never change.
 */
import Type, { type Static, type TSchema } from 'typebox'
import { Compile } from 'typebox/compile'
import Value from 'typebox/value'
import { InvalidOptionsError } from './errors.js'
import { Capture, Database, tenantRegistryOf } from './capture/options.js'
import { Bus, EntityHistory, History, Shutdown } from './bus/options.js'
import { Auth } from './auth/options.js'
import { Limits } from './ws/options.js'
import { PresenceOption, SignalsOption } from './presence/options.js'

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
    backlog: Type.Integer({ minimum: 1, default: 4096, description: 'standalone server: connections the kernel queues while the process is busy (capped by `net.core.somaxconn`). Past it a connect is dropped and the client\'s TCP retries after 1, 2, 4… s: a burst of reconnects (a deploy, a network blip) must fit. A host sets it on its own `listen`' }),
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

const Entity = Type.Object(
  {
    database: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1 })], {
      description: 'database name, or the names of the databases of its tenants (database per tenant); defaults to the only database when there is one, and to every tenant\'s database (`databases[].tenant`, and those a `tenantRegistry` lists) when databases belong to tenants'
    })),
    schema: Type.Optional(Type.String({ minLength: 1, description: 'schema of its table (default: its database\'s schema)' })),
    table: Type.Optional(Type.String({ description: 'table; defaults to Marten naming: mt_doc_<lowercased type name>. It needs an `id` column, and for `full` and `delta` a `data` jsonb column' })),
    tenanted: Type.Optional(Type.Boolean({ description: 'its entities belong to tenants; found when not set: its table has a tenant_id column (Marten conjoined tenancy), it has no table and its database\'s event store belongs to tenants (a stream\'s aggregate), or its databases have tenants. Set it for types only a host publishes (`false`: one without a table beside such an event store)' })),
    access: AccessKind,
    payload: Type.Optional(PayloadMode),
    ownerPath: Type.Optional(Type.Array(Type.String(), { description: 'path in the document holding the owner user id' })),
    feed: Type.Optional(Type.Boolean({ description: 'allow type-wide subscriptions (entityId "*") to every change of this type; public or admin types only' })),
    presence: Type.Optional(PresenceOption),
    signals: Type.Optional(SignalsOption),
    history: Type.Optional(EntityHistory)
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
    history: History,
    shutdown: Shutdown,
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
    if (entity.database === undefined && options.databases.length > 1 && tenants.size === 0 && !options.databases.some((db) => tenantRegistryOf(db, '') !== null)) {
      throw new InvalidOptionsError(`/entities/${type}/database is required when there are several databases and none belongs to a tenant`)
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
