/**
 * Connection strings of tenant databases as Marten keeps them (MasterTableTenancy's `mt_tenant_databases`): Npgsql's
 * `Host=db;Port=5432;Database=red;Username=app;Password=…`, or a `postgres://` URL. They hold passwords: they are
 * turned into a URL for `pg`, and only `target()` of it (server, database, role) is ever logged.
 */

/** Npgsql's keywords (case and spaces ignored) → what the URL carries. */
const KEYWORDS: Record<string, 'host' | 'port' | 'database' | 'user' | 'password' | 'sslmode' | 'application_name'> = Object.fromEntries([
  ...['host', 'server'].map((k) => [k, 'host']),
  ['port', 'port'],
  ...['database', 'db'].map((k) => [k, 'database']),
  ...['username', 'userid', 'user', 'uid'].map((k) => [k, 'user']),
  ...['password', 'psw', 'pwd'].map((k) => [k, 'password']),
  ['sslmode', 'sslmode'],
  ['applicationname', 'application_name']
])

/** Npgsql's SslMode values → libpq's. */
const SSL_MODES: Record<string, string> = Object.fromEntries(['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'].map((m) => [m.replace('-', ''), m]))

/** `Key=Value;…` pairs; a value may be quoted ("…" or '…', the quote doubled inside). Null when it is not that. */
function pairs (text: string): Map<string, string> | null {
  const found = new Map<string, string>()
  const pair = /\s*([^=;]+?)\s*=\s*(?:"((?:[^"]|"")*)"|'((?:[^']|'')*)'|([^;]*?))\s*(?:;|$)/gy
  let match: RegExpExecArray | null
  while (pair.lastIndex < text.length && (match = pair.exec(text)) !== null) {
    const value = match[2]?.replaceAll('""', '"') ?? match[3]?.replaceAll("''", "'") ?? match[4]
    found.set(match[1].toLowerCase().replace(/\s+/g, ''), value)
  }
  return pair.lastIndex === text.length || text.slice(pair.lastIndex).trim() === '' ? found : null
}

/**
 * The URL `pg` connects with for a stored connection string; null when it is neither a URL nor Npgsql's keywords
 * with a host and a database.
 */
export function connectionUrl (text: string): string | null {
  if (/^postgres(ql)?:\/\//i.test(text)) return text
  const found = pairs(text)
  if (found === null) return null
  const parts: Partial<Record<(typeof KEYWORDS)[string], string>> = {}
  for (const [key, value] of found) {
    const part = KEYWORDS[key]
    if (part !== undefined) parts[part] = value
  }
  if (parts.host === undefined || parts.host === '' || parts.database === undefined || parts.database === '') return null
  const enc = encodeURIComponent
  const user = parts.user === undefined ? '' : enc(parts.user) + (parts.password === undefined ? '' : ':' + enc(parts.password)) + '@'
  // Npgsql names several hosts with commas and a Unix socket by its directory: libpq's host parameter takes both
  const local = parts.host.startsWith('/') || parts.host.includes(',')
  const query = new URLSearchParams()
  if (local) query.set('host', parts.host)
  if (local && parts.port !== undefined) query.set('port', parts.port)
  const ssl = parts.sslmode === undefined ? undefined : SSL_MODES[parts.sslmode.toLowerCase().replace(/[^a-z]/g, '')]
  if (ssl !== undefined) query.set('sslmode', ssl)
  if (parts.application_name !== undefined) query.set('application_name', parts.application_name)
  const search = query.size === 0 ? '' : '?' + query.toString()
  return `postgres://${user}${local ? '' : parts.host}${parts.port === undefined || local ? '' : ':' + parts.port}/${enc(parts.database)}${search}`
}
