/**
 * The standalone server: `changefeed [--config FILE] [--port N] [--host H] [--demo]`.
 * With nothing configured it runs on the embedded PGlite and the memory bus, so it starts on a fresh machine.
 */
import { parseArgs } from 'node:util'
import Fastify from 'fastify'
import changefeed from '../lib/index.js'
import { loadConfig } from '../lib/config.js'
import type { ResolvedOptions } from '../lib/options.js'
import { DEMO_ENTITIES, startDemo } from './demo.js'
import { hashPassword } from '../lib/auth/passwords.js'
import { startTelemetry } from './telemetry.js'

const USAGE = `Usage: changefeed [options]
       changefeed hash-password < password.txt     prints the scrypt hash of a password read from stdin

  --config FILE   JSON config file (see README: Configuration)
  --port N        port to listen on (default 8080; 0 picks a free one)
  --host H        address to bind (default 127.0.0.1)
  --demo          demo tables, a simulated live match and the demo page
  --help          this text

Environment: DATABASE_URL, REDIS_URL, NATS_URL, HOST, PORT, JWT_SECRET, JWT_JWKS_URL, LOG_LEVEL.
With no database configured the embedded PostgreSQL (PGlite) is used.`

function fail (message: string): never {
  process.stderr.write(`changefeed: ${message}\n`)
  process.exit(1)
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

async function main (): Promise<void> {
  let args: any
  try {
    args = parseArgs({
      options: {
        config: { type: 'string' },
        port: { type: 'string' },
        host: { type: 'string' },
        demo: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false }
      },
      allowPositionals: true
    })
  } catch (err) {
    fail(`${(err as Error).message}\n\n${USAGE}`)
  }
  const [command, ...extra] = args.positionals
  if (command === 'hash-password' && extra.length === 0) return await printPasswordHash()
  if (command !== undefined) fail(`unknown command "${command}"\n\n${USAGE}`)
  args = args.values
  if (args.help) {
    process.stdout.write(USAGE + '\n')
    return
  }
  const port = args.port === undefined ? undefined : Number(args.port)
  if (port !== undefined && (!Number.isInteger(port) || port < 0 || port > 65535)) fail(`--port must be a port number, got "${args.port}"`)

  let options: ResolvedOptions
  try {
    options = loadConfig({ file: args.config, env: process.env, port, host: args.host })
  } catch (err) {
    const e = err as Error & { code?: string }
    fail(`${e.code ?? 'ERROR'}: ${e.message}`)
  }
  if (args.demo) options = { ...options, entities: { ...DEMO_ENTITIES, ...options.entities } } as ResolvedOptions

  const telemetry = startTelemetry(options.telemetry)
  // Fastify takes a hop count too (proxy-addr); its types leave numbers out
  const trustProxy = options.server.trustProxy as boolean | string | string[]
  const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' }, trustProxy })
  app.addHook('onClose', async () => await telemetry?.shutdown())
  try {
    await telemetry?.attach(app)
    await app.register(changefeed, options)
    if (args.demo) await startDemo(app)
    await app.listen({ host: options.server.host, port: options.server.port })
  } catch (err) {
    const e = err as Error & { code?: string }
    app.log.error({ err: e }, 'changefeed: failed to start')
    await app.close().catch(() => {})
    fail(`${e.code ?? 'ERROR'}: ${e.message}`)
  }

  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    app.log.info({ signal }, 'changefeed: shutting down')
    const force = setTimeout(() => process.exit(1), 10_000)
    force.unref()
    app.close().then(() => process.exit(0), () => process.exit(1))
  }
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGTERM', () => stop('SIGTERM'))
}

await main()
