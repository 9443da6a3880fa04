/**
 * The standalone server: `fastify-changefeed [--config FILE] [--port N] [--host H] [--demo]`.
 * It needs a database (DATABASE_URL or the config file); `--demo` without one runs on the embedded PGlite.
 */
import { parseArgs } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import changefeed from '../lib/index.js'
import { loadConfig } from './config.js'
import type { ResolvedOptions } from '../lib/options.js'
import { packageVersion } from '../lib/package.js'
import { prepareDemo, startDemo, type Demo } from './demo.js'
import { hashPassword } from '../lib/auth/passwords.js'
import { startTelemetry, type TelemetrySdk } from './telemetry.js'
import { providePGlite } from './pglite.js'
import { redactedNotFound, requestLogSerializer } from '../lib/auth/redact.js'

const USAGE = `Usage: fastify-changefeed [options]
       fastify-changefeed hash-password < password.txt     prints the scrypt hash of a password read from stdin

  --config FILE   JSON config file (see README: Configuration)
  --port N        port to listen on (default 8080; 0 picks a free one)
  --host H        address to bind (default 127.0.0.1)
  --demo          demo tables, a simulated live match and the demo page; with no database configured it runs on
                  the embedded PostgreSQL (PGlite); it logs warnings and errors only, unless LOG_LEVEL says otherwise
  --version       the version
  --help          this text

Environment: DATABASE_URL, REDIS_URL, NATS_URL, HOST, PORT, JWT_SECRET, JWT_JWKS_URL, LOG_LEVEL.
A database is required (DATABASE_URL, the config file, or --demo).`

function fail (message: string): never {
  process.stderr.write(`fastify-changefeed: ${message}\n`)
  process.exit(1)
}

/**
 * A failed start: one line on stderr with the code and the message. The structured log gets the code and, at debug
 * level, the stack; not a second copy of the message.
 */
function fatal (err: unknown, app?: FastifyInstance): never {
  const e = err as Error & { code?: string }
  const code = e.code ?? 'ERROR'
  app?.log.fatal({ code }, 'changefeed: failed to start')
  app?.log.debug({ stack: e.stack, cause: (e.cause as Error | undefined)?.stack }, 'changefeed: failed to start')
  fail(`${code}: ${e.message}`)
}

/** Reads a password from stdin (never from the command line, where shell history would keep it). */
async function printPasswordHash (): Promise<void> {
  if (process.stdin.isTTY) process.stderr.write('password: ')
  let input = ''
  for await (const chunk of process.stdin) input += String(chunk)
  const password = input.replace(/\r?\n$/, '')
  if (password === '') fail('no password on stdin')
  process.stdout.write(await hashPassword(password) + '\n')
}

const ARGUMENTS = {
  config: { type: 'string' },
  port: { type: 'string' },
  host: { type: 'string' },
  demo: { type: 'boolean', default: false },
  version: { type: 'boolean', default: false },
  help: { type: 'boolean', default: false }
} as const

function parseCommandLine (): ReturnType<typeof parseArgs<{ options: typeof ARGUMENTS, allowPositionals: true }>> {
  try {
    return parseArgs({ options: ARGUMENTS, allowPositionals: true })
  } catch (err) {
    return fail(`${(err as Error).message}\n\n${USAGE}`)
  }
}

async function main (): Promise<void> {
  const parsed = parseCommandLine()
  const [command, ...extra] = parsed.positionals
  if (command === 'hash-password' && extra.length === 0) return await printPasswordHash()
  if (command !== undefined) fail(`unknown command "${command}"\n\n${USAGE}`)
  const args = parsed.values
  if (args.help) {
    process.stdout.write(USAGE + '\n')
    return
  }
  if (args.version) {
    process.stdout.write(packageVersion + '\n')
    return
  }
  const port = args.port === undefined ? undefined : Number(args.port)
  if (port !== undefined && (!Number.isInteger(port) || port < 0 || port > 65535)) fail(`--port must be a port number, got "${args.port}"`)

  let options: ResolvedOptions
  try {
    options = loadConfig({ file: args.config, env: process.env, port, host: args.host, demo: args.demo })
  } catch (err) {
    fatal(err)
  }
  const demo: Demo | null = args.demo ? await prepareDemo(options) : null
  if (demo !== null) options = demo.options
  // a demo starts quietly (no request logs) and says where to look, once it listens
  if (demo !== null && (process.env.LOG_LEVEL ?? '') === '') process.env.LOG_LEVEL = 'warn'

  // Fastify takes a hop count too (proxy-addr); its types leave numbers out
  const trustProxy = options.server.trustProxy as boolean | string | string[]
  // every request the process logs, on any path, with credentials in its URL redacted (not only the plugin's routes)
  const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info', serializers: { req: requestLogSerializer } }, trustProxy })
  app.setNotFoundHandler(redactedNotFound)
  let telemetry: TelemetrySdk | null = null
  app.addHook('onClose', async () => await telemetry?.shutdown())
  try {
    if (demo !== null && options.databases.some((db) => db.url.startsWith('pglite:'))) await providePGlite((message) => process.stdout.write(`fastify-changefeed: ${message}\n`))
    telemetry = await startTelemetry(options.telemetry)
    await telemetry?.attach(app)
    await app.register(changefeed, options)
    telemetry?.serveMetrics(app)
    if (demo !== null) await startDemo(app, undefined, demo.tokenSecret)
    const address = await app.listen({ host: options.server.host, port: options.server.port, backlog: options.server.backlog })
    if (demo !== null) process.stdout.write(demo.banner(address))
  } catch (err) {
    await app.close().catch(() => {})
    fatal(err, app)
  }

  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    app.log.info({ signal }, 'changefeed: shutting down')
    // a deploy: the sockets go to the other instances a slice at a time (SIGTERM), then the app closes
    const draining = signal === 'SIGTERM' ? app.changefeed.drain() : Promise.resolve()
    const force = setTimeout(() => process.exit(1), 10_000 + options.shutdown.drainSeconds * 1000)
    force.unref()
    draining.then(async () => await app.close()).then(() => process.exit(0), () => process.exit(1))
  }
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGTERM', () => stop('SIGTERM'))
}

await main()
