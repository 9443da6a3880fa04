/**
 * A PostgreSQL cluster of the chaos run's own, on a free port with its socket in its own directory, so restarting
 * it never disturbs the machine's cluster (5432) that the other tests share. The run is root; the cluster runs as
 * the `postgres` user through runuser.
 */
import { execFile } from 'node:child_process'
import { chownSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import { freePort } from '../helpers/brokers.js'

const run = promisify(execFile)

interface Teardown { teardown(fn: () => unknown): void }

export interface OwnPostgres {
  /** postgres://… of `database` on this cluster */
  url(database: string): string
  /** one query on a connection of its own (works across restarts) */
  query<R = Record<string, unknown>>(database: string, sql: string, params?: unknown[]): Promise<R[]>
  restart(): Promise<void>
  stop(): Promise<void>
  /** the directory holding the data, the socket and the server log */
  dir: string
}

/** The binaries of the newest installed major version (Debian layout: /usr/lib/postgresql/<version>/bin). */
function binDir (): string {
  const versions = readdirSync('/usr/lib/postgresql').filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))
  if (versions.length === 0) throw new Error('no PostgreSQL under /usr/lib/postgresql; install it with: apt-get install postgresql')
  return join('/usr/lib/postgresql', versions[0], 'bin')
}

/** Runs a PostgreSQL tool as the postgres user (initdb and pg_ctl refuse root). */
async function asPostgres (tool: string, args: string[]): Promise<void> {
  const command = userInfo().uid === 0 ? ['runuser', ['-u', 'postgres', '--', tool, ...args]] as const : [tool, args] as const
  try {
    await run(command[0], [...command[1]], { timeout: 60_000 })
  } catch (err) {
    const e = err as Error & { stderr?: string, stdout?: string }
    throw new Error(`${tool} ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`)
  }
}

export async function ownPostgres (t: Teardown): Promise<OwnPostgres> {
  const bin = binDir()
  const dir = mkdtempSync(join(tmpdir(), 'changefeed-chaos-pg-'))
  if (userInfo().uid === 0) chownSync(dir, ...await postgresIds())
  const data = join(dir, 'data')
  const port = await freePort()
  const pgCtl = join(bin, 'pg_ctl')
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off`
  let running = false

  await asPostgres(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'])
  await asPostgres(pgCtl, ['-D', data, '-o', options, '-l', join(dir, 'log'), '-w', 'start'])
  running = true

  const cluster: OwnPostgres = {
    dir,
    url: (database) => `postgres://postgres@127.0.0.1:${port}/${database}`,
    async query<R> (database: string, sql: string, params: unknown[] = []): Promise<R[]> {
      const client = new pg.Client({ connectionString: cluster.url(database), connectionTimeoutMillis: 5000 })
      client.on('error', () => {})
      await client.connect()
      try {
        return (await client.query(sql, params)).rows as R[]
      } finally {
        await client.end().catch(() => {})
      }
    },
    async restart () {
      await asPostgres(pgCtl, ['-D', data, '-o', options, '-l', join(dir, 'log'), '-m', 'fast', '-w', 'restart'])
    },
    async stop () {
      if (!running) return
      running = false
      await asPostgres(pgCtl, ['-D', data, '-m', 'immediate', 'stop']).catch(() => {})
    }
  }
  t.teardown(async () => {
    await cluster.stop()
    if (process.env.CHAOS_KEEP === undefined) rmSync(dir, { recursive: true, force: true })
  })
  return cluster
}

async function postgresIds (): Promise<[number, number]> {
  const { stdout: uid } = await run('id', ['-u', 'postgres'])
  const { stdout: gid } = await run('id', ['-g', 'postgres'])
  return [Number(uid.trim()), Number(gid.trim())]
}
