/**
 * The standalone server's configuration: a JSON file validated against the options schema, then environment
 * overrides of the common fields, then command-line flags. Every failure names the file and the bad path.
 */
import { readFileSync } from 'node:fs'
import { ConfigFileError, InvalidOptionsError, NoDatabaseError } from '../lib/errors.js'
import { resolveOptions, type ResolvedOptions } from '../lib/options.js'

export interface ConfigSources {
  /** path of the JSON config file, if any */
  file?: string
  env?: NodeJS.ProcessEnv
  /** --port */
  port?: number
  /** --host */
  host?: string
  /** --demo: with no database configured, the embedded PostgreSQL (PGlite) */
  demo?: boolean
}

/** A JSON object as read from the file: shapes are checked by the options schema, not here. */
type Json = Record<string, unknown>

/** The embedded database `--demo` uses when no other is configured. */
export const EMBEDDED_DATABASE = { name: 'main', url: 'pglite://memory' }

/** The standalone server serves health and statistics unless the file says otherwise; a mounted plugin does not. */
export const STANDALONE_TELEMETRY = { healthPath: '/health', statsPath: '/changefeed/stats' }

const isObject = (value: unknown): value is Json => value !== null && typeof value === 'object' && !Array.isArray(value)
/**
 * `value` with `extra` over it; a value that is there but not an object stays as it is, for the schema to
 * refuse by its path (an override must not hide a broken file).
 */
const merged = (value: unknown, extra: Json): unknown => value === undefined || isObject(value) ? { ...value, ...extra } : value

function readConfigFile (file: string): Json {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigFileError(file, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : (err as Error).message)
  }
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new ConfigFileError(file, `not valid JSON: ${(err as Error).message}`)
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new ConfigFileError(file, 'the top level must be a JSON object')
  return value as Json
}

/** Environment overrides (DESIGN.md §9): DATABASE_URL, REDIS_URL, NATS_URL, HOST, PORT, JWT_SECRET, JWT_JWKS_URL. */
export function applyEnvironment (config: Json, env: NodeJS.ProcessEnv): Json {
  const out: Json = { ...config }
  const set = (key: string, extra: Json): void => { out[key] = merged(out[key], extra) }
  const jwt = (extra: Json): void => { out.auth = merged(out.auth, { jwt: merged(isObject(out.auth) ? out.auth.jwt : undefined, extra) }) }
  if (env.DATABASE_URL !== undefined && env.DATABASE_URL !== '') {
    const databases: unknown[] = Array.isArray(out.databases) ? out.databases.filter((d: unknown) => !isObject(d) || d.name !== 'main') : []
    out.databases = [{ name: 'main', url: env.DATABASE_URL }, ...databases]
  }
  if (env.REDIS_URL !== undefined && env.REDIS_URL !== '') set('bus', { provider: 'redis', url: env.REDIS_URL })
  if (env.NATS_URL !== undefined && env.NATS_URL !== '') set('bus', { provider: 'nats', url: env.NATS_URL })
  if (env.HOST !== undefined && env.HOST !== '') set('server', { host: env.HOST })
  if (env.PORT !== undefined && env.PORT !== '') set('server', { port: Number(env.PORT) })
  if (env.JWT_SECRET !== undefined && env.JWT_SECRET !== '') jwt({ secret: env.JWT_SECRET })
  if (env.JWT_JWKS_URL !== undefined && env.JWT_JWKS_URL !== '') jwt({ jwksUrl: env.JWT_JWKS_URL })
  return out
}

/**
 * Loads, overrides and validates. With no database configured anywhere, `--demo` uses the embedded PGlite and
 * anything else stops with CHANGEFEED_NO_DATABASE: a server whose database setting went missing must not look healthy.
 */
export function loadConfig (sources: ConfigSources): ResolvedOptions {
  let config: Json = sources.file !== undefined ? readConfigFile(sources.file) : {}
  config = applyEnvironment(config, sources.env ?? {})
  if (sources.port !== undefined) config.server = merged(config.server, { port: sources.port })
  if (sources.host !== undefined) config.server = merged(config.server, { host: sources.host })
  // the file's own telemetry settings win over the standalone defaults
  if (config.telemetry === undefined || isObject(config.telemetry)) config.telemetry = { ...STANDALONE_TELEMETRY, ...config.telemetry }
  const noDatabase = config.databases === undefined || (Array.isArray(config.databases) && config.databases.length === 0)
  if (noDatabase && sources.demo === true) config.databases = [EMBEDDED_DATABASE]
  let options: ResolvedOptions
  try {
    options = resolveOptions(config)
    // the standalone server has no host whose Redis client it could share
    if (options.bus.provider === 'redis' && options.bus.url === undefined) throw new InvalidOptionsError('/bus/url is required for provider "redis"')
  } catch (err) {
    if (sources.file === undefined) throw err
    throw new ConfigFileError(sources.file, (err as Error).message)
  }
  if (options.databases.length === 0) throw new NoDatabaseError()
  return options
}
