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
    value = JSON.parse(text.replace(/^\uFEFF/, ''))
  } catch {
    // V8's message gives an offset at best, and may quote the file (secrets and all): say where, in lines
    const { line, column, found } = jsonErrorAt(text.replace(/^\uFEFF/, ''))
    throw new ConfigFileError(file, `not valid JSON: line ${line}, column ${column}: ${found === '' ? 'the file ends too soon' : `unexpected ${JSON.stringify(found)}`}`)
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new ConfigFileError(file, 'the top level must be a JSON object')
  return value as Json
}

/** Stops the scan of jsonErrorAt at the first character JSON does not allow there. */
class JsonStop {}

/**
 * Where the first syntax error of a JSON text is (line and column from 1) and the character found there ('' at
 * the end): a scan of the JSON grammar, for a text JSON.parse refused.
 */
export function jsonErrorAt (text: string): { line: number, column: number, found: string } {
  let i = 0
  const stop = (): never => { throw new JsonStop() }
  const space = (): void => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++ }
  const scalar = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null/y
  const string = (): void => {
    if (text[i] !== '"') stop()
    i++
    for (;;) {
      const c = text[i] ?? stop()
      if (c < ' ') stop()
      i++
      if (c === '"') return
      if (c !== '\\') continue
      const escaped = text[i] ?? stop()
      if ('"\\/bfnrt'.includes(escaped)) i++
      else if (text[i] === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) i += 5
      else stop()
    }
  }
  const value = (): void => {
    space()
    const open = text[i]
    if (open === '"') return string()
    if (open !== '{' && open !== '[') {
      scalar.lastIndex = i
      i += scalar.exec(text)?.[0].length ?? stop()
      return
    }
    const close = open === '{' ? '}' : ']'
    i++
    space()
    if (text[i] === close) {
      i++
      return
    }
    for (;;) {
      if (open === '{') {
        space()
        string()
        space()
        if (text[i] !== ':') stop()
        i++
      }
      value()
      space()
      if (text[i] !== close && text[i] !== ',') stop()
      if (text[i++] === close) return
    }
  }
  try {
    value()
    space()
    if (i < text.length) stop()
  } catch (err) {
    if (!(err instanceof JsonStop)) throw err
  }
  const before = text.slice(0, i)
  return { line: before.split('\n').length, column: i - before.lastIndexOf('\n'), found: text.slice(i, i + 1) }
}

/** A port from the environment, or CHANGEFEED_INVALID_OPTIONS naming the variable. */
function portFrom (name: string, value: string): number {
  const port = Number(value)
  if (!/^\s*\d+\s*$/.test(value) || port > 65535) throw new InvalidOptionsError(`${name} must be a port number (0 to 65535), got "${value}"`)
  return port
}

/** Environment overrides: DATABASE_URL, REDIS_URL, NATS_URL, HOST, PORT, JWT_SECRET, JWT_JWKS_URL. */
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
  if (env.PORT !== undefined && env.PORT !== '') set('server', { port: portFrom('PORT', env.PORT) })
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
