/** The options of capture: the databases, and what is captured from them and how (part of lib/options.ts). */
import Type, { type Static } from 'typebox'

export const Database = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', description: 'name used by entities and as the @fastify/postgres pool name' }),
    url: Type.String({
      minLength: 1,
      description: 'postgres://… connection string, or `pglite://memory` / `pglite:///dir` for the embedded PGlite'
    }),
    schema: Type.Optional(Type.String({ minLength: 1, description: 'schema whose tables are watched in this database (default: capture.schema)' })),
    tenant: Type.Optional(Type.String({ minLength: 1, maxLength: 128, pattern: '^[^:]+$', description: 'database per tenant (Marten): every change of this database belongs to this tenant (no ":")' })),
    tenantRegistry: Type.Optional(Type.Union([Type.Boolean(), Type.Object({
      schema: Type.Optional(Type.String({ minLength: 1, description: 'its schema (default: the database\'s schema)' })),
      table: Type.Optional(Type.String({ minLength: 1, description: 'its name (default: mt_tenant_databases)' }))
    }, { additionalProperties: false })], {
      description: 'this database holds Marten\'s table of tenant databases (MasterTableTenancy: tenant_id, connection_string, disabled): each enabled tenant\'s database is captured, those added or removed while the server runs too, and the types that name no database are fed by every tenant\'s. Connection strings (Npgsql\'s or URLs) never reach a log'
    }))
  },
  { additionalProperties: false }
)

export const Capture = Type.Object(
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
    standby: Type.Object({
      enabled: Type.Boolean({ default: true, description: 'notify mode with a shared bus: followers listen too and keep the recent changes, so a takeover publishes what the old leader had not instead of resyncing every watcher' }),
      maxTransactions: Type.Integer({ minimum: 1, default: 10000, description: 'transactions a follower keeps at most; beyond, the oldest are dropped (counted, logged), and a takeover past them resyncs' }),
      windowSeconds: Type.Number({ minimum: 0.1, default: 30, description: 'a follower keeps the transactions of this long (the newest always): how far behind a leader may fall and still hand over without a gap' })
    }, { default: {}, additionalProperties: false }),
    events: Type.Object({
      enabled: Type.Boolean({ default: false, description: 'capture Marten event appends as `appended` changes of the stream\'s aggregate' }),
      table: Type.String({ default: 'mt_events', description: 'the event table' }),
      streams: Type.String({ default: 'mt_streams', description: 'the stream table (its `type` names the aggregate)' }),
      database: Type.Optional(Type.String({ description: 'database whose events are captured (default: all)' })),
      schema: Type.Optional(Type.String({ minLength: 1, description: 'schema of the event store (Marten `Events.DatabaseSchemaName`; default: the database\'s schema)' })),
      types: Type.Record(Type.String(), Type.String(), { default: {}, description: 'mt_streams.type → entity type; unmapped stream types match an entity name ignoring case and _. A type named here is a stream\'s aggregate: no warning when it has no table of its own' }),
      untypedAs: Type.Optional(Type.String({ description: 'entity type of streams started without an aggregate type (mt_streams.type null); without it their appends are counted and logged, not delivered' }))
    }, { default: {}, additionalProperties: false }),
    tenantSetting: Type.String({
      pattern: '^[A-Za-z_][A-Za-z0-9_]*\\.[A-Za-z_][A-Za-z0-9_]*$',
      default: 'app.tenant_id',
      description: 'the setting a row-level security policy reads the tenant from (Marten\'s `UseRowLevelSecurity`), when the policy does not name it in a way the server reads: a table under such a policy is read with it set to the entity\'s tenant'
    }),
    probeIntervalSeconds: Type.Number({ minimum: 0, default: 15, description: 'how often the listener connection is checked with a query; one that does not answer within 5 s is replaced (0: never)' })
  },
  { default: {}, additionalProperties: false }
)

type DatabaseOptions = Static<typeof Database>

/** Where a database's table of tenant databases is (`databases[].tenantRegistry`), or null when it has none. */
export function tenantRegistryOf (db: DatabaseOptions, schema: string): { schema: string, table: string } | null {
  const registry = db.tenantRegistry
  if (registry === undefined || registry === false) return null
  return registry === true ? { schema, table: 'mt_tenant_databases' } : { schema: registry.schema ?? schema, table: registry.table ?? 'mt_tenant_databases' }
}
